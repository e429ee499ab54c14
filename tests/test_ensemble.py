"""Tests of kitsmsan.ensemble: voting with every tie pattern, probability averaging."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest

from kitsmsan.ensemble import argmax_label, average_probabilities, majority_vote
from kitsmsan.errors import ConfigError, DataError


def reference_nested(votes):
    """Brute-force nested-region vote, written from the KiTS19 regions rather than from thresholds.

    Kidney region = label > 0 and tumour = label 2; each region is kept where more than half the
    models put the voxel in it; tumour is checked first (it lies inside the kidney region).
    """
    n = len(votes)
    says_region = sum(1 for v in votes if v != 0)
    says_tumour = sum(1 for v in votes if v == 2)
    if 2 * says_tumour > n:
        return 2
    if 2 * says_region > n:
        return 1
    return 0


def reference_vote(votes, tie_break, num_classes=3):
    """Brute-force per-voxel plurality vote written independently of the implementation."""
    counts = Counter(votes)
    top = max(counts.values())
    tied = [c for c in range(num_classes) if counts.get(c, 0) == top]
    if tie_break == "highest":
        return max(tied)
    if tie_break == "lowest":
        return min(tied)
    return next(v for v in votes if v in tied)  # "first"


def all_patterns(n_models, num_classes=3):
    """One voxel per possible vote combination: label maps of shape (num_classes**n_models,)."""
    combos = list(itertools.product(range(num_classes), repeat=n_models))
    maps = [np.array([c[i] for c in combos], dtype=np.uint8) for i in range(n_models)]
    return combos, maps


@pytest.mark.parametrize("n_models", [1, 2, 3, 4, 5])
def test_nested_vote_every_pattern(n_models):
    """All 3**N patterns (243 for five models) against the brute-force region vote."""
    combos, maps = all_patterns(n_models)
    got = majority_vote(maps)  # the default rule
    expected = np.array([reference_nested(c) for c in combos], dtype=np.uint8)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.uint8 and got.shape == maps[0].shape
    # region-consistent: the voted kidney region / tumour is where a strict majority says so
    region_votes = sum((m > 0).astype(int) for m in maps)
    tumour_votes = sum((m == 2).astype(int) for m in maps)
    np.testing.assert_array_equal(got > 0, 2 * region_votes > n_models)
    np.testing.assert_array_equal(got == 2, 2 * tumour_votes > n_models)


def test_nested_and_plurality_differ_on_60_of_243():
    combos, maps = all_patterns(5)
    nested, plurality = majority_vote(maps, rule="nested"), majority_vote(maps, rule="plurality")
    assert int((nested != plurality).sum()) == 60
    # for five models the kidney region agrees; every difference is plurality-tumour vs region-kidney
    np.testing.assert_array_equal(nested > 0, plurality > 0)
    assert ((nested != plurality) == ((plurality == 2) & (nested == 1))).all()


@pytest.mark.parametrize(
    "votes,nested,plurality",
    [
        ((0, 0, 1, 2, 2), 1, 2),  # 3 of 5 say kidney region, 2 of 5 tumour -> kidney; plurality: tumour
        ((0, 0, 1, 1, 2), 1, 1),  # 3 of 5 say kidney region, 1 tumour -> kidney
        ((1, 1, 2, 2, 0), 1, 2),  # 4 say kidney region, only 2 say tumour -> kidney
        ((1, 2, 2, 2, 0), 2, 2),  # 3 of 5 say tumour
        ((0, 0, 0, 1, 2), 0, 0),  # 2 of 5 say kidney region -> background
        ((2, 2, 0, 0, 0), 0, 0),
        ((1, 1, 2, 2), 1, 2),  # even N: 2 of 4 tumour is a tie, no majority -> kidney (4 of 4)
        ((0, 0, 1, 2), 0, 0),  # 2 of 4 say kidney region: a tie -> background
        ((0, 1), 0, 1),  # two models disagreeing: no majority -> background
        ((1, 2), 1, 2),  # both say kidney region, one tumour -> kidney
    ],
)
def test_votes_by_hand(votes, nested, plurality):
    maps = [np.full((2, 2, 2), v, np.uint8) for v in votes]
    assert (majority_vote(maps) == nested).all()
    assert (majority_vote(maps, rule="plurality") == plurality).all()


def test_nested_refuses_a_tie_break():
    with pytest.raises(ConfigError, match="tie_break"):
        majority_vote([np.zeros(3, np.uint8)], tie_break="highest")
    with pytest.raises(ConfigError, match="rule"):
        majority_vote([np.zeros(3, np.uint8)], rule="hierarchical")


@pytest.mark.parametrize("tie_break", ["highest", "lowest", "first"])
@pytest.mark.parametrize("n_models", [1, 2, 3, 4, 5])
def test_plurality_every_vote_pattern(n_models, tie_break):
    combos, maps = all_patterns(n_models)
    got = majority_vote(maps, rule="plurality", tie_break=tie_break)
    expected = np.array([reference_vote(c, tie_break) for c in combos], dtype=np.uint8)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.uint8 and got.shape == maps[0].shape


def test_first_tie_break_follows_model_order():
    a = [np.array([0]), np.array([1])]
    assert majority_vote(a, rule="plurality", tie_break="first")[0] == 0
    assert majority_vote(a[::-1], rule="plurality", tie_break="first")[0] == 1
    # first model's label not among the tied classes: the next model decides
    maps = [np.array([v]) for v in (2, 0, 1, 0, 1)]  # 0 and 1 tie at 2 votes
    assert majority_vote(maps, rule="plurality", tie_break="first")[0] == 0


@pytest.mark.parametrize("rule", ["nested", "plurality"])
def test_vote_is_order_invariant(rule):
    rng = np.random.default_rng(1)
    maps = [rng.integers(0, 3, (3, 4, 5)).astype(np.uint8) for _ in range(5)]
    base = majority_vote(maps, rule=rule)
    for perm in [(4, 3, 2, 1, 0), (2, 0, 4, 1, 3)]:
        np.testing.assert_array_equal(majority_vote([maps[i] for i in perm], rule=rule), base)


def test_vote_validation():
    with pytest.raises(DataError, match="empty"):
        majority_vote([])
    with pytest.raises(DataError, match=r"label_maps\[1\]: shape"):
        majority_vote([np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8)])
    with pytest.raises(DataError, match=r"label_maps\[0\]: values outside 0..2"):
        majority_vote([np.full(3, 3, np.uint8)])
    with pytest.raises(DataError, match="dtype float"):
        majority_vote([np.zeros(3, np.float32)])
    with pytest.raises(ConfigError, match="tie_break"):
        majority_vote([np.zeros(3, np.uint8)], rule="plurality", tie_break="random")
    with pytest.raises(DataError, match="sequence"):
        majority_vote(np.zeros((5, 3), np.uint8))


def test_average_probabilities_hand_computed():
    p1 = np.array([[0.6, 0.1], [0.3, 0.2], [0.1, 0.7]], np.float32)[:, None, None, :]  # (3,1,1,2)
    p2 = np.array([[0.2, 0.3], [0.3, 0.6], [0.5, 0.1]], np.float64)[:, None, None, :]
    mean = average_probabilities([p1, p2])
    assert mean.dtype == np.float32 and mean.shape == (3, 1, 1, 2)
    np.testing.assert_allclose(mean[:, 0, 0, 0], [0.4, 0.3, 0.3], rtol=1e-6)
    np.testing.assert_allclose(mean[:, 0, 0, 1], [0.2, 0.4, 0.4], rtol=1e-6)
    # argmax: voxel 0 -> background 0.4; voxel 1 tie kidney/tumour 0.4 -> lower class (kidney)
    np.testing.assert_array_equal(argmax_label(mean)[0, 0], [0, 1])
    # voting the per-model argmaxes differs from averaging: p1 says (0, 2), p2 says (2, 1)
    votes = majority_vote([argmax_label(p1), argmax_label(p2)])
    np.testing.assert_array_equal(votes[0, 0], [0, 1])  # no majority for voxel 0; both say kidney region at 1
    plurality = majority_vote([argmax_label(p1), argmax_label(p2)], rule="plurality")
    np.testing.assert_array_equal(plurality[0, 0], [2, 2])
    np.testing.assert_array_equal(p1[:, 0, 0, 0], np.float32([0.6, 0.3, 0.1]))  # inputs untouched


def test_average_validation():
    with pytest.raises(DataError, match="empty"):
        average_probabilities([])
    with pytest.raises(DataError, match=r"prob_maps\[1\]: shape"):
        average_probabilities([np.zeros((3, 2)), np.zeros((3, 3))])
    with pytest.raises(DataError, match="NaN"):
        average_probabilities([np.full((3, 2), np.nan)])
    with pytest.raises(DataError, match="float"):
        average_probabilities([np.zeros((3, 2), np.uint8)])


# --------------------------------------------------------------------------------------------
# `kitsmsan ensemble` on prediction folders
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def three_folders(tmp_path):
    """Case 180 (2, 3, 4) predicted by three 'models'; the source case has spacing (2.5, 0.7, 0.6)."""
    from kitsmsan.data.kits19 import load_case, save_case, save_prediction

    shape = (2, 3, 4)
    save_case(
        tmp_path / "data",
        "case_00180",
        np.zeros(shape, np.float32),
        np.zeros(shape, np.uint8),
        spacing=(2.5, 0.7, 0.6),
    )
    case = load_case(tmp_path / "data" / "case_00180")
    rng = np.random.default_rng(5)
    labels, dirs = [], []
    for i in range(3):
        lab = rng.integers(0, 3, shape).astype(np.uint8)
        d = tmp_path / f"m{i}"
        d.mkdir()
        save_prediction(lab, case, d / "prediction_00180.nii.gz")
        p = rng.dirichlet([1, 1, 1], size=shape).transpose(3, 0, 1, 2).astype(np.float16)
        np.save(d / "probs_00180.npy", p)
        labels.append(lab)
        dirs.append(d)
    return case, labels, dirs, tmp_path


def test_ensemble_cli_vote_and_average(three_folders):
    from kitsmsan.cli import main
    from kitsmsan.data.kits19 import load_label

    case, labels, dirs, tmp = three_folders
    pred_args = ["--pred", *map(str, dirs)]
    assert main(["ensemble", *pred_args, "--out", str(tmp / "vote")]) == 0
    vote, _, affine = load_label(tmp / "vote" / "prediction_00180.nii.gz")
    np.testing.assert_array_equal(vote, majority_vote(labels))
    np.testing.assert_allclose(affine, case.affine)
    assert json.loads((tmp / "vote" / "ensemble.json").read_text())["rule"] == "nested"
    assert (
        main(
            [
                "ensemble",
                *pred_args,
                "--out",
                str(tmp / "plural"),
                "--rule",
                "plurality",
                "--tie-break",
                "lowest",
            ]
        )
        == 0
    )
    plural, _, _ = load_label(tmp / "plural" / "prediction_00180.nii.gz")
    np.testing.assert_array_equal(plural, majority_vote(labels, rule="plurality", tie_break="lowest"))
    assert (
        main(["ensemble", *pred_args, "--out", str(tmp / "bad"), "--tie-break", "lowest"]) == 2
    )  # nested: no ties
    assert not (tmp / "bad").exists()
    assert main(["ensemble", *pred_args, "--out", str(tmp / "avg"), "--method", "average"]) == 0
    avg, _, _ = load_label(tmp / "avg" / "prediction_00180.nii.gz")
    probs = [np.load(d / "probs_00180.npy").astype(np.float32) for d in dirs]
    np.testing.assert_array_equal(avg, argmax_label(average_probabilities(probs)))


def test_ensemble_cli_missing_inputs(three_folders, capsys):
    from kitsmsan.cli import main

    _, _, dirs, tmp = three_folders
    (dirs[1] / "probs_00180.npy").unlink()
    rc = main(["ensemble", "--pred", *map(str, dirs), "--out", str(tmp / "o"), "--method", "average"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "m1/probs_00180.npy" in err and "--save-probs" in err
    assert not (tmp / "o").exists()
    assert main(["ensemble", "--pred", *map(str, dirs), "--out", str(tmp / "o"), "--cases", "181"]) == 2
    assert "prediction_00181.nii.gz" in capsys.readouterr().err
