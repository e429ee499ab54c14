"""Mixed precision: which values turn it on, and which dtype it uses on a device (one rule for
training, inference and the benchmark)."""

from __future__ import annotations

import torch

from kitsmsan.errors import ConfigError

#: the accepted ``amp`` settings, everywhere (``TrainConfig.amp``, ``predict --amp``, ``predict_case``):
#: ``auto`` on for CUDA only; ``on`` bf16 where native, else fp16 (:func:`mixed_precision_dtype`);
#: ``off``; ``bf16`` / ``fp16`` that dtype
AMP_MODES = ("auto", "on", "off", "bf16", "fp16")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def mixed_precision_dtype(device: torch.device | str) -> torch.dtype:
    """The autocast dtype for ``device``: bf16 where the hardware computes in it natively, else fp16.

    On CUDA, bf16 needs compute capability 8.0 or newer (Ampere, Ada, Hopper, ...); ROCm GPUs have it
    too. Older GPUs — the T4 of Colab's free tier is 7.5 — get fp16 (with a grad scaler in training).
    ``torch.cuda.is_bf16_supported()`` is not used: by default it also answers True where bf16 is
    merely *emulated*, without tensor cores, which on a T4 is many times slower than fp16. On a CPU
    the answer is bf16, the CPU autocast dtype.

    Args:
        device: a torch device or its name (``"cuda"``, ``"cuda:1"``, ``"cpu"``).
    """
    device = torch.device(device)
    if device.type == "cuda":
        if torch.version.hip:
            return torch.bfloat16
        major, _minor = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    return torch.bfloat16


def check_amp(amp: str | bool | torch.dtype | None) -> str | torch.dtype:
    """``amp`` as one of :data:`AMP_MODES` (or the dtype given).

    Args:
        amp: a string of :data:`AMP_MODES` (any case); in Python also None (= ``"auto"``), True
            (= ``"on"``), False (= ``"off"``), ``torch.bfloat16`` or ``torch.float16``.

    Raises:
        ConfigError: any other value; the one message for every place that takes ``amp``.
    """
    if amp is None:
        return "auto"
    if isinstance(amp, bool):
        return "on" if amp else "off"
    if isinstance(amp, torch.dtype) and amp in _DTYPES.values():
        return amp
    if isinstance(amp, str) and amp.lower() in AMP_MODES:
        return amp.lower()
    raise ConfigError(f"amp={amp!r}: expected one of {', '.join(AMP_MODES)}")


def resolve_amp(amp: str | bool | torch.dtype | None, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device``, or None for full precision.

    Args:
        amp: see :func:`check_amp`. ``"auto"``: on for CUDA, off on the CPU; ``"on"``:
            :func:`mixed_precision_dtype` (bf16 on the CPU too); ``"bf16"``/``"fp16"``: that dtype.
        device: the device of the run.

    Raises:
        ConfigError: an unknown ``amp`` (:func:`check_amp`).
    """
    mode = check_amp(amp)
    if isinstance(mode, torch.dtype):
        return mode
    if mode in _DTYPES:
        return _DTYPES[mode]
    if mode == "off" or (mode == "auto" and torch.device(device).type != "cuda"):
        return None
    return mixed_precision_dtype(device)


__all__ = ["AMP_MODES", "check_amp", "mixed_precision_dtype", "resolve_amp"]
