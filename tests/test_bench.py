"""Tests of kitsmsan.bench: every benchmark runs at a tiny size and reports well-formed rows whose
ratios are computed from the measured numbers. No timing asserts (speeds go in `kitsmsan bench`).

Step and inference run on one torch thread: on the shared 2-core machine two OpenMP threads that
wait for each other made a 32-pixel step 10-100x slower."""

from __future__ import annotations

import json
import sys

import pytest

import kitsmsan.bench.data
from kitsmsan.bench import (
    BENCHMARKS,
    PROVENANCE_KEYS,
    TARGETS,
    bench_data,
    bench_inference,
    bench_smoke,
    bench_step,
    format_table,
    make_report,
    merge_reports,
    schedule_budget,
    schedule_row,
    target_rows,
)
from kitsmsan.cli import main as cli_main
from kitsmsan.commands.bench import run_child, time_step_isolated
from kitsmsan.errors import ConfigError
from kitsmsan.models import build_model, count_flops, count_train_flops

H100 = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "commit": "abc1234"}
PAPER_INPUT = "2x1x4x512x512"


def _close(a: float, b: float, rel: float = 2e-3) -> bool:
    """Equal up to the 4-significant-digit rounding of the reported numbers."""
    return abs(a - b) <= rel * max(abs(a), abs(b))


def _has_provenance(row: dict) -> bool:
    return all(isinstance(row.get(k), str) and row[k] for k in PROVENANCE_KEYS)


def test_bench_data_small(tmp_path):
    rows = bench_data(
        size=32,
        num_slices=12,
        num_windows=20,
        num_nifti_windows=2,
        workers=(0, 1),
        loader_batches=2,
        work_dir=tmp_path,
        verbose=False,
    )
    data, loaders = rows[0], rows[1:]
    assert data["benchmark"] == "data" and data["case"].endswith("12x32x32") and data["window"] == "4x32x32"
    for key in (
        "cache_windows_per_s",
        "nifti_windows_per_s",
        "cache_windows_per_s_uint8",
        "cache_windows_per_cpu_s",
        "nifti_windows_per_cpu_s",
    ):
        assert data[key] > 0
    # the ratio is the quotient of the two measured rates
    assert _close(data["cache_vs_nifti"], data["cache_windows_per_s"] / data["nifti_windows_per_s"])
    assert data["threads"] == 1 and data["prepare_s"] >= 0 and _has_provenance(data)
    assert [r["workers"] for r in loaders] == [0, 1]
    for r in loaders:
        assert r["benchmark"] == "data_loader" and r["batch"] == "2x1x4x32x32" and _has_provenance(r)
        assert _close(r["windows_per_s"], 2 * r["batches_per_s"])
    assert (tmp_path / "cache" / "index.json").is_file()


def test_bench_data_without_nifti_and_bad_args(tmp_path):
    rows = bench_data(
        size=32,
        num_slices=8,
        num_windows=5,
        workers=(),
        nifti=False,
        work_dir=tmp_path,
        source="synthetic",
        verbose=False,
    )
    assert len(rows) == 1 and "cache_vs_nifti" not in rows[0] and rows[0]["case"].startswith("synthetic")
    with pytest.raises(ConfigError, match="num_windows"):
        bench_data(num_windows=0, verbose=False)
    with pytest.raises(ConfigError, match="source"):
        bench_data(size=32, num_slices=8, source="mri", work_dir=tmp_path / "x", verbose=False)


