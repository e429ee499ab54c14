"""Tests of kitsmsan.metrics: official KiTS19 Dice on hand-computed volumes, tables, Table 1 summary."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from kitsmsan.errors import DataError
from kitsmsan.metrics import (
    dice,
    dice_table,
    evaluate_folder,
    kits_dice,
    summarize,
    table1_markdown,
    write_results,
)


def vol(*rows):
    """A (1, 1, N) label volume from a flat list of labels."""
    return np.array(rows, dtype=np.uint8).reshape(1, 1, -1)


# (pred, gt, expected kidney, tumour, composite), each computed by hand
CASES = [
    # identical volumes -> 1, 1
    (vol(0, 1, 2, 2), vol(0, 1, 2, 2), 1.0, 1.0, 1.0),
    # kidney region pred {1,2,3}, gt {1,2}: 2*2/(3+2) = 0.8; tumour pred {3}, gt {2}: 0
    (vol(0, 1, 1, 2), vol(0, 1, 2, 0), 0.8, 0.0, 0.4),
    # tumour counted as kidney region: pred all tumour, gt all kidney -> kidney 1, tumour 0 (one empty)
    (vol(2, 2), vol(1, 1), 1.0, 0.0, 0.5),
    # no tumour in either -> tumour NaN, composite = kidney only
    (vol(0, 1, 1, 0), vol(0, 1, 0, 0), 2 * 1 / 3, math.nan, 2 * 1 / 3),
    # both completely empty -> all NaN
    (vol(0, 0, 0), vol(0, 0, 0), math.nan, math.nan, math.nan),
    # prediction empty, gt not -> 0 (not NaN)
    (vol(0, 0, 0), vol(0, 1, 2), 0.0, 0.0, 0.0),
    # tumour pred {2,3} gt {3}: 2*1/3; kidney pred {1,2,3} gt {1,2,3}: 1
    (vol(0, 1, 2, 2), vol(0, 1, 1, 2), 1.0, 2 / 3, (1 + 2 / 3) / 2),
]


def close(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


@pytest.mark.parametrize("pred,gt,k,t,c", CASES)
def test_kits_dice_hand_computed(pred, gt, k, t, c):
    got = kits_dice(pred, gt)
    assert set(got) == {"kidney", "tumor", "composite"}
    assert close(got["kidney"], k) and close(got["tumor"], t) and close(got["composite"], c), got


def test_kits_dice_3d_and_symmetry():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, size=(3, 4, 5)).astype(np.uint8)
    b = rng.integers(0, 3, size=(3, 4, 5)).astype(np.int16)
    ab, ba = kits_dice(a, b), kits_dice(b, a)
    assert ab == pytest.approx(ba)
    # reference from the definition, written out differently (sums of products)
    ka, kb = (a > 0).astype(int), (b > 0).astype(int)
    assert ab["kidney"] == pytest.approx(2 * (ka * kb).sum() / (ka.sum() + kb.sum()))


def test_dice_helper_shapes():
    with pytest.raises(DataError, match="shapes differ"):
        dice(np.zeros(3, bool), np.zeros(4, bool))


@pytest.mark.parametrize(
    "pred,gt,match",
    [
        (np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8), "shape"),
        (np.full((2,), 3, np.uint8), np.zeros((2,), np.uint8), "label value 3"),
        (np.zeros((2,), np.uint8), np.full((2,), -1, np.int8), "gt: label value -1"),
        (np.zeros((2,), np.float32), np.zeros((2,), np.uint8), "pred: expected integer"),
        ([0, 1], np.zeros((2,), np.uint8), "numpy array"),
    ],
)
def test_kits_dice_bad_input(pred, gt, match):
    with pytest.raises(DataError, match=match):
        kits_dice(pred, gt)


def test_summarize_reproduces_table1_averaging():
    # Table 1, 3D U-Net: kidney 89.70, tumour 46.90 -> averaged 68.30 (mean of the two means)
    df = dice_table(
        [
            {"case_id": "case_00180", "kidney": 0.90, "tumor": 0.50, "composite": 0.70},
            {"case_id": "case_00181", "kidney": 0.894, "tumor": 0.438, "composite": 0.666},
        ]
    )
    s = summarize(df)
    assert s.loc["all", "kidney"] == pytest.approx(0.8970)
    assert s.loc["all", "tumor"] == pytest.approx(0.4690)
    assert s.loc["all", "averaged"] == pytest.approx(0.6830)
    assert "| all | 89.70 | 46.90 | 68.30 | 2 |" in table1_markdown(s)


def test_averaged_is_the_mean_of_region_means_not_of_case_composites():
    """Case a has no tumour (tumour Dice NaN, composite = its kidney Dice 18/19); case b: kidney 2/3,
    tumour 0. Region means (0.807, 0) give 0.404; the mean of the composites would give 0.640."""
    a = kits_dice(np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1, 0]]), np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]))
    b = kits_dice(np.array([[2, 1, 1, 1, 0, 0, 0, 0]]), np.array([[1, 1, 1, 1, 1, 2, 2, 2]]))
    assert math.isnan(a["tumor"]) and a["composite"] == pytest.approx(18 / 19)  # NaN-aware composite
    df = dice_table([{"case_id": "a", **a}, {"case_id": "b", **b}])
    s = summarize(df).loc["all"]
    kidney, tumor = (18 / 19 + b["kidney"]) / 2, b["tumor"]
    assert (s["kidney"], s["tumor"]) == (pytest.approx(kidney), pytest.approx(tumor))
    assert s["averaged"] == pytest.approx((kidney + tumor) / 2)
    assert s["averaged"] != pytest.approx((a["composite"] + b["composite"]) / 2, abs=0.05)


def test_summarize_nan_and_missing_and_groups():
    df = dice_table(
        [
            {"case_id": "a", "kidney": 1.0, "tumor": math.nan, "composite": 1.0, "pp": 0, "status": "ok"},
            {"case_id": "b", "kidney": 0.5, "tumor": 0.2, "composite": 0.35, "pp": 0, "status": "ok"},
            {
                "case_id": "c",
                "kidney": math.nan,
                "tumor": math.nan,
                "composite": math.nan,
                "pp": 0,
                "status": "missing",
            },
            {"case_id": "a", "kidney": 0.0, "tumor": 0.0, "composite": 0.0, "pp": 1, "status": "ok"},
        ]
    )
    s = summarize(df, by="pp")
    assert list(s.index) == [0, 1]
    assert s.loc[0, "kidney"] == pytest.approx(0.75)  # NaN-free mean over a, b
    assert s.loc[0, "tumor"] == pytest.approx(0.2)  # a's NaN tumour skipped
    assert s.loc[0, "averaged"] == pytest.approx((0.75 + 0.2) / 2)
    assert (s.loc[0, "n_cases"], s.loc[0, "n_tumor"], s.loc[0, "n_missing"]) == (2, 1, 1)
    assert s.loc[1, "averaged"] == 0.0
    with pytest.raises(DataError, match="group column 'nope'"):
        summarize(df, by="nope")


def test_dice_table_rejects_incomplete_rows():
    with pytest.raises(DataError, match="row 0 lacks tumor"):
        dice_table([{"case_id": "x", "kidney": 1.0, "composite": 1.0}])


def test_write_results(tmp_path):
    df = dice_table(
        [
            {"case_id": "case_00001", "kidney": 0.9, "tumor": 0.5, "composite": 0.7, "status": "ok"},
            {
                "case_id": "case_00002",
                "kidney": math.nan,
                "tumor": math.nan,
                "composite": math.nan,
                "status": "missing",
            },
        ]
    )
    paths = write_results(tmp_path / "out", df, summarize(df), provenance={"data": "phantoms"})
    assert pd.read_csv(paths["per_case"])["case_id"].tolist() == ["case_00001", "case_00002"]
    js = json.loads(paths["summary_json"].read_text())
    assert js["summary"][0]["averaged"] == pytest.approx(0.7)
    assert js["missing_cases"] == ["case_00002"]
    md = paths["summary_md"].read_text()
    assert "| all | 90.00 | 50.00 | 70.00 | 1 (1 missing) |" in md and "case_00002" in md


# --------------------------------------------------------------------------------------------
# evaluate_folder and the `kitsmsan evaluate` command on a tiny folder
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def tiny_eval(tmp_path):
    """Ground truth for cases 180-182, predictions for 180 and 181 only.

    Each volume is (3, 4, 6). Ground truth: kidney A = 8 voxels at x 0..1 (2 of them tumour), kidney
    B = 4 voxels at x 4..5. Case 180's prediction is perfect; case 181's predicts kidney A only
    plus a stray 1-voxel blob (tumour) in a corner far away.
    """
    from kitsmsan.data.kits19 import load_case, save_case, save_prediction

    gt = np.zeros((3, 4, 6), np.uint8)
    gt[0:2, 0:2, 0:2] = 1
    gt[0, 0, 0:2] = 2
    gt[0:1, 0:2, 4:6] = 1
    data = tmp_path / "data"
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    image = np.zeros(gt.shape, np.float32)
    for n in (180, 181, 182):
        save_case(data, f"case_{n:05d}", image, gt, spacing=(3.0, 0.8, 0.8))
    p181 = np.zeros_like(gt)
    p181[0:2, 0:2, 0:2] = gt[0:2, 0:2, 0:2]
    p181[2, 3, 5] = 2
    for n, pred in ((180, gt), (181, p181)):
        save_prediction(pred, load_case(data / f"case_{n:05d}"), pred_dir / f"prediction_{n:05d}.nii.gz")
    return data, pred_dir, tmp_path / "eval"


def test_evaluate_folder_hand_computed(tiny_eval):
    data, pred_dir, _ = tiny_eval
    df = evaluate_folder(pred_dir, data)  # the two predictions present
    assert df["case_id"].tolist() == ["case_00180", "case_00181"]
    # 181 raw: kidney region pred 8 + 1 = 9, gt 12, overlap 8 -> 16/21; tumour pred 3, gt 2, overlap 2 -> 4/5
    row = df.set_index("case_id").loc["case_00181"]
    assert row["kidney"] == pytest.approx(16 / 21) and row["tumor"] == pytest.approx(0.8)
    pp = evaluate_folder(pred_dir, data, [181], postprocess=1).iloc[0]
    # k=1 removes the blob: kidney 16/20, tumour 1.0
    assert pp["kidney"] == pytest.approx(0.8) and pp["tumor"] == pytest.approx(1.0)
    assert pp["postprocess"] == 1 and pp["status"] == "ok"


def test_evaluate_folder_missing_is_named(tiny_eval):
    data, pred_dir, _ = tiny_eval
    with pytest.raises(DataError, match=r"1 of 3 predictions missing: prediction_00182\.nii\.gz"):
        evaluate_folder(pred_dir, data, ["case_00180", 181, "182"])
    df = evaluate_folder(pred_dir, data, [180, 181, 182], allow_missing=True)
    assert df["status"].tolist() == ["ok", "ok", "missing"]
    with pytest.raises(DataError, match="no ground truth.*case_00183"):
        evaluate_folder(pred_dir, data, [183], allow_missing=True)


def test_evaluate_cli_missing_case(tiny_eval, capsys):
    from kitsmsan.cli import main

    data, pred_dir, out = tiny_eval
    args = ["evaluate", "--pred", str(pred_dir), "--data", str(data), "--out", str(out)]
    assert main(args + ["--cases", "180-182"]) == 2
    err = capsys.readouterr().err
    assert "prediction_00182.nii.gz" in err and "missing" in err
    assert not out.exists()  # nothing written on error

    assert main(args + ["--cases", "180-182", "--allow-missing", "--postprocess", "1"]) == 1
    assert "case_00182" in capsys.readouterr().err
    js = json.loads((out / "summary.json").read_text())
    assert js["missing_cases"] == ["case_00182"]
    per_case = pd.read_csv(out / "per_case.csv")
    assert len(per_case) == 6  # 3 cases x (raw, k=1)
    groups = {g["group"]: g for g in js["summary"]}
    raw, pp = groups["none"], groups["largest 1 component"]
    assert raw["n_cases"] == 2 and raw["n_missing"] == 1
    assert raw["kidney"] == pytest.approx((1 + 16 / 21) / 2)
    assert raw["tumor"] == pytest.approx((1 + 0.8) / 2)
    # k=1 also deletes kidney B of case 180 (the two-kidney problem): 2*8/(8+12) = 0.8
    assert pp["kidney"] == pytest.approx((0.8 + 0.8) / 2) and pp["tumor"] == pytest.approx(1.0)
    assert pp["averaged"] == pytest.approx((0.8 + 1.0) / 2)


def test_evaluate_cli_default_postprocess_is_two_components():
    """The pipeline's default keeps one component per kidney (k = 2; decisions-pipeline.md)."""
    import argparse

    from kitsmsan.commands import evaluate

    parser = argparse.ArgumentParser()
    evaluate.register(parser.add_subparsers())
    assert parser.parse_args(["evaluate", "--pred", "p", "--data", "d", "--out", "o"]).postprocess == 2


def test_evaluate_cli_all_present(tiny_eval, capsys):
    from kitsmsan.cli import main

    data, pred_dir, out = tiny_eval
    rc = main(
        ["evaluate", "--pred", str(pred_dir), "--data", str(data), "--out", str(out), "--postprocess", "2"]
    )
    assert rc == 0
    md = (out / "summary.md").read_text()
    # k=2 keeps both kidneys of 180, but in 181 (which missed kidney B) the stray blob is the
    # second-largest component and survives: same as raw, kidney (1 + 16/21)/2, tumour (1 + 0.8)/2
    assert "| largest 2 components | 88.10 | 90.00 | 89.05 | 2 |" in md
    assert "| none |" in capsys.readouterr().out
