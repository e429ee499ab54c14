"""Provenance of a result: commit, versions, hardware. Written next to every run and table."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy
import torch

from kitsmsan import __version__


def git_commit(cwd: str | Path | None = None) -> str:
    """The current commit (``abc1234`` or ``abc1234-dirty``), or ``"unknown"`` outside a checkout."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: str | None = None) -> str:
    """A human name of the device: the GPU model, or the CPU with its core count."""
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    return f"CPU {cpu} ({os.cpu_count()} cores, {threads} thread{'' if threads == 1 else 's'})"


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions and hardware, for run folders and result tables."""
    return {
        "kitsmsan": __version__,
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "device": device_name(device),
        "platform": platform.platform(),
    }
