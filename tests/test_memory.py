"""Counted GPU memory and projected time (kitsmsan.bench.memory): small sizes, hand-checkable bounds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from kitsmsan.bench import memory
from kitsmsan.bench.memory import (
    CONTEXT_GIB,
    GIB,
    GPUS,
    MARGIN_FRACTION,
    affine_fit,
    amp_precision,
    count_peak_memory,
    cuda_training_peak,
    fit_rows,
    gpu_key,
    inference_memory,
    largest_that_fits,
    memory_markdown,
    projected_hours,
    required_gib,
    time_rows,
    training_memory,
)
from kitsmsan.errors import ConfigError
from kitsmsan.models import build_model, count_parameters
from kitsmsan.train import step as train_step_module
from kitsmsan.utils.amp import mixed_precision_dtype

SMALL = dict(size=32, base_channels=4)


def _adam_setup(make_model, x_shape):
    def setup():
        model = make_model()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.rand(x_shape)

        def step():
            opt.zero_grad(set_to_none=True)
            model(x).float().sum().backward()
            opt.step()

        return step, (model, opt)

    return setup


def test_hand_checkable_lower_bound_parameters_grads_adam():
    """A 1x1x1 convolution: the peak holds at least parameters + gradients + Adam's two moments."""
    setup = _adam_setup(lambda: nn.Conv3d(1, 2, 1), (1, 1, 4, 8, 8))
    counted = count_peak_memory(setup)
    numel = 2 + 2  # weight (2, 1, 1, 1, 1) and bias (2,)
    assert counted["parameters"] == 4 * numel
    assert counted["optimizer"] >= 2 * 4 * numel  # exp_avg, exp_avg_sq (+ step counters)
    assert counted["total"] >= 4 * 4 * numel
    # second iteration: the float32 output (1, 2, 4, 8, 8) lives beside the parameters and Adam's
    # moments (the gradients were set to None); exact apart from Adam's step counters and the loss
    output = 2 * 4 * 8 * 8 * 4
    assert 3 * 4 * numel + output <= counted["total"] <= 3 * 4 * numel + output + 64


def test_network_lower_bound_and_parameter_bytes():
    row = training_memory("unet3d", **SMALL)
    with torch.device("meta"):
        numel = count_parameters(build_model("unet3d", base_channels=4))
    assert row["parameters"] == numel
    assert row["parameters_gib"] == pytest.approx(4 * numel / GIB, abs=1e-3)
    assert row["counted_bytes"] >= 16 * numel  # params + grads + two Adam moments, all fp32


def test_fp32_needs_more_than_autocast_and_bf16_equals_fp16():
    fp32 = training_memory("msan_v2_ds", precision="fp32", **SMALL)["counted_bytes"]
    bf16 = training_memory("msan_v2_ds", precision="bf16", **SMALL)["counted_bytes"]
    fp16 = training_memory("msan_v2_ds", precision="fp16", **SMALL)["counted_bytes"]
    assert fp32 > bf16
    assert bf16 == fp16  # same element size


def test_peak_grows_with_batch_and_is_affine():
    peaks = [training_memory("msan_v1", batch_size=b, **SMALL)["counted_bytes"] for b in (1, 2, 4)]
    assert peaks[0] < peaks[1] < peaks[2]
    _a, slope, resid = affine_fit([1, 2, 4], peaks)
    assert slope > 0 and resid < 0.05


def test_deep_supervision_and_res2net_cost_memory():
    v1 = training_memory("msan_v1", **SMALL)["counted_bytes"]
    v2 = training_memory("msan_v2", **SMALL)["counted_bytes"]
    assert v2 > v1


