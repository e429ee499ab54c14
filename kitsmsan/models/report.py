"""Size and cost of the five networks: parameters, forward FLOPs/MACs, output shapes (`kitsmsan models`).

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` during one eval-mode forward.
The model and the input live on PyTorch's ``meta`` device, so nothing is computed or allocated and
the paper's input ``(1, 1, 4, 512, 512)`` is counted in well under a second on a CPU. The counter
counts convolutions (and matrix products) only, as ``2 × multiply–accumulates``; normalisation,
activations, pooling, sigmoid, interpolation and bias additions are not counted (they are a few
percent at most). ``MACs = FLOPs / 2``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kitsmsan.errors import ConfigError
from kitsmsan.models.registry import build_model, describe, list_models, model_config

#: one window of the paper's input: 4 consecutive 512×512 slices (MSAN paper, §3.1)
PAPER_INPUT = (1, 1, 4, 512, 512)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model`` (works on ``meta`` models too)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _shapes(out: torch.Tensor | Sequence[torch.Tensor]) -> list[list[int]]:
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    return [list(t.shape) for t in outs]


def count_flops(model: nn.Module, input_shape: Sequence[int] = PAPER_INPUT, *, backward: bool = False) -> int:
    """FLOPs of ``model`` for one input of ``input_shape``, counted on the ``meta`` device.

    The model is copied to ``meta`` (weights are not needed to count). By default it runs one
    eval-mode forward. With ``backward`` it runs in training mode (the deep-supervision heads too)
    and back-propagates a scalar built from every output, so the convolution gradients
    (``aten.convolution_backward``: input and weight) are counted exactly, not estimated as
    "3 × forward"; the loss and the optimiser are element-wise and not counted.

    Args:
        model: any module taking one tensor and returning a tensor or a list of tensors.
        input_shape: e.g. ``(1, 1, 4, 512, 512)`` (default, the paper's window).
        backward: count a training step's forward and backward, default False (forward only).

    Returns:
        FLOPs (``2 ×`` multiply–accumulates of convolutions and matrix products).
    """
    meta_model = model if _is_meta(model) else _to_meta(model)
    was_training = meta_model.training
    meta_model.train(backward)
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.set_grad_enabled(backward):
            out = meta_model(torch.empty(tuple(input_shape), device="meta"))
            if backward:
                outs = [out] if isinstance(out, torch.Tensor) else list(out)
                sum(o.float().sum() for o in outs).backward()
    finally:
        meta_model.train(was_training)
        if backward:
            meta_model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def count_train_flops(model: nn.Module, input_shape: Sequence[int] = PAPER_INPUT) -> int:
    """FLOPs of one training step, forward and backward: ``count_flops(..., backward=True)``."""
    return count_flops(model, input_shape, backward=True)


def _is_meta(model: nn.Module) -> bool:
    return all(p.is_meta for p in model.parameters())


def _to_meta(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("meta")


def variant_report(name: str, input_shape: Sequence[int] = PAPER_INPUT, **overrides: Any) -> dict[str, Any]:
    """Parameters, FLOPs/MACs and output shapes of one registered variant, built on ``meta``.

    Args:
        name: a name from :func:`~kitsmsan.models.list_models`.
        input_shape: ``(B, 1, D, H, W)``. Default :data:`PAPER_INPUT`.
        **overrides: :class:`~kitsmsan.models.ModelConfig` fields, e.g. ``base_channels=16``.

    Returns:
        ``{"name", "description", "config", "input_shape", "parameters", "flops", "macs",
        "gflops", "eval_output_shapes", "train_output_shapes"}``; shapes are lists of lists (the
        training-mode list has three entries for deep-supervised variants).

    Raises:
        ConfigError: for an unknown name or override; DataError for an input shape the model rejects.
    """
    config = model_config(name, **overrides)
    with torch.device("meta"):
        model = build_model(name, **overrides)
    x = torch.empty(tuple(int(s) for s in input_shape), device="meta")
    model.check_input(x)
    with torch.no_grad():
        model.train()
        train_shapes = _shapes(model(x))
        model.eval()
        eval_shapes = _shapes(model(x))
    flops = count_flops(model, x.shape)
    return {
        "name": name,
        "description": describe(name),
        "config": config.to_dict(),
        "input_shape": list(x.shape),
        "parameters": count_parameters(model),
        "flops": flops,
        "macs": flops // 2,
        "gflops": flops / 1e9,
        "eval_output_shapes": eval_shapes,
        "train_output_shapes": train_shapes,
    }


def model_report(
    names: Sequence[str] | None = None, input_shape: Sequence[int] = PAPER_INPUT, **overrides: Any
) -> list[dict[str, Any]]:
    """:func:`variant_report` for each of ``names`` (default: all five registered variants)."""
    names = list_models() if names is None else list(names)
    if len(input_shape) != 5:
        raise ConfigError(f"input_shape={tuple(input_shape)}: expected 5 numbers (B, C, D, H, W)")
    return [variant_report(name, input_shape, **overrides) for name in names]


def format_report(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of :func:`model_report` rows (parameters in millions, GFLOPs, GMACs, shapes)."""

    def shapes(s: list[list[int]]) -> str:
        return " + ".join("x".join(map(str, shape[1:])) for shape in s)  # drop the batch size

    header = f"{'variant':<12} {'params':>12} {'GFLOPs':>10} {'GMACs':>10}  {'eval output':<14} train outputs"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['name']:<12} {row['parameters']:>12,} {row['flops'] / 1e9:>10.1f} {row['macs'] / 1e9:>10.1f}  "
            f"{shapes(row['eval_output_shapes']):<14} {shapes(row['train_output_shapes'])}"
        )
    if rows:
        b, c, d, h, w = rows[0]["input_shape"]
        base = rows[0]["config"]["base_channels"]
        lines.append(
            f"input ({b}, {c}, {d}, {h}, {w}), base width {base}; FLOPs = 2 x MACs of convolutions, "
            "one eval-mode forward; shapes are (classes, D, H, W)"
        )
    return "\n".join(lines)
