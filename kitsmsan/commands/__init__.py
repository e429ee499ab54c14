"""Subcommands of the ``kitsmsan`` CLI, one module each (see :mod:`kitsmsan.cli`)."""