def test_the_counted_step_is_the_training_step(monkeypatch):
    """The count runs the training loop's own train_step with the loss build_loss makes (no copy)."""
    assert memory.train_step is train_step_module.train_step
    assert memory.build_loss is train_step_module.build_loss
    seen = []

    def build_loss(config, model):
        loss = train_step_module.build_loss(config, model)
        seen.append((type(loss).__name__, config.dice_include_background, config.ds_weights))
        return loss

    monkeypatch.setattr(memory, "build_loss", build_loss)
    monkeypatch.setattr(
        memory, "train_step", lambda *a, **k: seen.append(k) or train_step_module.train_step(*a, **k)
    )
    training_memory(
        "msan_v1_ds", precision="bf16", dice_include_background=False, ds_weights=(1, 0, 0), **SMALL
    )
    assert seen == [
        ("DeepSupervisionLoss", False, [1, 0, 0]),
        {"amp_dtype": torch.bfloat16},
        {"amp_dtype": torch.bfloat16},
    ]


def test_margin_rule():
    assert required_gib(0) == CONTEXT_GIB
    assert required_gib(10 * GIB) == pytest.approx(10 * (1 + MARGIN_FRACTION) + CONTEXT_GIB)
    assert MARGIN_FRACTION == 0.20 and CONTEXT_GIB == 0.5


def test_largest_that_fits_hand_computed():
    # budget for 12.5 GiB usable: (12.5 - 0.5) / 1.2 = 10 GiB; 1 GiB fixed + 2 GiB per sample -> 4
    assert largest_that_fits(1 * GIB, 2 * GIB, 12.5) == 4
    assert largest_that_fits(11 * GIB, 2 * GIB, 12.5) == 0
    a, b, r = affine_fit([1, 2, 4], [3.0, 5.0, 9.0])
    assert (a, b) == pytest.approx((1.0, 2.0)) and r == pytest.approx(0.0)


def test_fit_rows_small():
    rows = fit_rows(["unet3d"], gpus=["T4", "A100 80GB"], batches=(1, 2, 4), base_channels=4)
    fits = [r for r in rows if r["benchmark"] == "fit"]
    assert {(r["gpu"], r["precision"]) for r in fits} == {
        ("T4", "fp32"),
        ("T4", "fp16"),
        ("A100 80GB", "fp32"),
        ("A100 80GB", "bf16"),
    }
    t4 = {r["precision"]: r for r in fits if r["gpu"] == "T4"}
    assert t4["fp16"]["max_batch"] > t4["fp32"]["max_batch"] >= 2
    assert all(r["fits"] for r in fits)
    confirmed = [r for r in fits if "confirmed_gib" in r]
    assert confirmed and all(r["confirmed_fits"] for r in confirmed)


def test_amp_precision_follows_the_amp_rule(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None)
    for gpu, spec in GPUS.items():
        cap = (int(spec["capability"]), round(spec["capability"] % 1 * 10))
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, cap=cap: cap)
        want = {torch.bfloat16: "bf16", torch.float16: "fp16"}[mixed_precision_dtype("cuda")]
        assert amp_precision(gpu) == want == spec["amp"], gpu
    assert amp_precision("T4") == "fp16"


@pytest.mark.parametrize(
    "name, key",
    [
        ("Tesla T4", "T4"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB"),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB"),
        ("NVIDIA H100 80GB HBM3", "H100 80GB"),
        ("NVIDIA H200", None),
        ("CPU (2 cores)", None),
    ],
)
def test_gpu_key(name, key):
    assert gpu_key(name) == key


