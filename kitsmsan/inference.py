"""Whole-volume inference by sliding 4-slice windows along z (MSAN paper, §3.1).

The networks see ``num_slices`` = 4 consecutive axial slices at a time (paper §3.1: "every 4 images of
size 512×512"). To label a whole CT volume :func:`predict_case`

1. normalises the HU image with :func:`kitsmsan.data.preprocess.normalize` (the same function training
   uses, so the two cannot disagree; paper §2.1 window [-200, 500] HU → [0, 1]);
2. pads in-plane (bottom/right) to a multiple of ``divisor`` = 16, the factor by which the U-Net's four
   poolings shrink H and W, with 0 (= -200 HU or lower, i.e. the air around the body), and crops the
   output back — so any in-plane size works (case_00160 is 252 slices of 512 × 796);
3. cuts windows of ``num_slices`` slices starting every ``stride`` slices, the last window aligned to the
   end of the volume; a volume with fewer than ``num_slices`` slices is padded in z by repeating its
   last slice;
4. runs the windows in batches of ``batch_size`` under :func:`torch.inference_mode` (AMP on CUDA:
   bfloat16 if supported, else float16; off on CPU unless asked), takes the softmax in float32 and
   averages the probabilities of every window (and every model) that covers a slice.

Memory: the probability accumulator is float32 ``(3, Z, Y, X)`` on the CPU, 944 MB for a
512 × 512 × 300 volume, plus the normalised volume (315 MB); the device only holds one batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kitsmsan.checkpoint import load_model as load_checkpoint_model
from kitsmsan.data.preprocess import normalize
from kitsmsan.ensemble import majority_vote
from kitsmsan.errors import ConfigError, DataError
from kitsmsan.utils.amp import resolve_amp
from kitsmsan.utils.device import resolve_device


def window_starts(num_slices_total: int, num_slices: int = 4, stride: int = 2) -> list[int]:
    """First slice of every window: ``0, stride, 2*stride, ...`` plus one aligned to the end.

    Args:
        num_slices_total: slices in the (z-padded) volume, >= ``num_slices``.
        num_slices: window depth (default 4, paper §3.1).
        stride: step between windows (default 2), 1..``num_slices`` so that every slice is covered.

    Returns:
        Sorted, distinct start indices; the last is ``num_slices_total - num_slices``.

    Example:
        ``window_starts(9, 4, 2) == [0, 2, 4, 5]``.
    """
    if num_slices_total < num_slices:
        raise DataError(f"volume of {num_slices_total} slices is shorter than a window of {num_slices}")
    last = num_slices_total - num_slices
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a module without parameters)."""
    params = next(iter(model.parameters()), None)
    return params.device if params is not None else torch.device("cpu")


def _check_inputs(image_hu, *, num_slices: int, stride: int, batch_size: int, divisor: int) -> np.ndarray:
    """``image_hu`` as an array after checking the arguments of :func:`predict_case`.

    Raises:
        ConfigError: a count that is not a positive integer, or ``stride > num_slices``.
        DataError: ``image_hu`` not a non-empty 3-D array of finite real numbers.
    """
    for name, v, lo in (
        ("num_slices", num_slices, 1),
        ("stride", stride, 1),
        ("batch_size", batch_size, 1),
        ("divisor", divisor, 1),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"{name}={v!r}: expected an integer >= {lo}")
    if stride > num_slices:
        raise ConfigError(f"stride={stride} > num_slices={num_slices} would skip slices")
    image_hu = np.asarray(image_hu)
    if image_hu.ndim != 3 or 0 in image_hu.shape:
        raise DataError(f"image_hu: expected a non-empty (Z, Y, X) volume, got shape {image_hu.shape}")
    if not np.issubdtype(image_hu.dtype, np.number) or np.iscomplexobj(image_hu):
        raise DataError(f"image_hu: expected real numbers, got dtype {image_hu.dtype}")
    if np.issubdtype(image_hu.dtype, np.floating) and not np.isfinite(image_hu).all():
        raise DataError("image_hu: contains NaN or infinite values")
    return image_hu


