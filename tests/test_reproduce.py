"""``kitsmsan reproduce`` end to end on a few tiny phantoms (issue #4, "the main job")."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kitsmsan.data.kits19 import load_label
from kitsmsan.ensemble import majority_vote
from kitsmsan.errors import ConfigError
from kitsmsan.reproduce import (
    DATA_ANATOMY,
    DATA_KITS,
    DATA_PURE,
    ENSEMBLE,
    MODEL_NAMES,
    PAPER_TABLE1,
    reproduce,
    table1,
    vote_key,
)

TINY = dict(num_iters=3, model={"base_channels": 4}, eval_cases=0, threads=1, ckpt_every=3, log_every=3)


@pytest.mark.slow
def test_tiny_reproduce_writes_the_table_with_provenance(tmp_path, monkeypatch):
    monkeypatch.delenv("KITSMSAN_LABELS", raising=False)
    out = tmp_path / "repro"
    paths = reproduce(
        "smoke",
        out,
        overrides=TINY,
        progress=False,
        data_options=dict(size=32, num_slices=8, pure_cases=3, pure_train="0-1", pure_test="2"),
    )
    for p in paths.values():
        assert p.is_file(), p
    doc = json.loads(paths["table_json"].read_text())
    prov = doc["provenance"]
    assert prov["data_kind"] == DATA_PURE
    assert prov["iterations"] == {v: 3 for v in ("unet3d", "msan_v1", "msan_v1_ds", "msan_v2", "msan_v2_ds")}
    for key in ("hardware", "commit", "wall_seconds", "train_seconds", "test_cases", "torch"):
        assert key in prov
    rows = {r["key"]: r for r in doc["rows"]}
    assert list(rows) == ["unet3d", "msan_v1", "msan_v1_ds", "msan_v2", "msan_v2_ds", "ensemble"]
    assert (
        rows["ensemble"]["paper_kits19_averaged"] == 79.63
        and rows["msan_v1_ds"]["paper_kits19_kidney"] is None
    )
    assert all(0 <= r["ours_kidney"] <= 100 for r in rows.values())
    assert all(r["postprocess_k"] == 2 for r in rows.values()) and "k=2" in prov["postprocess"]
    md = paths["table_md"].read_text()
    assert "not KiTS19" in md and "Paper (KiTS19)" in md
    table = pd.read_csv(paths["table_csv"])
    assert len(table) == 6
    per_case = pd.read_csv(paths["per_case"])
    assert set(per_case["postprocess"]) == {0, 1, 2} and set(per_case["case_id"]) == {"case_00002"}
    # the ensemble is the nested-region vote of exactly the five saved raw predictions
    preds = out / "predictions"
    five = [load_label(preds / v / "prediction_00002.nii.gz")[0] for v in ENSEMBLE]
    ensemble = load_label(preds / "ensemble" / "prediction_00002.nii.gz")[0]
    np.testing.assert_array_equal(ensemble, majority_vote(five, rule="nested"))
    assert json.loads((preds / "ensemble" / "ensemble.json").read_text())["inputs"] == [
        str(preds / v) for v in ENSEMBLE
    ]
    assert rows["ensemble"]["model"] == "Ensembled Model" and "nested-region vote" in prov["ensemble"]
    # a re-run skips finished runs (nothing retrained: checkpoints untouched)
    last = out / "runs" / "msan_v1" / "checkpoints" / "last.pt"
    stamp = last.stat().st_mtime_ns
    reproduce(
        "smoke",
        out,
        overrides=TINY,
        progress=False,
        data_options=dict(size=32, num_slices=8, pure_cases=3, pure_train="0-1", pure_test="2"),
    )
    assert last.stat().st_mtime_ns == stamp


@pytest.mark.slow
@pytest.mark.kits_labels
def test_tiny_reproduce_on_label_conditioned_phantoms(tmp_path, kits_labels_dir):
    """--labels: real segmentations (2 train + 1 test case), cropped along z and resampled to ~5 mm."""
    out = tmp_path / "repro"
    options = dict(size=32, anatomy_train="0-1", anatomy_test="180")
    paths = reproduce(
        "smoke",
        out,
        labels=kits_labels_dir,
        variants=("msan_v1",),
        overrides=TINY,
        data_options=options,
        progress=False,
    )
    prov = json.loads(paths["table_json"].read_text())["provenance"]
    assert prov["data_kind"] == DATA_ANATOMY and prov["num_train_cases"] == 2 and prov["num_test_cases"] == 1
    meta = json.loads((out / "data" / "phantoms.json").read_text())
    assert meta["slice_thickness"] == 5.0 and meta["z_margin_mm"] == 20.0
    for cid, entry in meta["cases"].items():
        assert entry["spacing"][0] == pytest.approx(5.0, rel=0.2), cid
        assert entry["shape"][0] < entry["source_shape"][0] and max(entry["shape"][1:]) == 32, cid
    per_case = pd.read_csv(paths["per_case"])
    assert set(per_case["case_id"]) == {"case_00180"} and set(per_case["model"]) == {
        "msan_v1"
    }  # no vote of one


def test_table_never_labels_phantom_numbers_as_kits19():
    scores = {
        "msan_v1": {"kidney": 0.9, "tumor": 0.5, "averaged": 0.7, "averaged_k2": 0.75, "averaged_raw": 0.6}
    }
    md, rows = table1(scores, data_kind=DATA_PURE, iterations={"msan_v1": 10}, preset="smoke")
    assert "Ours, pure phantoms — not KiTS19" in md
    assert rows[0]["ours_averaged"] == pytest.approx(70.0) and rows[0]["paper_kits19_averaged"] == 74.23
    assert rows[0]["ours_averaged_k2"] == pytest.approx(75.0)
    assert "| MSAN-V1 | 90.00 | 50.00 | 70.00 | 92.47 | 56.00 | 74.23 |" in md  # ours beside the paper's
    assert "| MSAN-V1 | 70.00 | 75.00 | 60.00 |" in md  # post-processing table
    md, _ = table1(scores, data_kind=DATA_KITS, iterations={"msan_v1": 10}, preset="paper")
    assert "Ours, KiTS19" in md and "not KiTS19" not in md


def test_table_headline_k2_puts_the_literal_k1_beside_it():
    scores = {
        "msan_v1": {
            "kidney": 0.9,
            "tumor": 0.5,
            "averaged": 0.7,
            "kidney_k1": 0.6,
            "averaged_k1": 0.55,
            "averaged_k2": 0.7,
            "averaged_raw": 0.65,
        }
    }
    md, rows = table1(scores, data_kind=DATA_PURE, iterations={"msan_v1": 10}, preset="smoke", headline_k=2)
    assert "k = 2" in md and "Kidney, k = 1 (paper, literal)" in md
    assert "| MSAN-V1 | 90.00 | 50.00 | 70.00 | 92.47 | 56.00 | 74.23 |" in md
    assert "| MSAN-V1 | 70.00 | 60.00 | 55.00 | 65.00 |" in md
    assert rows[0]["postprocess_k"] == 2 and rows[0]["ours_averaged_k1"] == pytest.approx(55.0)
    with pytest.raises(ConfigError, match="headline_k"):
        table1(scores, data_kind=DATA_PURE, iterations={}, preset="smoke", headline_k=3)


def test_pipeline_postprocess_is_two_but_the_function_default_stays_literal():
    import inspect

    from kitsmsan.postprocess import keep_largest_components
    from kitsmsan.reproduce import POSTPROCESS_K

    assert POSTPROCESS_K == 2
    assert inspect.signature(keep_largest_components).parameters["num_components"].default == 1


#: MSAN paper, Table 1, as printed (model | kidney | tumor | averaged), transcribed independently
TABLE1_TEXT = """
3D U-Net | 89.70 | 46.90 | 68.30
MSAN-V1 | 92.47 | 56.00 | 74.23
MSAN-V2 | 93.85 | 58.22 | 76.03
MSAN-V2 with Deep Supervision | 93.01 | 61.41 | 77.21
Ensembled Model | 94.38 | 64.89 | 79.63
"""


def test_paper_table_is_self_consistent():
    rows = [r for r in PAPER_TABLE1.values() if r]
    for row in rows:
        # "Averaged" is the mean of kidney and tumour (to rounding) ...
        assert abs((row["kidney"] + row["tumor"]) / 2 - row["averaged"]) < 0.006
        # ... so it lies strictly between them, and kidney is the higher one in every row of the paper:
        # any two columns transposed breaks one of these
        assert row["kidney"] > row["averaged"] > row["tumor"]
    printed = [line.split(" | ") for line in TABLE1_TEXT.strip().splitlines()]
    ours = [(MODEL_NAMES[k], v) for k, v in PAPER_TABLE1.items() if v]
    assert [name for name, _ in ours] == [p[0] for p in printed]
    for (_, row), p in zip(ours, printed):
        assert (row["kidney"], row["tumor"], row["averaged"]) == tuple(float(x) for x in p[1:])


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="'fast'"):
        reproduce("fast", tmp_path)
    with pytest.raises(ConfigError, match="--data"):
        reproduce("paper", tmp_path)
    with pytest.raises(ConfigError, match="'msan_v9'"):
        reproduce("smoke", tmp_path, variants=("msan_v9",))
    with pytest.raises(ConfigError, match="widht"):  # fails before any data is written
        reproduce("smoke", tmp_path / "typo", overrides={"model": {"widht": 8}})
    assert not (tmp_path / "typo").exists()


def test_table1_scores_by_hand():
    import pandas as pd

    from kitsmsan.errors import DataError
    from kitsmsan.reproduce import table1_scores

    rows = []
    # one model, two cases; (kidney, tumor) per post-processing level
    values = {0: [(0.8, 0.2), (0.6, 0.4)], 1: [(0.5, 0.2), (0.3, 0.4)], 2: [(0.9, 0.3), (0.7, 0.5)]}
    for k, cases in values.items():
        for i, (kid, tum) in enumerate(cases):
            rows.append(
                {
                    "model": "msan_v1",
                    "postprocess": k,
                    "case_id": f"case_{i:05d}",
                    "kidney": kid,
                    "tumor": tum,
                    "composite": (kid + tum) / 2,
                }
            )
    scores = table1_scores(pd.DataFrame(rows), headline_k=2)["msan_v1"]
    assert scores["kidney"] == pytest.approx(0.8) and scores["tumor"] == pytest.approx(0.4)
    assert scores["averaged"] == pytest.approx(0.6)  # mean(0.8, 0.4), the paper's "averaged"
    assert scores["kidney_k1"] == pytest.approx(0.4)
    assert scores["averaged_k1"] == pytest.approx(0.35)  # mean(0.4, 0.3)
    assert scores["averaged_k2"] == pytest.approx(0.6)
    assert scores["averaged_raw"] == pytest.approx(0.5)  # mean(0.7, 0.3)
    with pytest.raises(DataError, match="postprocess=1"):
        table1_scores(pd.DataFrame([r for r in rows if r["postprocess"] != 1]))


def test_ensembled_model_only_when_all_five_took_part():
    assert vote_key(ENSEMBLE) == "ensemble" and vote_key(tuple(reversed(ENSEMBLE))) == "ensemble"
    assert vote_key(ENSEMBLE[:4]) == "vote" and vote_key(("msan_v1", "msan_v2")) == "vote"
    scores = {
        "vote": {"kidney": 0.9, "tumor": 0.5, "averaged": 0.7, "averaged_k2": 0.75, "averaged_raw": 0.6}
    }
    md, rows = table1(scores, data_kind=DATA_PURE, iterations={"msan_v1": 10}, preset="smoke")
    assert "Ensembled Model" not in md and rows[0]["model"] == MODEL_NAMES["vote"]
    assert (
        rows[0]["paper_kits19_averaged"] is None
    )  # a subset's vote is never put beside the paper's ensemble


def test_pure_phantom_split_has_twenty_test_cases():
    """The live book's pure phantoms: 14 training cases and 20 test cases (fewer resolve no paired
    difference), every one written, and the smoke preset's default split is the same."""
    from kitsmsan.data.kits19 import parse_case_range
    from kitsmsan.reproduce import REPRODUCE_DATA
    from kitsmsan.train.config import PRESETS

    spec = REPRODUCE_DATA["smoke"]
    train, test = parse_case_range(spec["pure_train"]), parse_case_range(spec["pure_test"])
    assert len(test) >= 20 and not set(train) & set(test)
    assert max(train + test) < spec["pure_cases"]
    assert (PRESETS["smoke"]["train_cases"], PRESETS["smoke"]["test_cases"]) == (
        spec["pure_train"],
        spec["pure_test"],
    )