def test_projected_hours_hand_computed_and_measured_rows_replace_estimates():
    # 65e12 FLOP/s x 0.5 = 32.5e12 FLOP/s; 1,000 iterations of 117e12 FLOPs -> 3600 s = 1 h
    assert projected_hours(117e12, "T4", num_iters=1000, efficiency=0.5) == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        projected_hours(1e12, "T4", efficiency=0)
    flops = {"unet3d": 6e12, "msan_v1": 6e12}
    measured = [
        {
            "benchmark": "step",
            "variant": "unet3d",
            "mode": "amp",
            "it_per_s": 2.0,
            "input": "2x1x4x512x512",
            "device": "NVIDIA A100-SXM4-80GB",
            "commit": "abc",
        },
        {
            "benchmark": "step",
            "variant": "unet3d",
            "mode": "fp32",
            "it_per_s": 1.0,
            "input": "2x1x4x512x512",
            "device": "NVIDIA A100-SXM4-80GB",
            "commit": "abc",
        },
        {
            "benchmark": "step",
            "variant": "unet3d",
            "mode": "amp",
            "it_per_s": 50.0,
            "input": "2x1x4x128x128",
            "device": "NVIDIA A100-SXM4-80GB",
            "commit": "abc",
        },
    ]
    rows = {r["gpu"]: r for r in time_rows(flops, num_iters=3600, measured=measured)}
    a100 = rows["A100 80GB"]
    assert a100["hours_unet3d"] == pytest.approx(0.5)  # fastest paper-size mode: 3600 / 2 / 3600
    assert a100["measured"]["unet3d"]["commit"] == "abc" and "unet3d" in a100["measured"]
    assert a100["source"] == "estimate/measured"
    assert rows["T4"]["source"] == "estimate"
    estimate = projected_hours(6e12, "A100 80GB", num_iters=3600)
    assert a100["hours_msan_v1"] == pytest.approx(estimate, rel=1e-2)
    assert a100["hours_schedule"] == pytest.approx(a100["hours_unet3d"] + a100["hours_msan_v1"], rel=1e-2)


def test_inference_memory_does_not_depend_on_case_length():
    short = inference_memory("unet3d", num_slices_case=40, **SMALL)
    long = inference_memory("unet3d", num_slices_case=300, **SMALL)
    assert short["counted_bytes"] == long["counted_bytes"]
    assert long["host_gib"] > short["host_gib"]
    # host arrays of predict_case: 3 float32 volumes + float32 (3, Z, Y, X) + int64 argmax = 32 B/voxel
    assert long["host_gib"] == pytest.approx(32 * 300 * 32 * 32 / GIB, abs=2e-3)


def test_bad_arguments_name_themselves():
    with pytest.raises(ConfigError, match="precision"):
        training_memory("unet3d", precision="int8", **SMALL)
    with pytest.raises(ConfigError, match="size"):
        training_memory("unet3d", size=40, base_channels=4)
    with pytest.raises(ConfigError, match="gpu"):
        fit_rows(["unet3d"], gpus=["V100"])


def test_cuda_peak_only_on_cuda():
    out = cuda_training_peak("unet3d", **SMALL)
    if not torch.cuda.is_available():
        assert out is None
    else:
        assert out["cuda_max_allocated_gib"] > 0


def test_cli_writes_a_report(tmp_path):
    out = tmp_path / "memory.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kitsmsan",
            "bench",
            "memory",
            "--variants",
            "unet3d",
            "--precisions",
            "fp32,bf16",
            "--counts-only",
            "--base-channels",
            "4",
            "--measured",
            "--json",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    kinds = [(r["benchmark"], r.get("kind"), r.get("precision")) for r in report["results"]]
    assert ("memory", "train", "fp32") in kinds and ("memory", "train", "bf16") in kinds
    assert ("memory", "inference", "bf16") in kinds
    assert not [r for r in report["results"] if r["benchmark"] in ("time", "fit")]  # --counts-only
    assert set(report["flops_per_iter"]) == {"unet3d"}
    assert report["margin"]["fraction"] == memory.MARGIN_FRACTION and report["torch"] == torch.__version__


