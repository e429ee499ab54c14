"""kitsmsan: MSAN (multi-scale attention network) for KiTS19 kidney and tumour segmentation.

A reproduction package for the paper "Multi-scale attention network for kidney and kidney-tumour
segmentation" (MSAN, KiTS19 challenge). The package is what the book imports; nothing in the
notebooks re-implements it.
"""

__version__ = "0.1.0"

from kitsmsan.errors import (  # noqa: F401  (re-exported)
    CheckpointError,
    ConfigError,
    DataError,
    DownloadError,
    KitsmsanError,
    TrainingError,
)
