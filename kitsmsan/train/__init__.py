"""Training (MSAN paper, §3.1): config and presets, the loop, DDP (checkpoints: :mod:`kitsmsan.checkpoint`).

``TrainConfig``/``PRESETS`` load at once; the loop and DDP are loaded on first use so that
``kitsmsan --help`` stays fast.

Public API::

    TrainConfig, PRESETS, VARIANTS                     # kitsmsan.train.config
    train(config, resume=False) -> Path                # kitsmsan.train.loop
    resume(run_dir, **overrides) -> Path
    Trainer, read_metrics, run_state
    init_distributed, sample_indices                   # kitsmsan.train.distributed
"""

from __future__ import annotations

import importlib

from kitsmsan.train.config import PRESETS, VARIANTS, TrainConfig
from kitsmsan.utils.amp import AMP_MODES

_LAZY = {
    "train": "loop",
    "resume": "loop",
    "Trainer": "loop",
    "read_metrics": "loop",
    "run_state": "loop",
    "init_distributed": "distributed",
    "sample_indices": "distributed",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"kitsmsan.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'kitsmsan.train' has no attribute {name!r}")


__all__ = ["TrainConfig", "PRESETS", "VARIANTS", "AMP_MODES", *_LAZY]
