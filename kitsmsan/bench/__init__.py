"""Benchmarks of the pipeline's speed (the data cache; performance).

One function per benchmark, each returning a list of flat result rows (dicts); every row names the
benchmark, the device, the PyTorch version and the commit (:func:`provenance`). ``kitsmsan bench``
prints them as a table (:func:`format_table`) and writes a JSON report (:func:`make_report`) that the
book's Performance page renders.

* :func:`bench_data` — random 4-slice windows per second from the memory-mapped training cache
  (:class:`kitsmsan.data.dataset.SliceWindowDataset`) versus straight from the ``.nii.gz``, and the
  ``DataLoader`` at batch 2 × 1 × 4 × H × W with 0 / 1 / 2 worker processes.
* :func:`bench_step` — one training iteration of each of the paper's five networks (MSAN paper,
  §3.1: batch 2 of 4 × 512 × 512 windows, Dice loss, deep supervision for the ``_ds`` variants, Adam)
  in fp32 eager, under autocast (bf16 where supported, else fp16 with a grad scaler), plus
  ``channels_last_3d``, plus :func:`torch.compile`; iterations/s, peak memory, projected hours for
  400,000 iterations and for the five-model schedule. On a CPU the same code runs at a reduced size.
* :func:`bench_inference` — seconds to label one 512 × 512 × 300 case with one network and with the
  five-network vote (MSAN paper, §3.1).
* :func:`bench_smoke` — wall time of ``kitsmsan reproduce --preset smoke`` (a subprocess).

Timing rules: warm-up iterations are excluded; on CUDA the clock is read after
``torch.cuda.synchronize()``; a ratio is only ever formed from two numbers measured in the same
call. Nothing here asserts a speed: the speed targets are reported as rows of
:func:`target_rows` ("met: yes/no"), never enforced.

One module per benchmark (:mod:`~kitsmsan.bench.data`, :mod:`~kitsmsan.bench.step`,
:mod:`~kitsmsan.bench.inference`, :mod:`~kitsmsan.bench.smoke`), plus :mod:`~kitsmsan.bench.budget`
(the schedule, projected and counted), :mod:`~kitsmsan.bench.memory` (``kitsmsan bench memory``: the
GPU memory of a training step counted without a GPU, what fits which GPU, projected hours), :mod:`~kitsmsan.bench.report` (targets, the JSON report) and
:mod:`~kitsmsan.bench.common` (provenance, checks, the table). Everything public is importable from
``kitsmsan.bench`` itself. The names are loaded on first use, so that ``kitsmsan bench step`` runs
where nibabel (needed by the data and inference benchmarks only) is missing. A benchmark is listed in
:data:`BENCHMARKS` and is the function ``bench_<name>`` of the module ``kitsmsan.bench.<name>``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from kitsmsan.utils.device import resolve_device

#: the benchmarks, in the order ``kitsmsan bench all`` runs them: ``kitsmsan.bench.<name>.bench_<name>``
BENCHMARKS = ("data", "step", "inference", "smoke")

#: public name -> the module of this package that defines it
_EXPORTS = {
    "PAPER_BATCH": "common",
    "PAPER_SLICES": "common",
    "PAPER_SIZE": "common",
    "PAPER_ITERS": "common",
    "PAPER_CASE_SLICES": "common",
    "PROVENANCE_KEYS": "common",
    "commit": "common",
    "provenance": "common",
    "format_table": "common",
    "bench_data": "data",
    "STEP_MODES": "step",
    "MODE_LABELS": "step",
    "STEP_DEFAULTS": "step",
    "bench_step": "step",
    "time_step": "step",
    "SCHEDULE_TARGET_H": "budget",
    "schedule_row": "budget",
    "schedule_budget": "budget",
    "build_model_default_base": "budget",
    "INFERENCE_DEFAULTS": "inference",
    "bench_inference": "inference",
    "SMOKE_TARGET_S": "smoke",
    "bench_smoke": "smoke",
    "TARGETS": "report",
    "target_rows": "report",
    "make_report": "report",
    "merge_reports": "report",
    **dict.fromkeys(
        (
            "CONTEXT_GIB",
            "EFFICIENCY",
            "GPUS",
            "MARGIN_FRACTION",
            "PRECISIONS",
            "affine_fit",
            "amp_precision",
            "count_peak_memory",
            "cuda_training_peak",
            "fit_rows",
            "gpu_key",
            "inference_memory",
            "largest_that_fits",
            "memory_markdown",
            "memory_report",
            "projected_hours",
            "required_gib",
            "time_rows",
            "train_flops_per_iter",
            "training_memory",
        ),
        "memory",
    ),
}


def benchmark(name: str) -> Callable[..., list[dict[str, Any]]]:
    """The function of benchmark ``name`` (one of :data:`BENCHMARKS`): keyword arguments only, returns
    a list of rows.

    Raises:
        KeyError: ``name`` is not a benchmark.
    """
    if name not in BENCHMARKS:
        raise KeyError(f"{name!r}: not a benchmark ({', '.join(BENCHMARKS)})")
    return getattr(importlib.import_module(f"kitsmsan.bench.{name}"), f"bench_{name}")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"kitsmsan.bench.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'kitsmsan.bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["BENCHMARKS", "benchmark", "resolve_device", *_EXPORTS]
