"""What every benchmark shares: the paper's sizes, provenance of a row, argument checks, the
plain-text table."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from kitsmsan.errors import ConfigError
from kitsmsan.models import list_models
from kitsmsan.utils.provenance import device_name, git_commit

#: the paper's training configuration (MSAN paper, §3.1)
PAPER_BATCH = 2
PAPER_SLICES = 4
PAPER_SIZE = 512
PAPER_ITERS = 400_000
#: slices of the inference test case (a typical KiTS19 volume)
PAPER_CASE_SLICES = 300

#: keys every row carries (:func:`provenance`); :func:`format_table` prints them once, as a header
PROVENANCE_KEYS = ("device", "torch", "commit")


# ------------------------------------------------------------------------------------ helpers
def commit() -> str:
    """The commit measured: ``$KITSMSAN_COMMIT`` if set (a copy of the tree without ``.git``, as on
    the GPU machines of ``scripts/gpu_bench.sh``), else :func:`kitsmsan.utils.provenance.git_commit`."""
    return os.environ.get("KITSMSAN_COMMIT", "").strip() or git_commit()


def provenance(device: str | None = None) -> dict[str, str]:
    """``{"device", "torch", "commit"}`` of a measurement (:mod:`kitsmsan.utils.provenance`).

    Args:
        device: the torch device measured on (default None: CUDA if available, else the CPU).
    """
    return {"device": device_name(device), "torch": torch.__version__, "commit": commit()}


def _sig(x: float | None, digits: int = 4) -> float | None:
    """Round to ``digits`` significant digits (None and non-finite values pass through)."""
    if x is None or not math.isfinite(x) or x == 0:
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name}={value!r}: expected an integer >= {low}")
    return int(value)


def _pick(what: str, value: Sequence[str] | str, known: Sequence[str]) -> list[str]:
    """``value`` (a list or a comma-separated string) as a non-empty list of names from ``known``."""
    names = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    if not names or any(n not in known for n in names):
        raise ConfigError(f"{what}={names!r}: expected names from {', '.join(known)}")
    return names


def _variants(variants: Sequence[str] | str | None) -> list[str]:
    return list_models() if variants is None else _pick("variants", variants, list_models())


def _emit(rows: list[dict], row: dict, on_row: Callable[[dict], None] | None, verbose: bool) -> dict:
    rows.append(row)
    if on_row is not None:
        on_row(row)
    if verbose:
        print(format_table([row]), flush=True)
    return row


def format_table(results: Sequence[dict[str, Any]], *, skip: Sequence[str] = ()) -> str:
    """Plain-text table of benchmark rows, grouped by ``benchmark``.

    A benchmark with one row prints as ``key  value`` lines; one with several rows prints as
    columns (a dash for a missing value). Keys in ``skip`` are left out (e.g. the provenance keys,
    printed once as a header by the command).
    """
    lines: list[str] = []
    groups: dict[str, list[dict]] = {}
    for res in results:
        groups.setdefault(str(res.get("benchmark", "?")), []).append(res)
    for name, group in groups.items():
        lines.append(f"== bench {name} ==")
        keys: list[str] = []
        for res in group:
            keys += [k for k in res if k != "benchmark" and k not in skip and k not in keys]
        if len(group) == 1:
            width = max((len(k) for k in keys), default=0)
            lines += [f"{k:<{width}}  {group[0][k]}" for k in keys]
            continue
        cells = [[_cell(r.get(k)) for k in keys] for r in group]
        widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
        lines.append("  ".join(k.ljust(w) for k, w in zip(keys, widths)).rstrip())
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


__all__ = [
    "PAPER_BATCH",
    "PAPER_SLICES",
    "PAPER_SIZE",
    "PAPER_ITERS",
    "PAPER_CASE_SLICES",
    "PROVENANCE_KEYS",
    "commit",
    "provenance",
    "format_table",
]
