"""kitsmsan.utils.metrics_log: the one reader of ``metrics.jsonl``. A torn last line (a write cut short:
no newline after it) is skipped; any other line that is not a JSON object raises, naming the file and
the line. Training's resume, ``kitsmsan.train.read_metrics`` and the plots all use it."""

from __future__ import annotations

import json

import pytest

from kitsmsan import train, viz
from kitsmsan.errors import DataError
from kitsmsan.train import loop
from kitsmsan.utils.metrics_log import METRICS_FILE, read_metrics

ROWS = [{"iteration": 5, "loss": 0.5}, {"iteration": 10, "loss": 0.4}]


def _write(folder, text: str):
    (folder / METRICS_FILE).write_text(text, encoding="utf-8")
    return folder


def test_reads_a_run_folder_or_the_file(tmp_path):
    _write(tmp_path, "".join(json.dumps(r) + "\n" for r in ROWS) + "\n")  # a blank line is skipped
    assert read_metrics(tmp_path) == ROWS == read_metrics(tmp_path / METRICS_FILE)


def test_torn_last_line_is_skipped(tmp_path):
    _write(tmp_path, "".join(json.dumps(r) + "\n" for r in ROWS) + '{"iteration": 15, "lo')
    assert read_metrics(tmp_path) == ROWS


@pytest.mark.parametrize(
    "text, line",
    [
        ('{"iteration": 5}\n{"iteration": 1\n{"iteration": 10}\n', 2),  # damage inside the file
        ('{"iteration": 5}\nnot json\n', 2),  # a complete bad last line
        ("[1, 2]\n", 1),  # JSON, but not an object
    ],
)
def test_damage_raises_naming_file_and_line(tmp_path, text, line):
    _write(tmp_path, text)
    with pytest.raises(DataError, match=rf"{METRICS_FILE}: line {line} is not (a )?JSON"):
        read_metrics(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="metrics file not found"):
        read_metrics(tmp_path)
    assert read_metrics(tmp_path, missing_ok=True) == []


def test_one_reader():
    assert train.read_metrics is loop.read_metrics is viz.read_metrics is read_metrics
