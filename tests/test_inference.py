"""Tests of kitsmsan.inference: windows, overlap averaging, padding/cropping, ensembles, affine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kitsmsan.data.kits19 import load_case, load_label, save_case, save_prediction
from kitsmsan.data.preprocess import normalize
from kitsmsan.errors import ConfigError, DataError
from kitsmsan.inference import predict_case, predict_ensemble_vote, window_starts


class PositionModel(nn.Module):
    """Stand-in whose softmax is [1 - q_d, q_d, ~0] at window position d (input ignored)."""

    def __init__(self, q=(0.1, 0.2, 0.3, 0.4)):
        super().__init__()
        self.register_buffer("q", torch.tensor(q, dtype=torch.float64))

    def forward(self, x):
        b, _, d, h, w = x.shape
        q = self.q[:d].view(1, d, 1, 1)
        logits = torch.stack([torch.log(1 - q), torch.log(q), torch.full_like(q, -60.0)], dim=1)
        return logits.expand(b, 3, d, h, w).to(x.dtype)


class ThresholdModel(nn.Module):
    """Per-voxel 1x1x1 conv: kidney where normalised intensity > 0.5 (HU > 150), tumour never.

    Refuses inputs whose H, W are not multiples of 16 (like the real U-Net)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 3, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.copy_(torch.tensor([0.0, -10.0, -50.0]))
            self.conv.weight[1, 0] = 20.0  # class-1 logit = 20 x - 10

    def forward(self, x):
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"input {tuple(x.shape)}: H, W must be multiples of 16")
        return self.conv(x)


class ConstantModel(nn.Module):
    def __init__(self, label):
        super().__init__()
        self.label = label
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], 3, *x.shape[2:])
        out[:, self.label] = 5.0
        return out + self.dummy


@pytest.mark.parametrize(
    "total,n,stride,expected",
    [
        (9, 4, 2, [0, 2, 4, 5]),
        (8, 4, 2, [0, 2, 4]),
        (4, 4, 2, [0]),
        (9, 4, 4, [0, 4, 5]),
        (6, 4, 1, [0, 1, 2]),
        (5, 4, 3, [0, 1]),
    ],
)
def test_window_starts(total, n, stride, expected):
    assert window_starts(total, n, stride) == expected


def test_overlap_averaging_by_hand():
    # Z = 9, windows start at 0, 2, 4, 5; slice z sees positions d of the covering windows:
    # z0 d0 | z1 d1 | z2 d2,d0 | z3 d3,d1 | z4 d2,d0 | z5 d3,d1,d0 | z6 d2,d1 | z7 d3,d2 | z8 d3
    q = [0.1, 0.2, 0.3, 0.4]
    expected = [0.1, 0.2, 0.2, 0.3, 0.2, 0.7 / 3, 0.25, 0.35, 0.4]
    image = np.zeros((9, 16, 16), np.float32)
    probs = predict_case(PositionModel(q), image, stride=2, batch_size=3, return_probs=True)
    assert probs.shape == (3, 9, 16, 16) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[1, :, 5, 7], expected, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    # stride 4 (no overlap, last window aligned to the end: starts 0, 4, 5)
    probs4 = predict_case(PositionModel(q), image, stride=4, return_probs=True)
    np.testing.assert_allclose(
        probs4[1, :, 0, 0], [0.1, 0.2, 0.3, 0.4, 0.1, 0.3 / 2, 0.5 / 2, 0.7 / 2, 0.4], atol=1e-6
    )


def test_batch_size_does_not_change_result():
    rng = np.random.default_rng(0)
    image = rng.uniform(-300, 600, (7, 20, 18)).astype(np.float32)
    model = ThresholdModel()
    a = predict_case(model, image, batch_size=1, return_probs=True)
    b = predict_case(model, image, batch_size=8, return_probs=True)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_padding_and_cropping_on_a_252_row_case():
    # case_00160 is 252 slices of 512 x 796 (796 is not a multiple of 16); 252 rows test the same padding
    rng = np.random.default_rng(1)
    image = rng.uniform(-400, 700, (6, 252, 512)).astype(np.float32)
    model = ThresholdModel()
    pred = predict_case(model, image, stride=2)
    assert pred.shape == (6, 252, 512) and pred.dtype == np.uint8
    # per-voxel model: the labels must line up with the input voxel for voxel (no shift)
    expected = (normalize(image) > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(pred, expected)
    assert 0.2 < pred.mean() < 0.6  # both classes present


def test_fewer_slices_than_a_window():
    image = np.full((2, 16, 20), 400.0, np.float32)  # HU 400 -> normalised 6/7 > 0.5 -> kidney
    pred = predict_case(ThresholdModel(), image)
    assert pred.shape == (2, 16, 20) and (pred == 1).all()
    probs = predict_case(PositionModel(), np.zeros((3, 16, 16)), return_probs=True)
    np.testing.assert_allclose(probs[1, :, 0, 0], [0.1, 0.2, 0.3], atol=1e-6)


def test_list_of_models_averages_probabilities():
    image = np.zeros((5, 16, 16), np.float32)
    m1, m2 = PositionModel((0.1, 0.1, 0.1, 0.1)), PositionModel((0.5, 0.5, 0.5, 0.5))
    probs = predict_case([m1, m2], image, return_probs=True)
    np.testing.assert_allclose(probs[1], 0.3, atol=1e-6)
    np.testing.assert_allclose(probs[0], 0.7, atol=1e-6)


def test_ensemble_vote_and_mode_restored():
    models = [ConstantModel(c) for c in (2, 0, 1, 1, 2)]  # 4 of 5 say kidney region, 2 tumour -> kidney
    models[0].train()
    models[1].eval()
    image = np.zeros((4, 16, 16), np.float32)
    vote, per_model = predict_ensemble_vote(models, image)
    assert [int(p[0, 0, 0]) for p in per_model] == [2, 0, 1, 1, 2]
    assert (vote == 1).all()
    assert (predict_ensemble_vote(models, image, rule="plurality")[0] == 2).all()  # tie -> higher label
    assert models[0].training and not models[1].training  # modes restored as they were


def test_amp_on_cpu_bfloat16_close_to_fp32():
    rng = np.random.default_rng(2)
    image = rng.uniform(-200, 500, (4, 16, 16)).astype(np.float32)
    a = predict_case(PositionModel(), image, return_probs=True)
    b = predict_case(PositionModel(), image, return_probs=True, amp=torch.bfloat16)
    assert b.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=2e-2)