def test_markdown_tables_merge_gpu_measurements():
    paper = "2x1x4x512x512"
    report = {
        "torch": "x",
        "commit": "c0ffee",
        "counted_on": "CPU",
        "date": "2026-12-01",
        "efficiency": 0.3,
        "margin": {"fraction": 0.2, "context_gib": 0.5},
        "flops_per_iter": {"unet3d": 6.0e12},
        "results": [
            {
                "benchmark": "memory",
                "kind": "train",
                "variant": "unet3d",
                "precision": "fp32",
                "input": paper,
                "counted_gib": 6.4,
                "activations_gib": 5.1,
                "parameters_gib": 0.08,
                "optimizer_gib": 0.16,
                "required_gib": 8.18,
            },
            {
                "benchmark": "fit",
                "gpu": "T4",
                "variant": "unet3d",
                "precision": "fp16",
                "fits": False,
                "max_batch": 1,
                "max_crop": 384,
                "usable_gib": 14.7,
            },
        ],
    }
    measured = [
        {
            "benchmark": "memory",
            "kind": "train",
            "variant": "unet3d",
            "precision": "fp32",
            "input": paper,
            "cuda_max_allocated_gib": 6.9,
            "cuda_device": "NVIDIA H100 80GB HBM3",
        },
        {
            "benchmark": "step",
            "variant": "unet3d",
            "mode": "amp",
            "it_per_s": 4.0,
            "input": paper,
            "device": "NVIDIA H100 80GB HBM3",
            "commit": "beef",
        },
    ]
    md = memory_markdown(report, measured, colab_iters=40_000)
    assert "6.90 (NVIDIA H100 80GB HBM3)" in md["memory"] and "c0ffee" in md["memory"]
    assert "**no**: batch 1, or crop 384² at batch 2" in md["fit"]
    h100 = next(line for line in md["time"].splitlines() if line.startswith("| H100"))
    assert "27.8 (measured)" in h100  # 400,000 / 4 it/s / 3600
    t4 = next(line for line in md["time"].splitlines() if line.startswith("| T4"))
    assert "measured" not in t4 and "Estimates" in md["time"]
    assert "pending" not in md["memory"]
    assert memory_markdown({**report, "results": []})["fit"].startswith("The fit search was not run")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_counted_step_also_runs_for_real(precision):
    """The step :func:`cuda_training_peak` runs on a GPU, run for real on the CPU at a tiny size."""
    torch.manual_seed(0)
    step, (model, _opt) = memory._train_setup(
        "msan_v1_ds", 1, 4, 32, memory._DTYPES[precision], {"base_channels": 4}, True, None, grad_scaler=True
    )()
    before = [p.detach().clone() for p in model.parameters()]
    loss = step()
    assert torch.isfinite(loss) and 0 <= loss.item() <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # Adam stepped


@pytest.mark.parametrize(
    "args, words",
    [
        (["--precisions", "int8"], "precision='int8'"),
        (["--measured", "/nonexistent/bench_gpu.json"], "/nonexistent/bench_gpu.json"),
        (["--variants", "nope"], "model 'nope'"),
    ],
)
def test_cli_bad_input_one_line(args, words):
    proc = subprocess.run(
        [sys.executable, "-m", "kitsmsan", "bench", "memory", "--counts-only", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0]


def test_fit_rows_solve_a_crop_where_the_paper_step_does_not_fit(monkeypatch):
    small = training_memory("unet3d", base_channels=4)  # the paper's step at width 4
    usable = round(small["required_gib"] * 0.6, 3)  # a card with 60 % of what that step needs
    monkeypatch.setitem(GPUS, "Tiny", dict(GPUS["T4"], usable_gib=usable))
    fits = [r for r in fit_rows(["unet3d"], gpus=["Tiny"], base_channels=4) if r["benchmark"] == "fit"]
    fp32 = next(r for r in fits if r["precision"] == "fp32")
    assert not fp32["fits"] and fp32["max_batch"] <= 1
    assert 16 <= fp32["max_crop"] < 512 and fp32["max_crop"] % 16 == 0
    assert fp32["confirmed_crop_fits"] and fp32["confirmed_crop_gib"] <= usable
    bigger = training_memory("unet3d", base_channels=4, size=fp32["max_crop"] + 16)
    assert required_gib(bigger["counted_bytes"]) > usable  # the next crop up would not fit
