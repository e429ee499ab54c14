"""The five-network schedule: projected from measured steps, and budgeted by counting FLOPs."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from kitsmsan.bench.common import (
    PAPER_BATCH,
    PAPER_ITERS,
    PAPER_SIZE,
    PAPER_SLICES,
    PROVENANCE_KEYS,
    _check_int,
    _sig,
    _variants,
    provenance,
)
from kitsmsan.errors import ConfigError
from kitsmsan.models import build_model, count_train_flops, list_models, model_config

#: the target for the five-network schedule, 12 hours on one H100-class GPU
SCHEDULE_TARGET_H = 12.0


def build_model_default_base(variant: str) -> int:
    """The ``base_channels`` a network gets without overrides (the package's paper-scale width)."""
    return model_config(variant).base_channels


def schedule_row(rows: Iterable[dict], *, num_iters: int = PAPER_ITERS) -> dict[str, Any] | None:
    """The five-model schedule projected from ``"step"`` rows of one device and input size.

    For each network the fastest measured mode is taken; ``five_model_hours_best`` is the sum over
    the networks of ``num_iters`` at that speed, ``five_model_hours_fp32`` the same at fp32 eager,
    ``speedup`` their ratio. Both sums are None unless every one of the paper's five networks has a
    measurement (a partial schedule is not a schedule).

    Args:
        rows: results of :func:`~kitsmsan.bench.step.bench_step` (other benchmarks' rows are ignored).
        num_iters: iterations per network, default 400,000 (MSAN paper, §3.1).

    Returns:
        A ``"schedule"`` row, or None when there is no successful step row.
    """
    steps = [r for r in rows if r.get("benchmark") == "step" and r.get("it_per_s")]
    if not steps:
        return None
    best: dict[str, dict] = {}
    fp32: dict[str, dict] = {}
    for r in steps:
        if r["variant"] not in best or r["it_per_s"] > best[r["variant"]]["it_per_s"]:
            best[r["variant"]] = r
        if r["mode"] == "fp32":
            fp32[r["variant"]] = r
    everyone = list_models()
    complete = all(v in best for v in everyone)
    hours_best = sum(num_iters / best[v]["it_per_s"] / 3600 for v in everyone) if complete else None
    hours_fp32 = (
        sum(num_iters / fp32[v]["it_per_s"] / 3600 for v in everyone)
        if all(v in fp32 for v in everyone)
        else None
    )
    first = steps[0]
    paper_size = first["input"] == f"{PAPER_BATCH}x1x{PAPER_SLICES}x{PAPER_SIZE}x{PAPER_SIZE}"
    return {
        "benchmark": "schedule",
        "input": first["input"],
        "base_channels": first["base_channels"],
        "at_paper_size": paper_size,
        "networks": len(best),
        "iters_per_network": num_iters,
        "best_modes": ", ".join(f"{v}: {best[v]['mode']}" for v in everyone if v in best),
        "five_model_hours_fp32": _sig(hours_fp32),
        "five_model_hours_best": _sig(hours_best),
        "speedup": _sig(hours_fp32 / hours_best) if hours_best and hours_fp32 else None,
        **{k: first[k] for k in PROVENANCE_KEYS},
    }


def schedule_budget(
    *,
    num_iters: int = PAPER_ITERS,
    hours: float = SCHEDULE_TARGET_H,
    variants: Sequence[str] | str | None = None,
) -> dict[str, Any]:
    """What the schedule target asks of a device, by counting (not measuring) the arithmetic.

    For each network, the FLOPs of one training iteration at the paper's batch
    (2 × 1 × 4 × 512 × 512, forward + backward, counted on the ``meta`` device by
    :func:`kitsmsan.models.count_train_flops`); their sum over the five networks times ``num_iters``
    is the schedule's arithmetic, and dividing it by ``hours`` gives the convolution throughput a
    device must *sustain*, on average, for the whole schedule to fit. Element-wise work
    (normalisation, activations, the optimiser) is not counted, so the real requirement is higher.
    The same count turns a measured ``it_per_s`` into the ``tflop_per_s`` of the step rows.

    Args:
        num_iters: iterations per network, default 400,000 (MSAN paper, §3.1).
        hours: the time budget, default 12.
        variants: networks, default all five.

    Returns:
        A ``"budget"`` row: ``input``, ``tflop_per_iter_<network>`` (one key per network),
        ``schedule_eflop``, ``hours``, ``required_tflop_per_s``; its ``device`` says it was counted,
        not measured (the count is the same on every machine).
    """
    num_iters = _check_int("num_iters", num_iters, 1)
    if not (isinstance(hours, (int, float)) and math.isfinite(hours) and hours > 0):
        raise ConfigError(f"hours={hours!r}: must be a positive number")
    shape = (PAPER_BATCH, 1, PAPER_SLICES, PAPER_SIZE, PAPER_SIZE)
    per_iter = {}
    for name in _variants(variants):
        with torch.device("meta"):
            per_iter[name] = count_train_flops(build_model(name), shape)
    total = sum(per_iter.values()) * num_iters
    return {
        "benchmark": "budget",
        "input": "x".join(map(str, shape)),
        "iters_per_network": num_iters,
        **{f"tflop_per_iter_{k}": round(v / 1e12, 3) for k, v in per_iter.items()},
        "schedule_eflop": _sig(total / 1e18),
        "hours": hours,
        "required_tflop_per_s": _sig(total / (hours * 3600) / 1e12),
        **provenance("cpu"),
        "device": "none: counted on the meta device, not measured",
    }
