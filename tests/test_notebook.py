"""kitsmsan.notebook: what the book's notebooks share (data set-up, trained runs, scoring helpers)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from kitsmsan.errors import ConfigError, DataError
from kitsmsan.inference import predict_case
from kitsmsan.notebook import (
    PageData,
    TrainedRuns,
    bullets,
    case_scores,
    ci_points,
    compare_arms,
    load_runs,
    mean_dice,
    page_data,
    page_root,
    postprocess,
    predict_cases,
    reference_comparisons,
    reference_record,
    reference_table1,
    score_model,
    to_plain,
    train_config,
    train_once,
)
from kitsmsan.train.config import PRESETS


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> PageData:
    """The smoke data of a page (pure phantoms) under a temporary root, written once."""
    root = tmp_path_factory.mktemp("page")
    return page_data(smoke=True, work_dir="work", seed=3, root=root)


def test_page_root_is_the_parent_of_notebooks(tmp_path):
    assert page_root(tmp_path / "notebooks") == tmp_path
    assert page_root(tmp_path / "repo") == tmp_path / "repo"


def test_page_data_writes_phantoms_splits_and_caches(page):
    assert page.data == page.root / "work" / "data" and page.cache == page.root / "work" / "cache"
    assert page.kind == "pure phantoms" and page.preset == "smoke"
    assert (page.train_cases, page.test_cases) == ("0-13", "14-33")  # the split that comes with them
    assert len(page.split["train"]) == 14 and page.split["test"][0] == "case_00014"
    assert set(page.index["cases"]) == set(page.split["train"] + page.split["test"])
    text = page._repr_markdown_()
    assert text.startswith("**Data on this page: pure phantoms** (`work/data`)")
    assert "14 training cases, 20 test cases (case_00014," in text


def test_page_data_seeds_torch(page):
    again = page_data(smoke=True, work_dir="work", seed=3, root=page.root)  # reuses the phantoms
    drawn = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(drawn, torch.rand(3))
    assert again.split == page.split


def test_page_data_takes_a_split_and_refuses_paper_without_data(page, tmp_path):
    small = page_data(work_dir="work", train_cases="0-2", test_cases="3", root=page.root)
    assert small.split == {"train": ["case_00000", "case_00001", "case_00002"], "test": ["case_00003"]}
    with pytest.raises(ConfigError, match="needs --data"):
        page_data(smoke=False, work_dir="w", root=tmp_path)


def test_train_config_is_the_preset_on_the_page(page, tmp_path):
    config = train_config(page, "msan_v1_ds", tmp_path / "run")
    assert config.num_iters == PRESETS["smoke"]["num_iters"] and config.variant == "msan_v1_ds"
    assert (
        config.model == {**PRESETS["smoke"]["model"], **config.model} and config.lr == PRESETS["smoke"]["lr"]
    )
    assert (config.data_root, config.cache_dir) == (str(page.data), str(page.cache))
    assert (config.train_cases, config.test_cases, config.seed) == ("0-13", "14-33", 3)
    changed = train_config(page, "unet3d", tmp_path / "run", num_iters=7, eval_every=5, device="cpu")
    assert (changed.num_iters, changed.eval_every, changed.device) == (7, 5, "cpu")


def test_load_runs_refuses_a_missing_run_when_it_may_not_train(page, tmp_path):
    with pytest.raises(DataError, match=r"no finished run for unet3d, msan_v1\. .*kitsmsan train"):
        load_runs(tmp_path / "runs", "unet3d,msan_v1", page, train_missing=False)
    with pytest.raises(ConfigError, match="names no variant"):
        load_runs(tmp_path / "runs", " , ", page)


@pytest.mark.slow
def test_load_runs_trains_once_then_reads_files(page, tmp_path, capsys):
    runs = load_runs(tmp_path / "runs", "msan_v1", page, missing_iters=2)
    assert isinstance(runs, TrainedRuns) and runs.variants == ["msan_v1"] and len(runs) == 1
    assert "training it now (2 iterations" in capsys.readouterr().out
    assert runs["msan_v1"]["summary"]["iterations"] == 2 and runs["msan_v1"]["config"]["variant"] == "msan_v1"
    assert not runs.models["msan_v1"].training
    summary = tmp_path / "runs" / "msan_v1" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    again = load_runs(tmp_path / "runs", "msan_v1", page, train_missing=False, models=False)
    assert summary.stat().st_mtime_ns == stamp and again.models == {}  # read, not retrained
    table = again.table(tmp_path)
    assert table.loc["msan_v1", "iterations"] == 2 and table.loc["msan_v1", "run folder"] == "runs/msan_v1"
    scores = score_model(runs.models["msan_v1"], {"case_00014": _case(page, "case_00014")})
    assert set(scores) == {"kidney", "tumor"} and 0.0 <= scores["kidney"] <= 1.0
    # train_once: the same run is reused; a new folder is trained with the changes applied
    config = train_config(page, "msan_v1", tmp_path / "runs" / "msan_v1", num_iters=2, progress=False)
    train_once(config, root=tmp_path)
    assert summary.stat().st_mtime_ns == stamp
    train_once(config, tmp_path / "other", root=tmp_path, num_iters=1)
    assert json.loads((tmp_path / "other" / "summary.json").read_text())["iterations"] == 1
    # ... and a finished run of other settings is refused, naming them, never reused in their place
    expected = re.escape(f"other settings (lr: {config.lr!r} -> 0.01; num_iters: 1 -> 2)")
    with pytest.raises(ConfigError, match=expected):
        train_once(config, tmp_path / "other", root=tmp_path, lr=0.01)
    assert json.loads((tmp_path / "other" / "summary.json").read_text())["iterations"] == 1


def _case(page, cid):
    from kitsmsan.data.kits19 import load_case

    return load_case(page.data / cid)


def test_postprocess_none_keeps_everything_and_k_keeps_components():
    label = np.zeros((3, 8, 8), np.uint8)
    label[1, 1:3, 1:3] = 1
    label[1, 5:8, 5:8] = 1
    assert postprocess(label, None) is label
    assert int((postprocess(label, 1) > 0).sum()) == 9 and int((postprocess(label, 2) > 0).sum()) == 13


def test_mean_dice_averages_cases_and_takes_arrays_or_cases():
    truth = np.zeros((2, 4, 4), np.uint8)
    truth[0, :2, :2] = 1
    truth[0, 0, 0] = 2
    empty = np.zeros_like(truth)
    perfect = mean_dice({"a": truth, "b": truth}, {"a": truth, "b": truth})
    assert perfect == {"kidney": 1.0, "tumor": 1.0}
    half = mean_dice({"a": truth, "b": empty}, {"a": truth, "b": truth})
    assert half == {"kidney": 0.5, "tumor": 0.5}

    class Case:
        label = truth

    assert mean_dice({"a": truth}, {"a": Case()}) == perfect


def _truth_cases(n=6):
    """``n`` label maps (2, 8, 8) with a kidney of 4 voxels and a tumour of 1, each slightly shifted."""
    out = {}
    for i in range(n):
        label = np.zeros((2, 8, 8), np.uint8)
        label[0, i % 4 : i % 4 + 2, 1:3] = 1
        label[0, i % 4, 1] = 2
        out[f"case_{i:05d}"] = label
    return out


def test_case_scores_is_one_row_per_case_with_constant_columns():
    truth = _truth_cases(3)
    preds = {**truth, "case_00001": np.zeros_like(truth["case_00001"])}
    table = case_scores(preds, truth, model="m", postprocess=2)
    assert list(table.columns) == ["case_id", "kidney", "tumor", "composite", "model", "postprocess"]
    assert table["case_id"].tolist() == list(truth) and set(table["model"]) == {"m"}
    assert table["kidney"].tolist() == [1.0, 0.0, 1.0] and table["tumor"].tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(DataError, match="no ground truth for case_00009"):
        case_scores({"case_00009": truth["case_00000"]}, truth)
    # mean_dice is the mean of these rows (one implementation)
    assert mean_dice(preds, truth) == {"kidney": pytest.approx(2 / 3), "tumor": pytest.approx(2 / 3)}


class _Case:
    def __init__(self, image, label):
        self.image, self.label = image, label


def test_predict_cases_is_predict_case_per_case_and_score_model_scores_it():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, kernel_size=1).eval()  # (B, 1, S, H, W) -> (B, 3, S, H, W) logits
    rng = np.random.default_rng(0)
    cases = {
        f"c{i}": _Case(
            rng.uniform(-200, 500, (5, 16, 16)).astype(np.float32), np.zeros((5, 16, 16), np.uint8)
        )
        for i in range(2)
    }
    preds = predict_cases(net, cases, 4)
    assert list(preds) == ["c0", "c1"] and preds["c0"].shape == (5, 16, 16) and preds["c0"].dtype == np.uint8
    for cid, c in cases.items():
        assert np.array_equal(preds[cid], predict_case(net, c.image, num_slices=4, stride=2))
    one = predict_cases(net, cases, 1)  # stride min(2, num_slices) = 1
    assert np.array_equal(one["c1"], predict_case(net, cases["c1"].image, num_slices=1, stride=1))
    probs = predict_cases(net, cases, 4, return_probs=True)
    assert probs["c0"].shape == (3, 5, 16, 16) and np.allclose(probs["c0"].sum(0), 1.0, atol=1e-5)
    assert score_model(net, cases, num_slices=4) == mean_dice(preds, cases)


def test_compare_arms_pairs_the_arms_on_the_same_cases():
    truth = _truth_cases(6)
    empty = {cid: np.zeros_like(t) for cid, t in truth.items()}
    half = {cid: (t if i % 2 else empty[cid]) for i, (cid, t) in enumerate(truth.items())}
    table = compare_arms(
        {"good": truth, "bad": empty, "half": half},
        truth,
        [("good", "bad"), ("half", "half")],
        names={"good": "Good", "bad": "Bad"},
        n_resamples=500,
    )
    assert list(table.columns) == [
        "a",
        "b",
        "region",
        "difference",
        "low",
        "high",
        "n",
        "verdict",
        "sentence",
    ]
    kidney = table.iloc[0]
    assert (kidney["a"], kidney["b"], kidney["region"], kidney["n"]) == ("good", "bad", "kidney", 6)
    assert kidney["difference"] == kidney["low"] == kidney["high"] == 1.0 and kidney["verdict"] == "better"
    assert kidney["sentence"].startswith("Good is better than Bad on kidney Dice: +100.0 points")
    assert table.iloc[1]["sentence"].startswith("Good is better than Bad on tumour Dice")
    assert table.iloc[2]["sentence"] == "half and half give the same kidney Dice on every one of the 6 cases."
    assert ci_points(kidney) == "+100.0 [+100.0, +100.0]"
    assert ci_points({"difference": 0.0123, "low": -0.004, "high": 0.03}, digits=2) == "+1.23 [-0.40, +3.00]"
    assert bullets(table.iloc[:2]) == f"* {table.iloc[0]['sentence']}\n* {table.iloc[1]['sentence']}"
    assert bullets(["a", "b"]) == "* a\n* b" and bullets([]) == ""
    with pytest.raises(DataError, match="no rows with arm = 'nope'"):
        compare_arms({"good": truth}, truth, [("good", "nope")])
    fewer = {cid: truth[cid] for cid in list(truth)[:5]}
    with pytest.raises(DataError):
        compare_arms({"good": truth, "fewer": fewer}, truth, [("good", "fewer")])


def test_to_plain_makes_json_ready_floats():
    out = to_plain({"a": np.float32(0.5), "b": {"c": np.int64(2)}, "d": [np.float64(1.5)], "e": "x"})
    assert out == {"a": 0.5, "b": {"c": 2.0}, "d": [1.5], "e": "x"}
    assert type(out["a"]) is float and json.dumps(out)


# ------------------------------------------------------------------------------------------------
# the reference record as the results pages read it
# ------------------------------------------------------------------------------------------------


def test_reference_record_reads_skips_and_says_why(fake_reference, tmp_path, capsys):
    ref = reference_record(fake_reference.parent, fake_reference.name)
    assert ref is not None and ref.seeds == [0, 1, 2] and ref.num_iters == 123
    assert reference_record(tmp_path, "") is None
    assert "reference_dir is empty" in capsys.readouterr().out
    assert reference_record(tmp_path, "absent") is None
    out = capsys.readouterr().out
    assert out.startswith("absent: no reference record there") and "kitsmsan reference" in out


def test_reference_comparisons_count_the_seeds_that_share_the_sign(fake_reference):
    import pandas as pd

    ref = reference_record(fake_reference.parent, fake_reference.name)
    table = reference_comparisons(ref, [("msan_v2", "msan_v1"), ("msan_v1", "unet3d")], n_resamples=500)
    pc = pd.read_csv(fake_reference / "per_case.csv")
    pc = pc[pc["postprocess"] == 2]
    for _, row in table.iterrows():
        # by hand: each seed's mean of a minus its mean of b (every case defined for both)
        by_seed = [
            pc[(pc["seed"] == s) & (pc["model"] == row["a"])][row["region"]].mean()
            - pc[(pc["seed"] == s) & (pc["model"] == row["b"])][row["region"]].mean()
            for s in (0, 1, 2)
        ]
        assert row["seed_differences"] == pytest.approx(by_seed, abs=1e-9)
        assert row["seeds_agree"] == sum(np.sign(d) == np.sign(row["difference"]) for d in by_seed)
        assert row["n_seeds"] == 3
        assert row["sentence"].endswith(f"({row['seeds_agree']} of 3 training seeds with the same sign).")
        # the interval is over the seed-averaged cases
        avg = ref.cases(2)
        a = avg[avg["model"] == row["a"]].set_index("case_id")[row["region"]]
        b = avg[avg["model"] == row["b"]].set_index("case_id")[row["region"]]
        assert row["difference"] == pytest.approx(float((a - b).mean()), abs=1e-12)
    kidney = table.set_index(["a", "region"]).loc[("msan_v2", "kidney")]
    assert kidney["seeds_agree"] == 2  # the fixture's MSAN-V2 falls behind in seed 2
    assert table.set_index(["a", "region"]).loc[("msan_v1", "kidney"), "seeds_agree"] == 3
    # post-processing levels of one model
    levels = reference_comparisons(ref, [(2, 1)], by="postprocess", model="ensemble", n_resamples=500)
    kid = levels.set_index("region").loc["kidney"]
    assert kid["difference"] == pytest.approx(0.10, abs=1e-5) and kid["seeds_agree"] == 3
    assert kid["verdict"] == "better"
    with pytest.raises(ConfigError, match="needs the model"):
        reference_comparisons(ref, [(2, 1)], by="postprocess")
    with pytest.raises(ConfigError, match="expected 'model' or 'postprocess'"):
        reference_comparisons(ref, [(2, 1)], by="seed")
    with pytest.raises(DataError, match="no rows with model = 'vote'"):
        reference_comparisons(ref, [("vote", "unet3d")])


def test_reference_table1_sets_the_seeds_and_the_interval_beside_the_paper(fake_reference):
    ref = reference_record(fake_reference.parent, fake_reference.name)
    md = reference_table1(ref)
    assert "the paper on KiTS19 beside ours on real-anatomy phantoms" in md
    lines = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    s = ref.seed_summary(2)
    ens = s[s["model"] == "ensemble"]["kidney"]
    assert f"| 94.38 | {100 * ens.mean():.1f} ± {100 * ens.std(ddof=1):.1f} |" in lines["Ensembled Model"]
    assert "| — |" in lines["MSAN-V1 with Deep Supervision"]  # no row in the paper
    assert lines["3D U-Net"].endswith("| 12 |")  # cases
    assert "ensemble_plurality" not in md  # the alternatives are the ablations' business