def test_bench_step_small():
    seen = []
    rows = bench_step(
        variants="msan_v1_ds",
        size=32,
        base_channels=4,
        iters=1,
        warmup=0,
        device="cpu",
        threads=1,
        budget=False,
        verbose=False,
        on_row=seen.append,
    )
    assert seen == rows  # every row was handed out as soon as it was measured
    steps, sched = rows[:-1], rows[-1]
    train_flops = count_train_flops(build_model("msan_v1_ds", base_channels=4), (2, 1, 4, 32, 32))
    assert [(r["variant"], r["mode"]) for r in steps] == [
        ("msan_v1_ds", m) for m in ("fp32", "cl", "amp", "amp+cl")
    ]
    fp32 = {r["variant"]: r["it_per_s"] for r in steps if r["mode"] == "fp32"}
    for r in steps:
        assert "error" not in r and r["loss_finite"] and _has_provenance(r)
        assert r["input"] == "2x1x4x32x32" and r["base_channels"] == 4
        assert r["deep_supervision"] == r["variant"].endswith("_ds")
        assert r["precision"] == ("bfloat16" if r["mode"].startswith("amp") else "fp32")
        assert r["channels_last"] == r["mode"].endswith("cl") and r["compile"] is False
        assert _close(r["s_per_it"], 1 / r["it_per_s"])
        assert _close(r["speedup_vs_fp32"], r["it_per_s"] / fp32[r["variant"]], 5e-3)
        fp32_cpu = next(x["cpu_s_per_it"] for x in steps if x["mode"] == "fp32")
        assert _close(r["cpu_time_speedup_vs_fp32"], fp32_cpu / r["cpu_s_per_it"], 5e-3)
        assert _close(r["hours_per_run"], 400_000 / r["it_per_s"] / 3600, 5e-3)
        assert _close(r["tflop_per_s"], train_flops * r["it_per_s"] / 1e12, 5e-3)  # counted, not 3 x forward
        assert r["peak_mem_mb"] is None or r["mem_measure"] == "peak RSS - RSS before"
    assert sched["benchmark"] == "schedule" and sched["networks"] == 1 and sched["at_paper_size"] is False
    assert sched["five_model_hours_best"] is None  # four of the five networks unmeasured: no schedule


def test_bench_step_isolated_and_crash_rows():
    # the command's default on CPU: each measurement in its own process (seconds: one fp32 row)
    row = bench_step(
        variants="unet3d",
        modes="fp32",
        size=16,
        base_channels=2,
        iters=1,
        warmup=0,
        device="cpu",
        threads=1,
        budget=False,
        verbose=False,
        measure=time_step_isolated,
    )[0]
    assert row["isolated"] is True and row["it_per_s"] > 0 and "error" not in row and row["loss_finite"]
    # a native crash in the child becomes an exception naming the signal, not the end of the run
    py = [sys.executable, "-c"]
    with pytest.raises(RuntimeError, match="crashed \\(SIGABRT\\)"):
        run_child({}, 60, argv=py + ["import os; os.abort()"])
    with pytest.raises(RuntimeError, match="no valid"):
        run_child({}, 60, argv=py + ["import sys; sys.exit('no valid input')"])
    assert run_child(
        {"a": 2}, 60, argv=py + ["import json, sys; print(json.dumps({'b': json.load(sys.stdin)['a'] * 3}))"]
    ) == {"b": 6}


def test_crashed_cpu_measurement_is_retried_without_amx(monkeypatch):
    import torch

    import kitsmsan.commands.bench as command

    calls = []

    def fake_child(payload, timeout_s, env=None):
        calls.append(env)
        if env is None:
            raise RuntimeError("the process crashed (SIGSEGV) inside a native kernel")
        return {"s_per_it": 0.5}

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(command, "run_child", fake_child)
    res = command.time_step_isolated("unet3d", "amp", torch.device("cpu"), size=16)
    assert calls == [None, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}]
    assert res["s_per_it"] == 0.5 and res["onednn_isa"] == "AVX512_CORE_BF16 (default: SIGSEGV)"


def test_cli_isolates_cpu_steps_by_default(monkeypatch):
    """`kitsmsan bench step` measures in a fresh process on CPU unless --no-isolate; the library does not."""
    import kitsmsan.bench.step as step_module
    import kitsmsan.commands.bench as command

    seen = []
    monkeypatch.setattr(step_module, "bench_step", lambda **kw: seen.append(kw["measure"]) or [])
    args = ["bench", "step", "--device", "cpu", "--variants", "unet3d"]
    assert cli_main(args) == 0 and cli_main(args + ["--no-isolate"]) == 0
    assert seen == [command.time_step_isolated, None]


