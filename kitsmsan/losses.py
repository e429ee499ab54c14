"""Losses: the soft Dice loss (MSAN paper, §3.1) and its deep-supervision wrapper (§2.2, §3.1).

The paper trains with "a dice loss" and deep supervision [Lee et al. 2015] without further detail; the
open choices are decided here (see ``book/fragments/decisions-models.md``):

* :class:`DiceLoss` — softmax over the logits; one-hot target; per class
  ``Dice_c = (2·Σ p·t + smooth_nr) / (Σ p + Σ t + smooth_dr)`` with ``smooth_nr = smooth_dr = 1e-5``;
  **background counted** by default (``include_background=True``, also the training default
  ``TrainConfig.dice_include_background``): the mean runs over background, kidney and tumour. Without
  the background term a batch whose windows hold no tumour has a tumour Dice of ≈ 0 whatever the
  network predicts, so nothing pushes back against tumour false positives (our first smoke runs
  painted ~45 % of every test volume as tumour); the background Dice falls with every false positive.
  Sums over the whole batch by default ("batch Dice", so a window without tumour does not get a Dice
  of its own); the loss is ``1 − mean_c Dice_c`` (0 for a perfect prediction, never negative).
* :func:`deep_supervision_weights` — nnU-Net's weights: halved for each coarser output, normalised
  to sum to 1 (``[4/7, 2/7, 1/7]`` for the paper's full-resolution output plus two auxiliary ones).
* :class:`DeepSupervisionLoss` — the integer target is brought to each auxiliary resolution by nearest
  sampling (default, as nnU-Net) or by averaging its one-hot encoding (soft targets), then the weighted
  sum of the per-output losses is returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import is_fake

from kitsmsan.errors import ConfigError, DataError


def _one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, *S)`` integer labels → ``(B, num_classes, *S)`` float one-hot."""
    onehot = F.one_hot(target.long(), num_classes)  # (B, *S, C)
    return onehot.movedim(-1, 1).float()  # (B, C, *S)


