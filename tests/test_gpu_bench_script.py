"""scripts/gpu_bench.sh, the one script a GPU session runs (issue #6), dry-run on the CPU at toy sizes.

A device session has 15 minutes in all, so a script that breaks there wastes the only chance of a GPU
row. This runs its plumbing end to end with ``DEVICE=cpu`` (the script's documented dry-run mode):
three stages under their time limits, each writing its JSON, then ``bench merge`` into one report
whose rows name the commit given in ``KITSMSAN_COMMIT``. The numbers are not looked at: it is not a
measurement.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_bench.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils timeout"
)


def test_gpu_bench_script_dry_run_on_cpu(tmp_path):
    out = tmp_path / "out"
    env = dict(
        os.environ,
        OUT=str(out),
        PYTHON=sys.executable,
        DEVICE="cpu",
        KITSMSAN_COMMIT="feedbee",
        OMP_NUM_THREADS="1",
        STEP_LIMIT="240",
        INFER_LIMIT="120",
        DATA_LIMIT="120",
        STEP_ARGS="--variants unet3d --modes fp32 --size 16 --base-channels 2 --iters 1 --warmup 0 --threads 1",
        INFER_ARGS="--size 16 --slices 8 --base-channels 2 --threads 1",
        DATA_ARGS="--size 32 --slices 8 --windows 5 --nifti-windows 1 --loader-batches 2 --workers 0",
        MEM_LIMIT="240",
        MEM_ARGS="--variants unet3d --precisions fp32 --base-channels 2",
    )
    proc = subprocess.run(
        ["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    log = (out / "gpu_bench.log").read_text() if (out / "gpu_bench.log").exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    for stage in ("step", "inference", "data", "memory"):
        assert (out / f"bench_gpu_{stage}.json").is_file(), f"stage {stage} wrote nothing:\n{log}"
    report = json.loads((out / "bench_gpu.json").read_text())
    kinds = {r["benchmark"] for r in report["results"]}
    assert {
        "step",
        "schedule",
        "budget",
        "inference",
        "data",
        "data_loader",
        "memory",
    } <= kinds  # no target: toy sizes
    assert report["commit"] == "feedbee"
    assert all(r["commit"] == "feedbee" for r in report["results"])  # no .git on the device: the env names it
    assert "stopped at its limit" not in log and "failed" not in log


def test_gpu_bench_script_refuses_without_cuda(tmp_path):
    # the default DEVICE=cuda on a machine without a GPU: exit 1 and say so, writing no GPU row
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        ["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert "no CUDA device" in proc.stdout + proc.stderr
    assert not (tmp_path / "bench_gpu.json").exists()