def test_bench_step_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="modes"):
        bench_step(modes="fp8", device="cpu", verbose=False)
    with pytest.raises(ConfigError, match="variants"):
        bench_step(variants="resnet", device="cpu", verbose=False)
    with pytest.raises(ConfigError, match="size=40"):
        bench_step(size=40, device="cpu", verbose=False)
    with pytest.raises(ConfigError, match="device"):
        bench_step(device="tpu", verbose=False)


def _step(variant, mode, it_per_s, device=H100, inp=PAPER_INPUT, speedup=None):
    return {
        "benchmark": "step",
        "variant": variant,
        "mode": mode,
        "input": inp,
        "base_channels": 32,
        "it_per_s": it_per_s,
        "speedup_vs_fp32": speedup,
        **device,
    }


def test_schedule_row_hand_computed():
    names = ["unet3d", "msan_v1", "msan_v1_ds", "msan_v2", "msan_v2_ds"]
    rows = [_step(v, "fp32", 10.0) for v in names] + [_step(v, "amp+cl", 20.0) for v in names]
    rows[0]["it_per_s"] = 5.0  # unet3d fp32 slower: 400,000 / 5 / 3600 = 22.22 h
    s = schedule_row(rows)
    # fp32: 22.222 + 4 x 11.111 = 66.667 h; best (amp+cl everywhere): 5 x 5.5556 = 27.778 h
    assert s["five_model_hours_fp32"] == pytest.approx(66.67, abs=0.01)
    assert s["five_model_hours_best"] == pytest.approx(27.78, abs=0.01)
    assert s["speedup"] == pytest.approx(2.4, abs=1e-3) and s["at_paper_size"] is True
    assert s["best_modes"].startswith("unet3d: amp+cl") and s["device"] == H100["device"]
    assert schedule_row(rows[:4])["five_model_hours_best"] is None  # incomplete
    assert schedule_row([{"benchmark": "data"}]) is None


def test_target_rows_hand_computed():
    cpu = {"device": "CPU x86_64 (2 cores, 2 threads)", "torch": "2.13.0", "commit": "abc1234"}
    rows = [
        {
            "benchmark": "data",
            "window": "4x512x512",
            "cache_vs_nifti": 150.0,
            "cache_windows_per_cpu_s": 900.0,
            "cache_windows_per_cpu_s_uint8": 1300.0,
            **cpu,
        },
        {"benchmark": "data", "window": "4x64x64", "cache_vs_nifti": 2.0, **cpu},  # not the paper's window
        {"benchmark": "smoke", "ok": True, "wall_s": 480.0, **cpu},
        _step("unet3d", "fp32", 4.0),
        _step("unet3d", "amp+cl", 12.0, speedup=3.0),
        _step("msan_v2", "fp32", 2.0),
        _step("msan_v2", "amp+cl", 4.0, speedup=2.0),
        _step("unet3d", "fp32", 50.0, device=cpu, inp="2x1x4x128x128"),  # CPU, reduced: no GPU target
        {"benchmark": "schedule", "at_paper_size": True, "five_model_hours_best": 20.0, **H100},
        {"benchmark": "data_loader", "batch": PAPER_INPUT, "windows_per_s": 60.0, **H100},
        {"benchmark": "data_loader", "batch": PAPER_INPUT, "windows_per_s": 240.0, **H100},
    ]
    got = {r["target"]: r for r in target_rows(rows)}
    assert len(got) == 7 and {r["id"] for r in got.values()} == {t["id"] for t in TARGETS}
    assert got["cache windows / .nii.gz windows (x)"]["met"] is True
    assert got["cache windows per CPU-second (one core)"]["met"] is False
    assert got["cache windows per CPU-second, uint8 label"]["met"] is True
    assert got["reproduce --preset smoke (s)"]["met"] is True
    fast = got["fast path / fp32 eager, slowest-gaining network (x)"]
    assert fast["measured"] == 2.0 and fast["met"] is False and fast["network"] == "msan_v2"
    assert got["five networks x 400,000 iterations (h)"]["met"] is False
    # best loader 240 windows/s over the fastest step's 12 it/s x batch 2 = 24 windows/s -> 10x
    loader = got["DataLoader windows / windows the fastest step consumes (x)"]
    assert loader["measured"] == 10.0 and loader["met"] is True and loader["device"] == H100["device"]


