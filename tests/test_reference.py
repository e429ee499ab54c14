"""The CPU reference run (``kitsmsan reference``) and its committed record in ``book/data/reference``.

The committed record is what the evaluation and ablation pages compare on, so these tests pin it to
the preset that would regenerate it: change a value of ``PRESETS["cpu-reference"]`` or
``REPRODUCE_DATA["cpu-reference"]`` and ``test_committed_record_is_current`` fails until the run is
made again (``kitsmsan.reference.COMMAND``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kitsmsan import reference
from kitsmsan.errors import ConfigError, DataError
from kitsmsan.metrics import summarize
from kitsmsan.reproduce import REPRODUCE_DATA
from kitsmsan.train.config import PRESETS, VARIANTS

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / reference.RECORD_DIR


def test_committed_record_is_current():
    assert reference.check_record(RECORD) == []


@pytest.mark.parametrize(
    ("where", "key", "value", "expect"),
    [
        ("train", "lr", 1e-2, "lr recorded"),
        ("train", "num_iters", 10, "num_iters recorded"),
        ("train", "fg_fraction", 0.5, "fg_fraction recorded"),
        ("train", "model", {"base_channels": 16}, "model recorded"),
        ("data", "size", 96, "data: recorded"),
        ("data", "anatomy_test", "180-189", "data: recorded"),
    ],
)
def test_a_changed_preset_makes_the_record_stale(monkeypatch, where, key, value, expect):
    table = PRESETS if where == "train" else REPRODUCE_DATA
    monkeypatch.setitem(table, reference.PRESET, {**table[reference.PRESET], key: value})
    problems = reference.check_record(RECORD)
    assert any(expect in line for line in problems), problems


def test_changed_seeds_make_the_record_stale(monkeypatch):
    monkeypatch.setattr(reference, "SEEDS", (0, 1, 2, 3))
    assert any(line.startswith("seeds:") for line in reference.check_record(RECORD))


def test_a_record_made_with_overrides_is_stale(tmp_path):
    rec = tmp_path / "rec"
    for name in ("per_case.csv", "summary.csv", "configs"):
        src = RECORD / name
        if src.is_dir():
            (rec / name).mkdir(parents=True)
            for f in src.iterdir():
                (rec / name / f.name).write_bytes(f.read_bytes())
        else:
            rec.mkdir(exist_ok=True)
            (rec / name).write_bytes(src.read_bytes())
    provenance = json.loads((RECORD / "provenance.json").read_text())
    provenance["overrides"] = {"num_iters": 10}
    (rec / "provenance.json").write_text(json.dumps(provenance))
    assert any("overrides" in line for line in reference.check_record(rec))


def test_committed_record_is_complete_and_consistent():
    ref = reference.load_reference(RECORD)
    p = ref.provenance
    # no checkpoints or images in the committed record
    assert not [f for f in RECORD.rglob("*") if f.suffix in (".pt", ".gz", ".nii")]
    assert p["num_test_cases"] >= 20 and len(p["test_case_ids"]) == p["num_test_cases"]
    assert {f"case_{n:05d}" for n in range(180, 190)} <= set(p["test_case_ids"])  # the paper's cases
    assert ref.seeds == list(reference.SEEDS) and len(ref.seeds) >= 3
    assert set(ref.per_case["model"]) == {*VARIANTS, "ensemble", "ensemble_plurality", "ensemble_average"}
    # every (seed, model, k) has every test case once, all scored
    counts = ref.per_case.groupby(["seed", "model", "postprocess"])["case_id"].agg(["nunique", "size"])
    assert (counts["nunique"] == p["num_test_cases"]).all() and (counts["size"] == p["num_test_cases"]).all()
    assert (ref.per_case["status"] == "ok").all()
    # summary.csv is the per-case table's means, not numbers typed in
    again = summarize(ref.per_case, by=["seed", "model", "postprocess"]).reset_index()
    merged = ref.summary.merge(again, on=["seed", "model", "postprocess"], suffixes=("", "_again"))
    assert len(merged) == len(ref.summary) == len(again)
    for col in ("kidney", "tumor", "averaged"):
        assert (merged[col] - merged[f"{col}_again"]).abs().max() < 1e-5
    # every run finished its iterations and left its metrics log
    for name, config in ref.configs.items():
        assert p["runs"][name]["iterations"] == config["num_iters"]
        rows = [json.loads(line) for line in (RECORD / "metrics" / f"{name}.jsonl").read_text().splitlines()]
        assert rows[-1]["iteration"] == config["num_iters"]
    assert p["commit"] and not p["commit"].endswith("-dirty")


def test_target_sentence_is_computed_from_the_record(monkeypatch):
    """The pages say whether the run reached its target, region by region, from the numbers."""
    ref = reference.load_reference(RECORD)
    ens = ref.seed_summary()
    ens = ens[ens["model"] == "ensemble"]
    kidney, tumor = ens["kidney"].mean(), ens["tumor"].mean()
    text = ref.target_sentence().split("mean vote scores ")[1]
    assert f"kidney {100 * kidney:.1f} %" in text and f"tumour {100 * tumor:.1f} %" in text
    for region, value in (("kidney", kidney), ("tumour", tumor)):
        target = reference.TARGET["tumor" if region == "tumour" else region]
        part = text.split(f"{region} ")[1].split(")")[0]
        assert ("not reached" in part) == (value < target), part
    # a target moved above or below the value flips the sentence
    monkeypatch.setitem(reference.TARGET, "kidney", 0.999)
    scores = ref.target_sentence().split("mean vote scores ")[1]
    assert "points short" in scores.split(" and tumour")[0]
    monkeypatch.setitem(reference.TARGET, "kidney", 0.0)
    monkeypatch.setitem(reference.TARGET, "tumor", 0.0)
    assert "not reached" not in ref.target_sentence()


def test_seed_averaged_cases():
    ref = reference.load_reference(RECORD)
    cases = ref.cases()
    one = ref.per_case[(ref.per_case["postprocess"] == 2) & (ref.per_case["model"] == "unet3d")]
    cid = one["case_id"].iloc[0]
    expected = one[one["case_id"] == cid]["kidney"].mean()
    got = cases[(cases["model"] == "unet3d") & (cases["case_id"] == cid)]["kidney"].iloc[0]
    assert got == pytest.approx(expected)
    assert len(ref.cases(seed=1)) == len(cases)


def test_check_command(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "kitsmsan", "reference", "--check", "--record", str(RECORD)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "current" in ok.stdout


def test_refusals(tmp_path, monkeypatch):
    monkeypatch.delenv("KITSMSAN_LABELS", raising=False)
    with pytest.raises(DataError, match="labels-only"):
        reference.run_reference(tmp_path / "out", record=None)
    with pytest.raises(ConfigError, match="seeds"):
        reference.run_reference(tmp_path / "out", seeds=(0, 0), record=None)
    with pytest.raises(ConfigError, match="variants"):
        reference.run_reference(tmp_path / "out", variants=("unet3", "msan_v1"), record=None)
    with pytest.raises(ConfigError, match="jobs"):
        reference.run_reference(tmp_path / "out", jobs=0, record=None)
    with pytest.raises(ConfigError, match="set by the reference"):
        reference.run_reference(tmp_path / "out", overrides={"seed": 3}, record=None)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_small_reference_run(tmp_path, kits_labels_dir):
    """The whole command on 4 + 2 cases, 2 seeds, 2 networks, 6 iterations: the record's layout."""
    out, rec = tmp_path / "out", tmp_path / "rec"
    small = dict(
        seeds=(0, 1),
        variants=("unet3d", "msan_v1"),
        overrides={"num_iters": 6, "ckpt_every": 6, "log_every": 3},
        data_options={"anatomy_train": "0-3", "anatomy_test": "180-181"},
        progress=False,
    )
    reference.run_reference(out, labels=kits_labels_dir, record=rec, **small)
    ref = reference.load_reference(rec)
    assert sorted(ref.configs) == ["seed0_msan_v1", "seed0_unet3d", "seed1_msan_v1", "seed1_unet3d"]
    config = ref.configs["seed1_msan_v1"]
    assert config["run_dir"] == "runs/seed1/msan_v1" and config["data_root"] == "data"
    assert config["seed"] == 1 and config["threads"] == 1 and "progress" not in config
    # not the "Ensembled Model": the vote of two networks, and its two named alternatives
    assert set(ref.per_case["model"]) == {"unet3d", "msan_v1", "vote", "vote_plurality", "vote_average"}
    assert sorted(set(ref.per_case["postprocess"])) == [0, 1, 2]
    assert list(ref.seeds) == [0, 1]
    assert any("overrides" in line for line in reference.check_record(rec))
    # the seeds differ: different initialisations give different predictions
    k2 = ref.per_case[(ref.per_case["postprocess"] == 0) & (ref.per_case["model"] == "unet3d")]
    assert k2.groupby("seed")["kidney"].mean().nunique() == 2
    # a second call trains nothing (finished runs are skipped) and writes the same table
    before = pd.read_csv(rec / "per_case.csv")
    stamp = (out / "runs" / "seed0" / "unet3d" / "summary.json").stat().st_mtime_ns
    reference.run_reference(out, labels=kits_labels_dir, record=rec, **small)
    assert (out / "runs" / "seed0" / "unet3d" / "summary.json").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(before, pd.read_csv(rec / "per_case.csv"))
    assert not list(rec.rglob("*.pt"))


def test_check_of_a_missing_record_is_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    out = subprocess.run(
        [sys.executable, "-m", "kitsmsan", "reference", "--check", "--record", str(missing)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "reference record" in lines[0], out.stderr
    assert not missing.exists()  # checking writes nothing
