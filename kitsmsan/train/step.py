"""One training iteration (MSAN paper, §3.1), the single definition used by :class:`~kitsmsan.train.loop.Trainer`
and by the step benchmark (:mod:`kitsmsan.bench.step`), so that the benchmark times exactly what
training does.
"""

from __future__ import annotations

import contextlib

import torch

from kitsmsan.losses import DeepSupervisionLoss, DiceLoss
from kitsmsan.train.config import TrainConfig


def build_loss(config: TrainConfig, model: torch.nn.Module) -> torch.nn.Module:
    """Dice loss (§3.1), wrapped for deep supervision when ``model.config.deep_supervision`` is on (§2.2).

    Args:
        config: supplies ``dice_include_background`` and ``ds_weights``.
        model: the network; its :class:`~kitsmsan.models.msan.ModelConfig` alone says whether it has
            auxiliary heads.
    """
    base = DiceLoss(include_background=config.dice_include_background)
    if model.config.deep_supervision:
        return DeepSupervisionLoss(base, weights=config.ds_weights)
    return base


def build_optimizer(config: TrainConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Adam:
    """Adam at ``config.lr`` (§3.1), the fused kernel on CUDA."""
    return torch.optim.Adam(model.parameters(), lr=config.lr, fused=True if device.type == "cuda" else None)


def train_step(
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    image: torch.Tensor,
    label: torch.Tensor,
    *,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One optimizer step: forward (under autocast with ``amp_dtype``), outputs to float32, the loss,
    backward through ``scaler`` (active for fp16 only), the optimizer step.

    Args:
        model: the network in train mode (possibly DDP- or compile-wrapped).
        loss_fn: from :func:`build_loss`.
        optimizer: from :func:`build_optimizer`.
        scaler: ``torch.amp.GradScaler`` (enabled for fp16 only).
        image: float32 ``(B, 1, D, H, W)`` on the model's device.
        label: int64 ``(B, D, H, W)`` on the model's device.
        amp_dtype: the autocast dtype, or None (default) for float32.

    Returns:
        The loss, detached (still on the device: reading it would synchronise).
    """
    autocast = (
        torch.autocast(image.device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        outputs = model(image)
    if isinstance(outputs, (list, tuple)):
        outputs = [o.float() for o in outputs]
    else:
        outputs = outputs.float()
    loss = loss_fn(outputs, label)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


__all__ = ["build_loss", "build_optimizer", "train_step"]