def test_schedule_budget_is_the_counted_arithmetic():
    one = schedule_budget(variants="unet3d", num_iters=1000, hours=2)
    per_iter = count_train_flops(build_model("unet3d", base_channels=8), (2, 1, 4, 64, 64))
    # counted at the paper's size: convolution FLOPs scale with the voxels (64 x more) and, but for
    # the first layer, with width squared (16 x more): between 16 x 64 / 2 and 16 x 64 of the small count
    tflop = one["tflop_per_iter_unet3d"]
    assert not any(k.startswith("tflop_per_iter_") and k != "tflop_per_iter_unet3d" for k in one)
    assert 512 * per_iter < tflop * 1e12 < 1024 * per_iter
    assert one["input"] == "2x1x4x512x512" and one["device"].startswith("none: counted")
    assert _close(one["schedule_eflop"], tflop * 1e12 * 1000 / 1e18, 1e-3)
    assert _close(one["required_tflop_per_s"], tflop * 1000 / (2 * 3600), 1e-3)
    # backward is counted, not assumed: between 2 x and 3 x the forward count (the first layer needs no
    # input gradient)
    fwd = count_flops(build_model("unet3d"), (2, 1, 4, 512, 512))
    assert 2 * fwd < tflop * 1e12 <= 3 * fwd
    with pytest.raises(ConfigError, match="hours"):
        schedule_budget(variants="unet3d", hours=0)


def test_bench_inference_small():
    rows = bench_inference(
        size=32,
        num_slices=6,
        base_channels=4,
        ensemble=["unet3d", "msan_v1"],
        device="cpu",
        threads=1,
        verbose=False,
    )
    one, vote = rows
    assert one["models"] == 1 and one["variants"] == "msan_v2_ds" and vote["models"] == 2
    for r in rows:
        assert r["benchmark"] == "inference" and r["case"] == "6x32x32" and r["windows"] == 2  # starts 0, 2
        assert r["seconds_per_case"] > 0 and r["amp"] == "off" and _has_provenance(r)
    assert _close(one["windows_per_s"], 2 / one["seconds_per_case"])
    assert _close(vote["vs_single"], vote["seconds_per_case"] / one["seconds_per_case"], 5e-3)
    assert one["postprocess_s"] >= 0


def test_bench_smoke_runs_a_command(tmp_path):
    ok = bench_smoke(command=[sys.executable, "-c", "print('table')"], verbose=False)[0]
    assert ok["ok"] is True and ok["returncode"] == 0 and ok["wall_s"] > 0 and _has_provenance(ok)
    assert ok["within_target"] == (ok["wall_s"] <= 600)
    bad = bench_smoke(
        command=[sys.executable, "-c", "import sys; sys.exit('training diverged')"], verbose=False
    )[0]
    assert bad["ok"] is False and bad["within_target"] is False and bad["error"] == "training diverged"
    slow = bench_smoke(
        command=[sys.executable, "-c", "import time; time.sleep(5)"], timeout_s=0.5, verbose=False
    )[0]
    assert slow["returncode"] is None and "stopped after 0.5 s" in slow["error"]
    skipped = bench_smoke(run=False, verbose=False)[0]
    assert skipped["skipped"] is True and skipped["wall_s"] is None
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "table1.md").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        bench_smoke(out=tmp_path / "old", verbose=False)


