"""The smoke benchmark: wall time of ``kitsmsan reproduce --preset smoke`` from scratch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from kitsmsan.bench.common import _emit, _sig, provenance
from kitsmsan.errors import ConfigError

SMOKE_TARGET_S = 600.0


# ------------------------------------------------------------------------------------ smoke
def bench_smoke(
    *,
    run: bool = True,
    out: str | Path | None = None,
    timeout_s: float = 3600.0,
    extra_args: Sequence[str] = (),
    command: Sequence[str] | None = None,
    verbose: bool = True,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict[str, Any]]:
    """Wall time of ``kitsmsan reproduce --preset smoke`` from scratch (target: ≤ 10 min on
    2 CPU cores), run as a subprocess so that its imports, data generation and five trainings count.

    Args:
        run: False gives a ``skipped`` row without running anything (it takes minutes). Default True.
        out: output folder of the reproduction; must be new or empty (an existing run would be
            resumed, timing nothing). Default None: a temporary folder, removed afterwards.
        timeout_s: stop the run after this many seconds, default 3600.
        extra_args: more arguments for ``reproduce`` (e.g. ``["--variants", "unet3d"]``).
        command: the whole command line instead (tests); default
            ``[python, -m, kitsmsan, reproduce, --preset, smoke, --out, OUT, --no-progress, *extra_args]``.
        verbose: print the row, default True.
        on_row: called with the row.

    Returns:
        One ``"smoke"`` row: ``wall_s``, ``returncode``, ``ok``, ``target_s`` (600) and
        ``within_target``; ``error`` (the last line of stderr) on failure; or ``skipped: True``.

    Raises:
        ConfigError: ``out`` exists and is not empty.
    """
    prov = provenance("cpu")
    rows: list[dict] = []
    if not run:
        return [
            _emit(
                rows,
                {"benchmark": "smoke", "skipped": True, "wall_s": None, "target_s": SMOKE_TARGET_S, **prov},
                on_row,
                verbose,
            )
        ]
    if out is not None and Path(out).exists() and any(Path(out).iterdir()):
        raise ConfigError(f"--smoke-out {out}: not empty; reproduce would resume it and time nothing")
    tmp = Path(tempfile.mkdtemp(prefix="kitsmsan-smoke-")) if out is None else Path(out)
    cmd = (
        list(command)
        if command is not None
        else [
            sys.executable,
            "-m",
            "kitsmsan",
            "reproduce",
            "--preset",
            "smoke",
            "--out",
            str(tmp / "reproduce"),
            "--no-progress",
            *extra_args,
        ]
    )
    try:
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            rc, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc = None
            err = f"stopped after {timeout_s:g} s\n"
            if exc.stderr:
                err = (
                    exc.stderr if isinstance(exc.stderr, str) else exc.stderr.decode(errors="replace")
                ) + err
        wall = time.perf_counter() - t0
    finally:
        if out is None:
            shutil.rmtree(tmp, ignore_errors=True)
    row = {
        "benchmark": "smoke",
        "command": " ".join(["kitsmsan", *cmd[3:]]) if command is None else " ".join(cmd),
        "wall_s": _sig(wall),
        "returncode": rc,
        "ok": rc == 0,
        "target_s": SMOKE_TARGET_S,
        "within_target": rc == 0 and wall <= SMOKE_TARGET_S,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg": round(os.getloadavg()[0], 2),
    }
    if rc != 0:
        lines = [ln for ln in (err or "").strip().splitlines() if ln.strip()]
        row["error"] = lines[-1][:300] if lines else f"exit status {rc}"
    row.update(prov)
    return [_emit(rows, row, on_row, verbose)]