def _window_probs(model: torch.nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """Softmax probabilities, float32 ``(B, C, n, H, W)``, of ``model`` on windows ``x`` ``(B, 1, n, H, W)``.

    Raises:
        DataError: the model's output is not ``(B, C, n, H, W)`` logits with C >= 2.
    """
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = model(x)
    if isinstance(logits, (list, tuple)):  # deep supervision: full-res output first
        logits = logits[0]
    if (
        logits.ndim != 5
        or logits.shape[0] != x.shape[0]
        or tuple(logits.shape[2:]) != tuple(x.shape[2:])
        or logits.shape[1] < 2
    ):
        raise DataError(
            f"model output shape {tuple(logits.shape)} for input {tuple(x.shape)}: "
            f"expected (B, C, {x.shape[2]}, {x.shape[3]}, {x.shape[4]}) logits with C >= 2"
        )
    return torch.softmax(logits.float(), dim=1)


def predict_case(
    model_or_models,
    image_hu: np.ndarray,
    *,
    num_slices: int = 4,
    stride: int = 2,
    batch_size: int = 4,
    device=None,
    amp=None,
    return_probs: bool = False,
    divisor: int = 16,
    progress: bool = False,
) -> np.ndarray:
    """Segment a whole CT volume with one model or the probability average of several (§3.1).

    Args:
        model_or_models: an ``nn.Module`` mapping ``(B, 1, num_slices, H, W)`` to logits
            ``(B, C, num_slices, H, W)`` (``H, W`` multiples of ``divisor``), or a sequence of such
            modules, whose softmax probabilities are averaged (probability-averaging ensemble; for the
            paper's vote use :func:`predict_ensemble_vote`). Models are put in eval mode for the call
            and restored afterwards; if ``device`` is given they are moved there (in place).
        image_hu: ``(Z, Y, X)`` CT in Hounsfield units (any real dtype), any Z >= 1, any Y, X.
        num_slices: window depth (default 4, paper §3.1).
        stride: z step between windows (default 2; 1..``num_slices``). Overlapping windows are
            averaged; stride 4 means no overlap.
        batch_size: windows per forward pass (default 4).
        device: torch device or ``"auto"``; None (default) = the device of the first model.
        amp: None/"auto" (default): autocast on CUDA (bf16 if supported, else fp16), off on CPU;
            True/"on", False/"off", or a dtype (``torch.bfloat16``) to force.
        return_probs: if True return float32 probabilities ``(C, Z, Y, X)``; else (default) uint8
            labels ``(Z, Y, X)`` (argmax, ties to the lower class).
        divisor: in-plane sizes are padded up to a multiple of this (default 16 = 2**4 poolings).
        progress: show a tqdm bar over batches (default False).

    Returns:
        uint8 ``(Z, Y, X)`` labels, or float32 ``(C, Z, Y, X)`` probabilities summing to 1 per voxel.

    Raises:
        DataError: ``image_hu`` not 3-D, empty or non-finite; a model output of the wrong shape.
        ConfigError: bad ``num_slices``, ``stride``, ``batch_size``, ``divisor``, ``device``, ``amp``.
    """
    models = [model_or_models] if isinstance(model_or_models, torch.nn.Module) else list(model_or_models)
    if not models or not all(isinstance(m, torch.nn.Module) for m in models):
        raise ConfigError("model_or_models: expected an nn.Module or a non-empty sequence of them")
    image_hu = _check_inputs(
        image_hu, num_slices=num_slices, stride=stride, batch_size=batch_size, divisor=divisor
    )

    dev = model_device(models[0]) if device is None else resolve_device(device)
    amp_dtype = resolve_amp(amp, dev)
    Z, Y, X = image_hu.shape
    Zp = max(Z, num_slices)
    Hp, Wp = math.ceil(Y / divisor) * divisor, math.ceil(X / divisor) * divisor

    volume = normalize(image_hu)  # float32 (Z, Y, X) in [0, 1]
    volume = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    if Zp > Z:  # too few slices: repeat the last one
        volume = torch.cat([volume, volume[-1:].expand(Zp - Z, Y, X)], dim=0)
    volume = F.pad(volume, (0, Wp - X, 0, Hp - Y))  # (Zp, Hp, Wp), zeros = air
    starts = window_starts(Zp, num_slices, stride)
    coverage = np.zeros(Zp, dtype=np.float32)  # windows covering each slice
    for s in starts:
        coverage[s : s + num_slices] += 1
    acc = None  # float32 (C, Zp, Y, X), allocated once C is known

    was_training = [m.training for m in models]
    if device is not None:
        for m in models:
            m.to(dev)
    batches = [starts[i : i + batch_size] for i in range(0, len(starts), batch_size)]
    if progress:
        batches = tqdm(batches, desc="windows", unit="batch")
    try:
        for m in models:
            m.eval()
        with torch.inference_mode():
            for batch_starts in batches:
                x = torch.stack([volume[s : s + num_slices] for s in batch_starts])[:, None]
                x = x.to(dev, non_blocking=True)  # (B, 1, num_slices, Hp, Wp)
                probs_np = sum(_window_probs(m, x, amp_dtype)[..., :Y, :X] for m in models).cpu().numpy()
                if acc is None:
                    acc = np.zeros((probs_np.shape[1], Zp, Y, X), dtype=np.float32)
                for j, s in enumerate(batch_starts):
                    acc[:, s : s + num_slices] += probs_np[j]
    finally:
        for m, t in zip(models, was_training):
            m.train(t)

    acc = acc[:, :Z]
    acc /= (coverage[:Z] * len(models))[None, :, None, None]
    if return_probs:
        return np.ascontiguousarray(acc)
    return np.argmax(acc, axis=0).astype(np.uint8)


def predict_ensemble_vote(
    models: Sequence, image_hu: np.ndarray, *, rule: str = "nested", tie_break: str | None = None, **kwargs
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The paper's ensemble: each model labels the volume, then a per-voxel vote (§2.2, §3.1).

    Args:
        models: sequence of N >= 1 models (the paper uses five variants).
        image_hu: ``(Z, Y, X)`` CT in HU.
        rule, tie_break: see :func:`kitsmsan.ensemble.majority_vote` (default ``"nested"``, None).
        **kwargs: passed to :func:`predict_case` (``stride``, ``device``, ...; not ``return_probs``).

    Returns:
        ``(vote, per_model)``: the uint8 ``(Z, Y, X)`` vote and the list of each model's labels.
    """
    if kwargs.get("return_probs"):
        raise ConfigError("predict_ensemble_vote: return_probs is not supported (votes are labels)")
    models = list(models)
    if not models:
        raise ConfigError("models: empty; need at least one model")
    per_model = [predict_case(m, image_hu, **kwargs) for m in models]
    return majority_vote(per_model, rule=rule, tie_break=tie_break), per_model


def load_model(run_dir_or_ckpt: str | os.PathLike, device="cpu", *, checkpoint: str = "best"):
    """Load a trained model for inference (:func:`kitsmsan.checkpoint.load_model`).

    Args:
        run_dir_or_ckpt: run folder (``checkpoints/{best,last}.pt`` inside) or checkpoint file.
        device: where to put the model (default ``"cpu"``).
        checkpoint: ``"best"`` (default; falls back to ``"last"`` for a run without validation) or
            ``"last"``.

    Returns:
        The model in eval mode on ``device``.

    Raises:
        CheckpointError: missing, corrupt or untrusted checkpoint.
    """
    return load_checkpoint_model(run_dir_or_ckpt, device, which=checkpoint)
