"""Named errors. Every message names the file (or the value) and the problem.

All errors derive from :class:`KitsmsanError`, so the CLI can print them as one line instead of a
traceback. Those about bad input are also ``ValueError`` subclasses (the Python convention).
"""

from __future__ import annotations


class KitsmsanError(Exception):
    """Base class of every error this package raises on purpose."""


class DataError(KitsmsanError, ValueError):
    """Bad input data: a missing, corrupt or inconsistent KiTS19 file or data folder."""


class OutputFolderError(DataError):
    """An output folder (or file) that is not this command's to write: data, another command's output."""


class ConfigError(KitsmsanError, ValueError):
    """A bad configuration value: unknown key, wrong type, out-of-range value."""


class CheckpointError(KitsmsanError, ValueError):
    """A checkpoint that is corrupt, untrusted (pickled code) or of another architecture."""


class DownloadError(KitsmsanError, RuntimeError):
    """A download that failed after its retries, or whose file did not verify."""


class TrainingError(KitsmsanError, RuntimeError):
    """Training cannot go on (for example a non-finite loss); the last good checkpoint is kept."""