class DiceLoss(nn.Module):
    """Multi-class soft Dice loss on softmax probabilities, returning ``1 − Dice`` (MSAN paper, §3.1).

    Args:
        include_background: keep class 0 (background) in the mean. Default True, the training
            default (see the module docstring); False averages kidney and tumour only.
        batch: True (default) sums intersections and volumes over the batch and all voxels, giving one
            Dice per class; False gives one Dice per sample and class, then averages them.
        smooth_nr: added to the numerator ``2·Σ p·t``. Default 1e-5.
        smooth_dr: added to the denominator ``Σ p + Σ t``. Default 1e-5.

    Shape:
        ``logits``: ``(B, C, *S)`` raw scores (any number of spatial dims ``S``, e.g. ``(D, H, W)``);
        ``target``: integer labels ``(B, *S)`` in ``[0, C)``, or class probabilities ``(B, C, *S)``
        (one-hot or soft, e.g. from :class:`DeepSupervisionLoss` with ``target_mode="average"``).
        Returns a scalar in ``[0, 1]``.

    Raises:
        ConfigError: for bad constructor arguments.
        DataError: for mismatched shapes or labels outside ``[0, C)`` (checked on every call).
    """

    def __init__(
        self,
        include_background: bool = True,
        batch: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ) -> None:
        super().__init__()
        if smooth_nr < 0 or smooth_dr < 0:
            raise ConfigError(f"DiceLoss: smooth_nr={smooth_nr}, smooth_dr={smooth_dr}: must be non-negative")
        if smooth_dr == 0:
            raise ConfigError("DiceLoss: smooth_dr=0 would divide by zero for a class absent from both maps")
        self.include_background = bool(include_background)
        self.batch = bool(batch)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)

    def dice(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The soft Dice coefficients before the mean: ``(C',)`` with ``batch=True``, else ``(B, C')``.

        ``C'`` is ``C`` or ``C − 1`` without background. Arguments as in :meth:`forward`.
        """
        if logits.ndim < 3:
            raise DataError(f"DiceLoss: logits of shape {tuple(logits.shape)}: expected (B, C, *spatial)")
        num_classes = logits.shape[1]
        if not self.include_background and num_classes < 2:
            raise DataError(
                f"DiceLoss: logits of shape {tuple(logits.shape)}: one class only, nothing left without background"
            )
        probs = torch.softmax(logits.float(), dim=1)  # (B, C, *S), float32 also under autocast
        if target.shape == logits.shape and target.is_floating_point():
            onehot = target.float()  # (B, C, *S) class probabilities
        elif target.shape == logits.shape[:1] + logits.shape[2:]:
            if target.is_floating_point():
                raise DataError(f"DiceLoss: target of dtype {target.dtype}: expected integer labels")
            # The range check reads two values back to the host: done on CPU tensors only, so a
            # CUDA training step has no host synchronisation here (one_hot still fails loudly);
            # skipped for fake tensors, which hold no values: kitsmsan.bench.memory counts the training
            # step under FakeTensorMode on the CPU device, where reading one raises
            # DataDependentOutputException.
            if (
                target.device.type == "cpu"
                and target.numel()
                and not is_fake(target)
                and (int(target.min()) < 0 or int(target.max()) >= num_classes)
            ):
                raise DataError(
                    f"DiceLoss: target labels span [{int(target.min())}, {int(target.max())}], "
                    f"outside [0, {num_classes - 1}] for {num_classes} classes"
                )
            onehot = _one_hot(target, num_classes)  # (B, C, *S)
        else:
            raise DataError(
                f"DiceLoss: target of shape {tuple(target.shape)} does not fit logits of shape "
                f"{tuple(logits.shape)}: expected (B, *spatial) labels or (B, C, *spatial) probabilities"
            )
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]  # (B, C-1, *S)
        dims = (0, *range(2, probs.ndim)) if self.batch else tuple(range(2, probs.ndim))
        intersection = (probs * onehot).sum(dims)  # (C',) or (B, C')
        volumes = probs.sum(dims) + onehot.sum(dims)
        return (2 * intersection + self.smooth_nr) / (volumes + self.smooth_dr)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``1 − mean Dice`` over the classes (and samples with ``batch=False``).

        Args:
            logits: ``(B, C, *S)`` raw network outputs (softmax is applied here).
            target: ``(B, *S)`` integer labels, or ``(B, C, *S)`` class probabilities.

        Returns:
            A scalar tensor; 0 for a perfect prediction.
        """
        return 1.0 - self.dice(logits, target).mean()


def deep_supervision_weights(n: int) -> list[float]:
    """Loss weights for ``n`` outputs, finest first: ``w_i ∝ 2**-i``, normalised to sum 1 (nnU-Net).

    Example: ``deep_supervision_weights(3) == [4/7, 2/7, 1/7]``.

    Raises:
        ConfigError: if ``n < 1``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"deep_supervision_weights: n={n!r}: expected a positive integer")
    raw = [0.5**i for i in range(n)]
    total = sum(raw)
    return [w / total for w in raw]


#: how :class:`DeepSupervisionLoss` brings the target to a coarser resolution
TARGET_MODES = ("nearest", "average")


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``base_loss`` over the full-resolution output and the auxiliary ones (§2.2, §3.1).

    Args:
        base_loss: a callable ``(logits, target) -> scalar``, e.g. :class:`DiceLoss` (default when
            None).
        weights: one non-negative weight per output, finest first, used as given (not
            renormalised); default (None): :func:`deep_supervision_weights` of the number of outputs
            (``[4/7, 2/7, 1/7]`` for three).
        target_mode: ``"nearest"`` (default): the integer target is sampled at the first voxel of each
            block (``target[..., ::f_D, ::f_H, ::f_W]``, nnU-Net's nearest-neighbour downsampling);
            ``"average"``: the one-hot target is average-pooled over each block, giving class fractions
            (soft targets; ``base_loss`` must accept ``(B, C, *S)`` probabilities, as :class:`DiceLoss`
            and ``nn.CrossEntropyLoss`` do).

    Call:
        ``loss(outputs, target)``: ``outputs`` is one logits tensor ``(B, C, *S)`` (then this is just
        ``base_loss``) or a list ``[logits, aux_1, aux_2, …]`` whose spatial sizes divide the target's;
        ``target`` is integer labels ``(B, *S)`` at full resolution. Returns a scalar.

    Raises:
        ConfigError: for bad weights or mode, or a number of outputs that does not match ``weights``.
        DataError: for an auxiliary size that does not divide the target's size.
    """

    def __init__(
        self,
        base_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        weights: Sequence[float] | None = None,
        target_mode: str = "nearest",
    ) -> None:
        super().__init__()
        self.base_loss = DiceLoss() if base_loss is None else base_loss
        if weights is not None:
            weights = [float(w) for w in weights]
            if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ConfigError(
                    f"DeepSupervisionLoss: weights={weights}: need non-negative weights with a positive sum"
                )
        self.weights = weights
        if target_mode not in TARGET_MODES:
            raise ConfigError(
                f"DeepSupervisionLoss: target_mode={target_mode!r}: expected one of {TARGET_MODES}"
            )
        self.target_mode = target_mode

    def resize_target(self, target: torch.Tensor, size: Sequence[int], num_classes: int) -> torch.Tensor:
        """Bring integer labels ``(B, *S)`` to spatial ``size`` (each a divisor of ``S``).

        Returns:
            ``(B, *size)`` labels (``"nearest"``) or ``(B, num_classes, *size)`` class fractions
            (``"average"``); the target itself when ``size`` equals ``S``.
        """
        full = tuple(target.shape[1:])
        size = tuple(int(s) for s in size)
        if size == full:
            return target
        if len(size) != len(full) or any(s < 1 or f % s for s, f in zip(size, full)):
            raise DataError(
                f"DeepSupervisionLoss: an output of spatial size {size} does not evenly divide "
                f"the target's size {full}"
            )
        factors = tuple(f // s for f, s in zip(full, size))
        if self.target_mode == "nearest":
            index = (slice(None),) + tuple(slice(None, None, k) for k in factors)
            return target[index]  # (B, *size)
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}.get(len(size))
        if pool is None:
            raise DataError(f"DeepSupervisionLoss: {len(size)} spatial dims: average mode needs 1 to 3")
        return pool(_one_hot(target, num_classes), kernel_size=factors, stride=factors)  # (B, C, *size)

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the per-output losses; see the class docstring."""
        if isinstance(outputs, torch.Tensor):
            return self.base_loss(outputs, target)
        outputs = list(outputs)
        if not outputs:
            raise DataError("DeepSupervisionLoss: empty list of outputs")
        weights = deep_supervision_weights(len(outputs)) if self.weights is None else self.weights
        if len(weights) != len(outputs):
            raise ConfigError(
                f"DeepSupervisionLoss: {len(outputs)} outputs but {len(weights)} weights {list(weights)}"
            )
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for logits, weight in zip(outputs, weights):
            resized = self.resize_target(target, logits.shape[2:], logits.shape[1])
            total = total + weight * self.base_loss(logits, resized)
        return total
