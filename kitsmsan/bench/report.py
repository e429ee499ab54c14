"""The benchmark report: the speed targets, the JSON document the book renders, merging reports."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from kitsmsan.bench.budget import SCHEDULE_TARGET_H
from kitsmsan.bench.common import PAPER_BATCH, PAPER_SIZE, PAPER_SLICES, PROVENANCE_KEYS, _sig, commit
from kitsmsan.bench.smoke import SMOKE_TARGET_S
from kitsmsan.errors import ConfigError
from kitsmsan.utils.provenance import environment

#: The speed targets (two for the data cache, the rest for training and inference), in the order the book
#: lists them. ``higher``: the measured value must be at least ``required`` (else at most).
#: ``needs``: where it can be measured; a target with no row yet is shown as pending, never guessed.
TARGETS = (
    dict(
        id="cache_vs_nifti",
        target="cache windows / .nii.gz windows (x)",
        required=100,
        higher=True,
        needs="any machine",
    ),
    dict(
        id="cache_per_cpu_s",
        target="cache windows per CPU-second (one core)",
        required=1000,
        higher=True,
        needs="any machine",
    ),
    dict(
        id="cache_per_cpu_s_uint8",
        target="cache windows per CPU-second, uint8 label",
        required=1000,
        higher=True,
        needs="any machine",
    ),
    dict(
        id="smoke_s",
        target="reproduce --preset smoke (s)",
        required=SMOKE_TARGET_S,
        higher=False,
        needs="2 CPU cores",
    ),
    dict(
        id="gpu_fast_path",
        target="fast path / fp32 eager, slowest-gaining network (x)",
        required=2.5,
        higher=True,
        needs="a GPU",
    ),
    dict(
        id="gpu_schedule_h",
        target="five networks x 400,000 iterations (h)",
        required=SCHEDULE_TARGET_H,
        higher=False,
        needs="a GPU",
    ),
    dict(
        id="gpu_loader",
        target="DataLoader windows / windows the fastest step consumes (x)",
        required=5,
        higher=True,
        needs="a GPU",
    ),
)


def target_rows(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """The speed targets that ``rows`` can speak to, each as a ``"targets"`` row with ``met``.

    * cache windows ≥ 100 × the ``.nii.gz`` path (``data``, 4 × 512 × 512 windows only);
    * cache ≥ 1,000 windows per CPU-second on one core (``data``; int64 and uint8 label);
    * ``reproduce --preset smoke`` ≤ 600 s (``smoke``);
    * on CUDA at the paper's size: autocast + channels-last (+ compile) ≥ 2.5 × fp32 eager, for the
      network where it is smallest (``step``); the five-model schedule ≤ 12 h (``schedule``); the
      fastest DataLoader ≥ 5 × the windows per second the fastest step consumes (``data_loader`` and
      ``step``, same device).

    Each row carries the target's ``id`` from :data:`TARGETS` (the gpu_fast_path row also names the
    ``network``). A target whose inputs are missing is left out; nothing is inferred.
    """
    out: list[dict] = []

    spec = {t["id"]: t for t in TARGETS}

    def add(target_id: str, measured: float | None, src: dict, **extra: Any) -> None:
        if measured is None:
            return
        t = spec[target_id]
        met = measured >= t["required"] if t["higher"] else measured <= t["required"]
        out.append(
            {
                "benchmark": "targets",
                "id": target_id,
                "target": t["target"],
                **extra,
                "measured": _sig(measured),
                "required": t["required"],
                "met": met,
                **{k: src.get(k) for k in PROVENANCE_KEYS},
            }
        )

    by = {}
    for r in rows:
        by.setdefault(r.get("benchmark"), []).append(r)
    paper_window = f"{PAPER_SLICES}x{PAPER_SIZE}x{PAPER_SIZE}"
    for r in by.get("data", []):
        if r.get("window") == paper_window:  # the targets are about the paper's 4 x 512 x 512 windows
            add("cache_vs_nifti", r.get("cache_vs_nifti"), r)
            add("cache_per_cpu_s", r.get("cache_windows_per_cpu_s"), r)
            add("cache_per_cpu_s_uint8", r.get("cache_windows_per_cpu_s_uint8"), r)
    for r in by.get("smoke", []):
        if r.get("ok"):
            add("smoke_s", r.get("wall_s"), r)
    paper_input = f"{PAPER_BATCH}x1x{PAPER_SLICES}x{PAPER_SIZE}x{PAPER_SIZE}"
    gpu_steps = [
        r
        for r in by.get("step", [])
        if r.get("it_per_s")
        and r.get("input") == paper_input
        and not str(r.get("device", "")).startswith("CPU")
    ]
    if gpu_steps:
        fastest: dict[str, float] = {}
        for r in gpu_steps:
            if r["mode"] != "fp32" and r.get("speedup_vs_fp32"):
                fastest[r["variant"]] = max(fastest.get(r["variant"], 0.0), r["speedup_vs_fp32"])
        if fastest:
            worst = min(fastest, key=fastest.get)
            add("gpu_fast_path", fastest[worst], gpu_steps[0], network=worst)
        for s in by.get("schedule", []):
            if s.get("at_paper_size") and s.get("device") == gpu_steps[0].get("device"):
                add("gpu_schedule_h", s.get("five_model_hours_best"), s)
        loaders = [
            r
            for r in by.get("data_loader", [])
            if r.get("device") == gpu_steps[0].get("device") and r.get("batch") == paper_input
        ]
        if loaders:
            need = max(r["it_per_s"] for r in gpu_steps) * PAPER_BATCH
            add("gpu_loader", max(r["windows_per_s"] for r in loaders) / need, loaders[0])
    return out


def make_report(rows: Sequence[dict], device: str | None = None, note: str | None = None) -> dict[str, Any]:
    """The JSON document ``kitsmsan bench --json`` writes (read by the book's Performance page).

    Args:
        rows: benchmark rows (``"targets"`` rows are recomputed, old ones dropped).
        device: the device measured on (for the header); default CUDA if available.
        note: a sentence on the conditions of the run (machine load, threads), shown above the
            tables; default None (no note).

    Returns:
        ``{"device", "torch", "cuda", "commit", "python", "date", "host_cpus", "threads", ["note",]
        "results": [rows..., targets...]}``. ``threads`` is the torch thread count of the process that
        writes the report (torch's default unless changed), not that of each row: a row measured on
        other threads (``bench --threads``) records its own.
    """
    env = environment(device)
    rows = [dict(r) for r in rows if r.get("benchmark") != "targets"]
    return {
        "device": env["device"],
        "torch": env["torch"],
        "cuda": env["cuda"],
        "commit": commit(),
        "python": env["python"],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        **({"note": note} if note else {}),
        "results": rows + target_rows(rows),
    }


def merge_reports(
    paths: Sequence[str | Path], device: str | None = None, note: str | None = None
) -> dict[str, Any]:
    """One report from several (e.g. the stages of ``scripts/gpu_bench.sh``).

    Results are concatenated in order; ``"schedule"`` rows are kept as measured; a ``skipped``
    smoke row is dropped when a measured one is present (so a smoke run can be merged into a report
    made without it); targets are recomputed over the merged rows. The header is taken from the
    first report; ``note`` (default None) replaces its note.

    Raises:
        ConfigError: a file that is missing or not a report, naming it.
    """
    rows: list[dict] = []
    header: dict | None = None
    for path in paths:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: benchmark report not found") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not a readable JSON report ({exc})") from None
        if isinstance(data, list):
            data = {"results": data}
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise ConfigError(f"{path}: not a kitsmsan bench report (no 'results' list)")
        header = header or {k: v for k, v in data.items() if k != "results"}
        rows += [r for r in data["results"] if isinstance(r, dict) and r.get("benchmark") != "targets"]
    if not paths:
        raise ConfigError("merge: no reports given")
    if any(r.get("benchmark") == "smoke" and not r.get("skipped") for r in rows):
        rows = [r for r in rows if not (r.get("benchmark") == "smoke" and r.get("skipped"))]
    report = make_report(rows, device, note)
    report.update({k: v for k, v in (header or {}).items() if k != "date" and (k in report or k == "note")})
    if note:
        report["note"] = note
    results = report.pop("results")
    report["results"] = results  # keep the results last, after the header
    return report
