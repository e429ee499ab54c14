"""Which dtype mixed precision uses on a device (one rule for training, inference and the benchmark)."""

from __future__ import annotations

import torch


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


__all__ = ["mixed_precision_dtype"]
