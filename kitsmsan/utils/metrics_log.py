"""The metrics log of a run folder, ``metrics.jsonl``: one JSON object per line, appended by training.

One reader for every consumer (training's resume, the plots, the notebooks). A process killed while
appending leaves a *torn last line* (no newline at its end): that line is skipped. Any other line that
is not a JSON object is damage, and reading it raises an error naming the file and the line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kitsmsan.errors import DataError

#: the file name inside a run folder
METRICS_FILE = "metrics.jsonl"
#: the key of every row that counts optimizer steps (the x axis of the training curves)
ITERATION_KEY = "iteration"


def metrics_path(path: str | os.PathLike) -> Path:
    """``path/metrics.jsonl`` for a run folder, else ``path`` itself."""
    path = Path(path)
    return path / METRICS_FILE if path.is_dir() else path


def read_metrics(path: str | os.PathLike, *, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl``, in order (blank lines skipped).

    Args:
        path: the run folder or the ``metrics.jsonl`` file.
        missing_ok: return ``[]`` for a missing file (default False: raise).

    Returns:
        One dict per line; a torn last line (no trailing newline, not valid JSON) is left out.

    Raises:
        DataError: the file is missing (unless ``missing_ok``), or a line other than a torn last one is
            not a JSON object (naming the file and the line number).
    """
    path = metrics_path(path)
    if not path.is_file():
        if missing_ok:
            return []
        raise DataError(f"{path}: metrics file not found (train the run first)")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")  # the last item is "" when the file ends with a newline
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if n == len(lines):  # no newline after it: the write was cut short
                break
            raise DataError(f"{path}: line {n} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {n} is not a JSON object")
        rows.append(row)
    return rows


__all__ = ["ITERATION_KEY", "METRICS_FILE", "metrics_path", "read_metrics"]
