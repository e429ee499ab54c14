"""Tests of kitsmsan.bench: the benchmark functions run and report (no timing asserts)."""

from __future__ import annotations

import json

import pytest

from kitsmsan.bench import BENCHMARKS, bench_data, format_table
from kitsmsan.cli import main as cli_main


def test_bench_data_small(tmp_path):
    res = bench_data(size=32, num_slices=12, num_windows=20, num_nifti_windows=2, work_dir=tmp_path,
                     verbose=False)
    assert res["benchmark"] == "data" and res["case"].endswith("12x32x32")
    for key in ("cache_windows_per_s", "nifti_windows_per_s", "speedup"):
        assert res[key] > 0
    assert res["prepare_s"] >= 0 and res["threads"] == 1
    assert (tmp_path / "cache" / "index.json").is_file()


def test_format_table():
    text = format_table([{"benchmark": "data", "speedup": 120.5, "threads": 1}])
    assert text.splitlines() == ["== bench data ==", "speedup  120.5", "threads  1"]


def test_cli_bench_not_implemented(capsys):
    if "step" in BENCHMARKS and BENCHMARKS["step"].__name__ != "run":
        pytest.skip("bench step is implemented now")
    assert cli_main(["bench", "step"]) == 2
    assert "not implemented yet" in capsys.readouterr().err


def test_cli_bench_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(BENCHMARKS, "data", lambda verbose=False: {"benchmark": "data", "speedup": 2.0})
    out = tmp_path / "b.json"
    assert cli_main(["bench", "data", "--json", str(out)]) == 0
    assert json.loads(out.read_text()) == [{"benchmark": "data", "speedup": 2.0}]
    assert "speedup" in capsys.readouterr().out
