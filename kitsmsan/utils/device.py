"""Which torch device a run uses: the one rule for training, inference and the benchmark."""

from __future__ import annotations

import torch

from kitsmsan.errors import ConfigError

#: the device types kitsmsan runs on
DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(
    device: str | torch.device | None = None, *, local_rank: int | None = None
) -> torch.device:
    """The ``torch.device`` for ``device``.

    Args:
        device: None or ``"auto"`` (default): CUDA if available, else the CPU; ``"cpu"``, ``"cuda"``,
            ``"cuda:N"`` or a ``torch.device``.
        local_rank: the GPU of this process under torchrun (default None: a bare ``"cuda"`` stays the
            current CUDA device); with it, ``"cuda"`` and ``"auto"`` on a GPU machine become
            ``cuda:<local_rank>``.

    Returns:
        The device, of a type in :data:`DEVICE_TYPES`.

    Raises:
        ConfigError: not a torch device, a type other than cpu/cuda, or CUDA asked for but not
            available; the message names the value.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device={device!r}: not a torch device ({exc})") from None
    if dev.type not in DEVICE_TYPES:
        raise ConfigError(f"device={device!r}: kitsmsan runs on {' or '.join(DEVICE_TYPES)} only")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r}: CUDA is not available on this machine")
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank)
    return dev


__all__ = ["DEVICE_TYPES", "resolve_device"]
