"""Small shared helpers (atomic files, safe paths, seeding, provenance)."""