def test_format_table():
    text = format_table([{"benchmark": "data", "speedup": 120.5, "threads": 1}])
    assert text.splitlines() == ["== bench data ==", "speedup  120.5", "threads  1"]
    text = format_table(
        [
            {"benchmark": "step", "mode": "fp32", "it_per_s": 2.0, "device": "cpu"},
            {"benchmark": "step", "mode": "amp", "device": "cpu"},
        ],
        skip=("device",),
    )
    assert text.splitlines() == ["== bench step ==", "mode  it_per_s", "fp32  2.0", "amp   -"]


def test_make_report_and_merge(tmp_path):
    rows = [
        {"benchmark": "data", "window": "4x512x512", "cache_vs_nifti": 200.0, **H100},
        {"benchmark": "targets", "target": "stale"},
    ]
    report = make_report(rows, "cpu")
    for key in ("device", "torch", "commit", "python", "date", "threads", "results"):
        assert key in report
    assert [r["benchmark"] for r in report["results"]] == ["data", "targets"]
    assert report["results"][1]["target"].startswith("cache windows")  # recomputed, the stale one dropped
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(report))
    b.write_text(json.dumps([{"benchmark": "smoke", "ok": True, "wall_s": 700.0, **H100}]))
    merged = merge_reports([a, b], "cpu")
    assert [r["benchmark"] for r in merged["results"]] == ["data", "smoke", "targets", "targets"]
    assert "note" not in merged and merge_reports([a], "cpu", note="load 7")["note"] == "load 7"
    skipped = tmp_path / "skipped.json"
    skipped.write_text(json.dumps([{"benchmark": "smoke", "skipped": True, "wall_s": None, **H100}]))
    assert [
        r.get("skipped") for r in merge_reports([skipped, b], "cpu")["results"] if r["benchmark"] == "smoke"
    ] == [None]  # the measured smoke row replaces the skipped one
    assert make_report(rows, "cpu", note="1 thread")["note"] == "1 thread"
    assert merged["results"][-1]["met"] is False  # 700 s > 600 s
    (tmp_path / "c.json").write_text('{"no": "results"}')
    with pytest.raises(ConfigError, match="c.json"):
        merge_reports([tmp_path / "c.json"])
    with pytest.raises(ConfigError, match="not found"):
        merge_reports([tmp_path / "missing.json"])


def test_cli_bench_json(tmp_path, monkeypatch, capsys):
    def fake(verbose=False, on_row=None, **kwargs):
        row = {
            "benchmark": "data",
            "window": "4x512x512",
            "cache_vs_nifti": 2.0,
            "size_seen": kwargs["size"],
            **H100,
        }
        on_row(row)
        return [row]

    assert BENCHMARKS == ("data", "step", "inference", "smoke")
    monkeypatch.setattr(kitsmsan.bench.data, "bench_data", fake)
    out = tmp_path / "b.json"
    assert cli_main(["bench", "data", "--size", "64", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["results"][0]["size_seen"] == 64 and report["results"][0]["cache_vs_nifti"] == 2.0
    assert report["results"][1] == {
        "benchmark": "targets",
        "id": "cache_vs_nifti",
        "target": "cache windows / .nii.gz windows (x)",
        "measured": 2.0,
        "required": 100,
        "met": False,
        **H100,
    }
    assert "cache_vs_nifti" in capsys.readouterr().out
    merged = tmp_path / "m.json"
    assert cli_main(["bench", "merge", "--inputs", str(out), str(out), "--json", str(merged)]) == 0
    assert len(json.loads(merged.read_text())["results"]) == 4  # 2 data rows + their 2 targets


def test_cli_bench_errors(capsys):
    assert cli_main(["bench", "step", "--modes", "fp8"]) == 2
    assert "modes" in capsys.readouterr().err
    assert cli_main(["bench", "merge"]) == 2
    assert "--inputs" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert cli_main(["bench", "inference", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