class WrongShape(nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 3, 2, 16, 16)


@pytest.mark.parametrize(
    "kwargs,image,exc,match",
    [
        ({"stride": 5}, np.zeros((8, 16, 16)), ConfigError, "stride=5"),
        ({"stride": 0}, np.zeros((8, 16, 16)), ConfigError, "stride=0"),
        ({"batch_size": 0}, np.zeros((8, 16, 16)), ConfigError, "batch_size"),
        ({}, np.zeros((16, 16)), DataError, r"\(Z, Y, X\)"),
        ({}, np.full((4, 16, 16), np.nan), DataError, "NaN"),
        ({"amp": "maybe"}, np.zeros((4, 16, 16)), ConfigError, "amp="),
    ],
)
def test_bad_arguments(kwargs, image, exc, match):
    with pytest.raises(exc, match=match):
        predict_case(PositionModel(), image, **kwargs)


def test_bad_model_output_and_models():
    with pytest.raises(DataError, match="model output shape"):
        predict_case(WrongShape(), np.zeros((4, 16, 16)))
    with pytest.raises(ConfigError, match="model_or_models"):
        predict_case([], np.zeros((4, 16, 16)))


def test_prediction_has_source_affine(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.uniform(-300, 600, (5, 20, 24)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    case_dir = save_case(tmp_path / "data", "case_00181", image, label, spacing=(2.5, 0.8, 0.7))
    case = load_case(case_dir)
    pred = predict_case(ThresholdModel(), case.image)
    out = save_prediction(pred, case, tmp_path / "pred" / "prediction_00181.nii.gz")
    loaded, spacing, affine = load_label(out)
    np.testing.assert_array_equal(loaded, pred)
    np.testing.assert_allclose(affine, case.affine)
    assert spacing == pytest.approx((2.5, 0.8, 0.7))


# --------------------------------------------------------------------------------------------
# `kitsmsan predict` with a real (tiny) network saved as a training checkpoint
# --------------------------------------------------------------------------------------------


def _tiny_run(tmp_path):
    from kitsmsan.checkpoint import make_checkpoint, save_checkpoint
    from kitsmsan.models import build_model

    torch.manual_seed(0)
    model = build_model("unet3d", base_channels=4)
    run_dir = tmp_path / "run"
    save_checkpoint(make_checkpoint(model), run_dir / "checkpoints" / "last.pt")
    return run_dir


def test_predict_cli_real_model(tmp_path, capsys):
    from kitsmsan.cli import main
    from kitsmsan.inference import load_model

    rng = np.random.default_rng(4)
    data = tmp_path / "data"
    for n, rows in ((181, 20), (182, 16)):  # 20 rows: padded to 32 and cropped back
        image = rng.uniform(-300, 600, (5, rows, 24)).astype(np.float32)
        save_case(data, f"case_{n:05d}", image, np.zeros(image.shape, np.uint8), spacing=(2.0, 0.9, 0.7))
    run_dir, out = _tiny_run(tmp_path), tmp_path / "pred"
    rc = main(
        [
            "predict",
            "--run",
            str(run_dir),
            "--data",
            str(data),
            "--cases",
            "181-182",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--save-probs",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    case = load_case(data / "case_00181")
    pred, _, affine = load_label(out / "prediction_00181.nii.gz")
    np.testing.assert_allclose(affine, case.affine)
    # best.pt is absent: load_model falls back to last.pt, like the command
    expected = predict_case(load_model(run_dir), case.image, stride=2)
    np.testing.assert_array_equal(pred, expected)
    probs = np.load(out / "probs_00181.npy")
    assert probs.shape == (3, 5, 20, 24) and probs.dtype == np.float16
    assert (out / "prediction_00182.nii.gz").is_file() and (out / "predict.json").is_file()


def test_predict_cli_errors(tmp_path, capsys):
    from kitsmsan.cli import main

    data = tmp_path / "data"
    save_case(
        data,
        "case_00181",
        np.zeros((4, 16, 16), np.float32),
        np.zeros((4, 16, 16), np.uint8),
        spacing=(1.0, 1.0, 1.0),
    )
    base = ["predict", "--data", str(data), "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(base + ["--run", str(tmp_path / "norun"), "--cases", "181"]) == 2
    assert "norun" in capsys.readouterr().err
    assert main(base + ["--run", str(tmp_path / "norun"), "--cases", "181-183"]) == 2
    assert "case_00182, case_00183" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
