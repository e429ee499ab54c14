"""Tests of kitsmsan.uncertainty: bootstrap intervals by hand and against scipy, paired vs unpaired,
verdicts and sentences (degenerate runs, NaN cases), seed spread, and the resolvable-difference
simulation against brute force."""

from __future__ import annotations

import inspect
import itertools
import math
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from scipy import stats as sps

from kitsmsan import uncertainty as u
from kitsmsan.errors import DataError
from kitsmsan.metrics import dice_table, summarize
from kitsmsan.reproduce import PAPER_TABLE1

# ---------------------------------------------------------------- defaults


def test_defaults_are_stated_and_used():
    assert (u.CONFIDENCE, u.N_RESAMPLES, u.SEED, u.DEGENERATE_FLOOR, u.MIN_CASES) == (
        0.95,
        10_000,
        0,
        0.05,
        5,
    )
    assert u.RESOLUTION == 0.0005
    assert (u.ALPHA, u.POWER) == (0.05, 0.80)
    for fn in (u.bootstrap_ci, u.paired_bootstrap_ci, u.unpaired_bootstrap_ci, u.ci_table, u.paired_table):
        params = inspect.signature(fn).parameters
        assert params["confidence"].default == u.CONFIDENCE
        assert params["n_resamples"].default == u.N_RESAMPLES
        assert params["seed"].default == u.SEED
    iv = u.bootstrap_ci([0.1, 0.5, 0.9])
    assert (iv.confidence, iv.n_resamples, iv.seed) == (0.95, 10_000, 0)


# ---------------------------------------------------------------- by hand: 3 cases, 27 resamples


def test_three_cases_all_27_resamples_by_hand():
    x = np.array([0.2, 0.5, 0.8])
    # the 27 equally likely resamples: mean = 0.5 + 0.1 * S with S the sum of three draws of {-1, 0, 1}
    means = Counter(round(float(np.mean(x[list(idx)])), 10) for idx in itertools.product(range(3), repeat=3))
    assert means == {0.2: 1, 0.3: 3, 0.4: 6, 0.5: 7, 0.6: 6, 0.7: 3, 0.8: 1}
    # P(mean <= 0.2) = 1/27 = 3.7 %: above 2.5 % -> the 95 % interval is [0.2, 0.8];
    # P(mean <= 0.3) = 4/27 = 14.8 % and 1/27 < 5 % -> the 90 % interval is [0.3, 0.7].
    # 10,000 resamples put the empirical 2.5 % and 5 % quantiles >= 6 Monte Carlo SEs inside those bins.
    iv95 = u.bootstrap_ci(x)
    assert (iv95.estimate, iv95.low, iv95.high, iv95.n) == pytest.approx((0.5, 0.2, 0.8, 3), abs=1e-12)
    iv90 = u.bootstrap_ci(x, confidence=0.90)
    assert (iv90.low, iv90.high) == pytest.approx((0.3, 0.7), abs=1e-12)


def test_resample_indices_are_uniform_over_the_27_resamples():
    idx = u.resample_indices(3, n_resamples=27_000, seed=1)
    assert idx.shape == (27_000, 3) and idx.min() == 0 and idx.max() == 2
    counts = Counter(map(tuple, idx.tolist()))
    assert len(counts) == 27
    # each resample expected 1000 times, SD ~ 31: all within 5 SD
    assert all(abs(c - 1000) < 160 for c in counts.values())


def test_one_success_in_three_cases_binomial_by_hand():
    # x = [0, 0, 1]: resample mean = k/3, k ~ Binomial(3, 1/3): P(k=3) = 1/27 > 2.5 %, P(k=0) = 8/27
    iv = u.bootstrap_ci([0.0, 0.0, 1.0])
    assert (iv.estimate, iv.low, iv.high) == pytest.approx((1 / 3, 0.0, 1.0))


# ---------------------------------------------------------------- agreement with scipy.stats.bootstrap


@pytest.mark.parametrize("seed,confidence,n", [(0, 0.95, 10), (7, 0.90, 25), (123, 0.99, 6)])
def test_agrees_with_scipy_bootstrap_percentile(seed, confidence, n):
    rng = np.random.default_rng(1000 + seed)
    a = rng.uniform(0.5, 1.0, n)
    b = np.clip(a - 0.03 + rng.normal(0, 0.05, n), 0, 1)
    kw = {"method": "percentile", "n_resamples": u.N_RESAMPLES, "confidence_level": confidence}

    ours = u.bootstrap_ci(a, confidence=confidence, seed=seed)
    ref = sps.bootstrap((a,), np.mean, rng=np.random.default_rng(seed), **kw).confidence_interval
    assert (ours.low, ours.high) == pytest.approx((ref.low, ref.high), abs=1e-12)

    ours = u.paired_bootstrap_ci(a, b, confidence=confidence, seed=seed)
    ref = sps.bootstrap(
        (a, b),
        lambda x, y, axis=-1: (x - y).mean(axis=axis),
        paired=True,
        rng=np.random.default_rng(seed),
        **kw,
    ).confidence_interval
    assert (ours.low, ours.high) == pytest.approx((ref.low, ref.high), abs=1e-12)

    ours = u.unpaired_bootstrap_ci(a, b, confidence=confidence, seed=seed)
    ref = sps.bootstrap(
        (a, b),
        lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis),
        paired=False,
        rng=np.random.default_rng(seed),
        **kw,
    ).confidence_interval
    assert (ours.low, ours.high) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_same_seed_same_interval_other_seed_other_draw():
    x = np.random.default_rng(0).uniform(0, 1, 12)
    assert u.bootstrap_ci(x, seed=3) == u.bootstrap_ci(x, seed=3)
    assert u.bootstrap_ci(x, seed=3).low != u.bootstrap_ci(x, seed=4).low


# ---------------------------------------------------------------- paired vs unpaired


def test_paired_is_narrower_on_correlated_cases_and_decides():
    rng = np.random.default_rng(5)
    difficulty = rng.uniform(0.3, 0.95, 20)  # hard and easy cases, shared by both models
    base = difficulty + rng.normal(0, 0.01, 20)
    better = difficulty + 0.03 + rng.normal(0, 0.01, 20)  # 3 points better on every case, +- 1
    paired = u.paired_bootstrap_ci(better, base)
    unpaired = u.unpaired_bootstrap_ci(better, base)
    assert paired.estimate == pytest.approx(unpaired.estimate)
    assert paired.half_width < unpaired.half_width / 5
    assert u.verdict(paired) == u.BETTER
    assert u.verdict(unpaired) == u.UNRESOLVED
    assert u.verdict(u.paired_bootstrap_ci(base, better)) == u.WORSE


# ---------------------------------------------------------------- verdicts and sentences


def test_sentences_are_computed_from_the_interval():
    rng = np.random.default_rng(2)
    a = rng.uniform(0.8, 0.95, 10)
    better = u.paired_bootstrap_ci(a + 0.02 + rng.normal(0, 0.005, 10), a)
    s = u.compare_sentence(better, "MSAN-V1", "3D U-Net", "kidney")
    assert s.startswith("MSAN-V1 is better than 3D U-Net on kidney Dice: +2.")
    assert "95 % CI" in s and "paired bootstrap over 10 cases" in s and s.endswith("the interval excludes 0.")
    worse = u.paired_bootstrap_ci(a, a + 0.02 + rng.normal(0, 0.005, 10))
    assert "is worse than" in u.compare_sentence(worse, "x", "y")
    noisy = u.paired_bootstrap_ci(a + rng.normal(0, 0.05, 10), a)
    assert noisy.low < 0 < noisy.high
    s = u.compare_sentence(noisy, "V2", "V1", "tumour")
    assert s.startswith("V2 and V1 are not distinguishable on tumour Dice on these 10 cases:")
    assert "includes 0" in s


def test_degenerate_runs_give_no_verdict():
    zeros = np.zeros(6)
    iv = u.paired_bootstrap_ci(zeros, zeros)
    assert u.verdict(iv) == u.NO_VERDICT
    s = u.compare_sentence(iv, "MSAN-V2", "3D U-Net", "tumour")
    assert s == (
        "No verdict on tumour Dice for MSAN-V2 vs 3D U-Net: the runs are too short to compare: both "
        "arms score below 5 % mean Dice (0.0 % and 0.0 %)."
    )
    # the floor is on the arms' MEANS, 5 % Dice: a mean of 4.9 % beside 0 is too short to compare,
    # however the cases are spread; one arm at a mean of 5.1 % is a comparison
    spread = np.array([0.0, 0.0, 0.0, 0.0, 0.09, 0.204])  # mean 0.049, one case at 20 %
    assert u.verdict(u.paired_bootstrap_ci(spread, zeros)) == u.NO_VERDICT
    assert u.paired_bootstrap_ci(spread + 0.002, zeros).degenerate is None
    assert u.paired_bootstrap_ci(spread, zeros, floor=0.04).degenerate is None
    assert "too short to compare" in u.unpaired_bootstrap_ci(spread, zeros).degenerate
    # one model at 0 everywhere, the other at 0.4: a real comparison
    real = u.paired_bootstrap_ci(np.full(6, 0.4) + np.arange(6) / 100, zeros)
    assert u.verdict(real) == u.BETTER
    assert u.compare_sentence(real, "a", "b", "tumour").startswith("a is better than b on tumour Dice")


def test_short_runs_reported_on_the_ablation_page_give_no_verdict():
    # deep supervision, 120 iterations: tumour Dice 0.00 in every arm, small nonzero scraps on a case
    ds_on = np.array([0.0, 0.004, 0.0, 0.0, 0.0, 0.001])
    ds_off = np.array([0.0, 0.0, 0.003, 0.0, 0.0, 0.026])
    iv = u.paired_bootstrap_ci(ds_on, ds_off)
    assert u.verdict(iv) == u.NO_VERDICT
    assert "not distinguishable" not in u.compare_sentence(iv, "ds", "no ds", "tumour")
    # input depth: 1 slice at 0.01 beside 4 slices at 0.00, every case a little higher: the interval
    # excludes 0, yet both arms are below the floor, so no verdict
    one, four = np.array([0.005, 0.01, 0.02, 0.006, 0.008, 0.011]), np.zeros(6)
    depth = u.paired_bootstrap_ci(one, four)
    assert depth.low > 0 and u.verdict(depth) == u.NO_VERDICT
    s = u.compare_sentence(depth, "1 slice", "4 slices", "tumour")
    assert s.startswith(
        "No verdict on tumour Dice for 1 slice vs 4 slices: the runs are too short to compare"
    )
    assert "excludes 0" not in s


def test_an_interval_touching_zero_is_not_a_verdict():
    rng = np.random.default_rng(3)
    b = rng.uniform(0.5, 0.9, 8)
    # seven of eight cases differ by exactly 0: a third of the resamples miss the eighth, so the
    # lower end sits on 0
    touching = u.paired_bootstrap_ci(b + np.r_[np.zeros(7), 0.05], b)
    assert touching.low == 0 and touching.high > 0
    assert u.verdict(touching) == u.UNRESOLVED
    # every case 0.02 points better: the interval is above 0 but would read "+0.0 to +0.0"
    tiny = u.paired_bootstrap_ci(b + 0.0002, b)
    assert tiny.low > 0 and u.verdict(tiny) == u.UNRESOLVED
    assert "excludes 0" not in u.compare_sentence(tiny)
    assert u.verdict(tiny, resolution=0.0001) == u.BETTER
    # 0.1 points on every case clears the resolution
    assert u.verdict(u.paired_bootstrap_ci(b + 0.001, b)) == u.BETTER
    assert u.verdict(u.paired_bootstrap_ci(b - 0.001, b)) == u.WORSE


def test_identical_and_too_few_cases():
    a = np.array([0.8, 0.9, 0.7, 0.6, 0.5])
    iv = u.paired_bootstrap_ci(a, a.copy())
    assert iv.identical and u.verdict(iv) == u.IDENTICAL
    assert (
        u.compare_sentence(iv, "k = 2", "k = 1")
        == "k = 2 and k = 1 give the same kidney Dice on every one of the 5 cases."
    )
    # 4 cases: an interval, but no verdict, even for a clear difference; 5 cases: a verdict
    four = u.paired_bootstrap_ci(a[:4] + 0.1, a[:4] - np.array([0, 0.01, 0.0, 0.02]))
    assert four.low > 0 and u.verdict(four) == u.NO_VERDICT
    assert "4 cases are too few for a bootstrap verdict (it needs at least 5)" in u.compare_sentence(four)
    assert u.verdict(u.paired_bootstrap_ci(a + 0.1 + np.arange(5) / 100, a)) == u.BETTER
    assert (
        u.verdict(u.paired_bootstrap_ci(a[:4] + 0.1, a[:4] - np.array([0, 0.01, 0.0, 0.02]), min_cases=4))
        == u.BETTER
    )
    one = u.paired_bootstrap_ci([0.9], [0.8])
    assert math.isnan(one.low) and u.verdict(one) == u.NO_VERDICT
    assert "one case gives no interval" in u.compare_sentence(one)
    empty = u.bootstrap_ci([math.nan, math.nan])
    assert empty.n == 0 and empty.n_dropped == 2 and math.isnan(empty.estimate)


# ---------------------------------------------------------------- NaN cases


def test_nan_cases_are_skipped_like_the_kits_mean():
    rows = [
        {"case_id": f"case_{i:05d}", "kidney": k, "tumor": t, "composite": 0.0, "model": "m"}
        for i, (k, t) in enumerate([(0.9, 0.5), (0.8, math.nan), (0.95, 0.7), (0.85, 0.0)])
    ]
    table = dice_table(rows)
    ci = u.ci_table(table)
    s = summarize(table, by="model")
    assert ci.loc["m", "tumor"] == pytest.approx(s.loc["m", "tumor"]) == pytest.approx(0.4)
    assert ci.loc["m", "kidney"] == pytest.approx(s.loc["m", "kidney"])
    assert ci.loc["m", "tumor_n"] == s.loc["m", "n_tumor"] == 3
    iv, ref = u.bootstrap_ci(table["tumor"]), u.bootstrap_ci([0.5, 0.7, 0.0])
    assert (iv.estimate, iv.low, iv.high, iv.n, iv.n_dropped) == (ref.estimate, ref.low, ref.high, 3, 1)
    # paired: a case NaN in either model leaves the comparison
    p = u.paired_bootstrap_ci([0.5, math.nan, 0.7, 0.1], [0.4, 0.3, math.nan, 0.0])
    assert p.n == 2 and p.n_dropped == 2 and p.estimate == pytest.approx(0.1)


def test_status_rows_are_left_out_as_in_summarize():
    table = pd.DataFrame(
        {
            "case_id": ["a", "b", "c"],
            "model": "m",
            "kidney": [0.9, math.nan, 0.7],
            "tumor": [0.5, math.nan, 0.3],
            "composite": 0.0,
            "status": ["ok", "missing", "ok"],
        }
    )
    assert u.ci_table(table).loc["m", "kidney_n"] == 2


# ---------------------------------------------------------------- tables


def _per_case():
    rng = np.random.default_rng(9)
    cases = [f"case_{i:05d}" for i in range(180, 190)]
    k = rng.uniform(0.85, 0.95, 10)
    rows = []
    for model, shift in (("unet3d", 0.0), ("msan_v1", 0.03)):
        for c, kv in zip(cases, k):
            rows.append(
                {
                    "case_id": c,
                    "model": model,
                    "kidney": kv + shift + rng.normal(0, 0.003),
                    "tumor": 0.0,
                    "composite": 0.0,
                    "postprocess": 2,
                    "status": "ok",
                }
            )
    return pd.DataFrame(rows)


def test_paired_table_rows_verdicts_and_case_alignment():
    df = _per_case()
    out = u.paired_table(df, [("msan_v1", "unet3d")], names={"msan_v1": "MSAN-V1", "unet3d": "3D U-Net"})
    assert list(out["region"]) == ["kidney", "tumor"]
    assert list(out["verdict"]) == [u.BETTER, u.NO_VERDICT]
    assert out.loc[1, "sentence"].startswith("No verdict on tumour Dice for MSAN-V1 vs 3D U-Net")
    # case order does not matter: the cases are matched by id
    shuffled = df.sample(frac=1.0, random_state=0)
    again = u.paired_table(shuffled, [("msan_v1", "unet3d")])
    assert again.loc[0, "low"] == out.loc[0, "low"]
    assert u.ci_table(shuffled).loc["unet3d", "kidney_low"] == u.ci_table(df).loc["unet3d", "kidney_low"]
    with pytest.raises(DataError, match="different cases"):
        u.paired_table(df.drop(index=0), [("msan_v1", "unet3d")])
    with pytest.raises(DataError, match="msan_v9"):
        u.paired_table(df, [("msan_v9", "unet3d")])
    twice = pd.concat([df, df.assign(postprocess=1)])
    with pytest.raises(DataError, match="appears twice"):
        u.paired_table(twice, [("msan_v1", "unet3d")])


def test_bad_input_names_the_problem():
    with pytest.raises(DataError, match="1-D"):
        u.bootstrap_ci(np.zeros((3, 2)))
    with pytest.raises(DataError, match="confidence"):
        u.bootstrap_ci([0.1, 0.2], confidence=95)
    with pytest.raises(DataError, match="same cases"):
        u.paired_bootstrap_ci([0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="infinite"):
        u.bootstrap_ci([0.1, math.inf])


# ---------------------------------------------------------------- seeds


def test_across_seeds_mean_sd_and_text():
    s = u.across_seeds([0.8, 0.9, 1.0])
    assert (s.mean, s.sd, s.min, s.max, s.n_seeds) == pytest.approx((0.9, 0.1, 0.8, 1.0, 3))
    assert s.format() == "90.0 ± 10.0 (3 seeds, 80.0–100.0)"
    one = u.across_seeds([0.7, math.nan])
    assert one.n_seeds == 1 and math.isnan(one.sd) and one.format() == "70.0 (1 seed, no spread)"
    tab = u.seed_table(
        pd.DataFrame(
            {"model": ["a"] * 3, "seed": [0, 1, 2], "kidney": [0.8, 0.9, 1.0], "tumor": [0.1, 0.2, 0.3]}
        )
    )
    assert tab.loc["a", "kidney_sd"] == pytest.approx(0.1) and tab.loc["a", "n_seeds"] == 3
    with pytest.raises(DataError, match="twice"):
        u.seed_table(
            pd.DataFrame({"model": ["a"] * 2, "seed": [0, 0], "kidney": [0.8, 0.9], "tumor": [0, 0]})
        )


# ---------------------------------------------------------------- resolvable differences


def test_difference_sd_and_bounds_by_hand():
    assert u.difference_sd(0.1, rho=0.5) == pytest.approx(0.1)  # sqrt(0.01 + 0.01 - 0.01)
    assert u.difference_sd(0.1, rho=1.0) == pytest.approx(0.0)
    assert u.difference_sd(0.3, 0.4, rho=0.0) == pytest.approx(0.5)
    assert u.max_sd(0.5) == pytest.approx(0.5) and u.max_sd(0.9) == pytest.approx(0.3)
    with pytest.raises(DataError, match="rho"):
        u.difference_sd(0.1, rho=1.5)


def test_ci_half_width_by_hand():
    # t_{0.975, 9} = 2.262157
    assert u.ci_half_width(0.1, 10) == pytest.approx(2.262157 * 0.1 / math.sqrt(10), rel=1e-6)


def test_mdd_has_the_stated_power_by_brute_force():
    sd = 0.2
    mdd = u.min_detectable_difference(sd, 10)
    assert u.paired_power(mdd, sd, 10) == pytest.approx(0.80, abs=1e-8)
    # normal-theory approximation (t quantiles) is close
    approx = (sps.t.ppf(0.975, 9) + sps.t.ppf(0.80, 9)) * sd / math.sqrt(10)
    assert mdd == pytest.approx(approx, rel=0.03)
    # 20,000 simulated comparisons: Monte Carlo SE of 0.80 is 0.0028; 0.015 is > 5 SE
    assert u.simulate_power(mdd, sd, 10, n_sims=20_000, seed=1) == pytest.approx(0.80, abs=0.015)
    assert u.simulate_power(0.0, sd, 10, n_sims=20_000, seed=2) == pytest.approx(0.05, abs=0.008)
    assert u.paired_power(0.0, sd, 10) == pytest.approx(0.05)


def test_mdd_falls_with_n_and_grows_with_the_spread():
    by_n = [u.min_detectable_difference(0.1, n) for n in (3, 5, 10, 20, 40, 100)]
    assert all(x > y for x, y in itertools.pairwise(by_n))
    by_sd = [u.min_detectable_difference(sd, 10) for sd in (0.01, 0.05, 0.1, 0.3)]
    assert all(x < y for x, y in itertools.pairwise(by_sd))
    assert by_sd[1] == pytest.approx(5 * by_sd[0])  # linear in the SD


def test_cases_needed_is_the_first_n_with_the_power():
    n = u.cases_needed(0.02, 0.05)
    assert u.paired_power(0.02, 0.05, n) >= 0.8 > u.paired_power(0.02, 0.05, n - 1)
    assert u.cases_needed(0.0, 0.05) is None


def test_percentile_bootstrap_on_ten_cases_rejects_more_often_than_alpha():
    # the reason the page says so: on 10 cases the 95 % percentile interval excludes 0 in ~10 % of
    # comparisons of two equal models (2,000 simulations: SE 0.7 %)
    rate = u.simulate_power(0.0, 0.1, 10, test="bootstrap", n_sims=2_000, n_resamples=1_000, seed=3)
    assert 0.07 < rate < 0.13


def test_paper_differences_from_table1():
    d = u.paper_differences(PAPER_TABLE1)
    assert len(d) == 8  # 4 comparisons x 2 regions; V1 with DS has no row
    row = d[(d["a"] == "msan_v1") & (d["region"] == "tumor")].iloc[0]
    assert row["difference"] == pytest.approx(56.00 - 46.90)
    row = d[(d["a"] == "msan_v2_ds") & (d["region"] == "kidney")].iloc[0]
    assert row["difference"] == pytest.approx(93.01 - 93.85)


def test_resolvable_table_and_plot():
    d = u.paper_differences(PAPER_TABLE1)
    t = u.resolvable_table(d, {"kidney": 0.04, "tumor": 0.25}, rho=0.7, n=10)
    k = t[t["region"] == "kidney"].iloc[0]
    sd_d = u.difference_sd(0.04, rho=0.7)
    assert k["sd_diff"] == pytest.approx(100 * sd_d)
    assert k["mdd"] == pytest.approx(100 * u.min_detectable_difference(sd_d, 10))
    assert k["resolvable"] == (abs(k["difference"]) >= k["mdd"])
    # with no spread at all everything would be resolvable
    assert u.resolvable_table(d, {"kidney": 0.0, "tumor": 0.0})["resolvable"].all()
    fig = u.plot_resolvable(d, {"kidney": (0.02, 0.04, 0.08), "tumor": (0.15, 0.25, 0.35)})
    assert len(fig.axes) == 2
    ax = fig.axes[1]
    pts = np.concatenate([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
    assert sorted(np.round(pts[:, 1], 2)) == sorted(
        np.round(d[d["region"] == "tumor"]["difference"].abs(), 2)
    )
    assert set(pts[:, 0]) == {10}
    # the line is the central SD at the central correlation the tables use (not the range's middle)
    fig2 = u.plot_resolvable(
        d, {"tumor": (0.15, 0.25, 0.35)}, rho_range=(0.7, 0.99), rho=0.9, n_max=12, n_paper=10
    )
    line = fig2.axes[0].get_lines()[0]
    at10 = float(np.interp(10, line.get_xdata(), line.get_ydata()))
    assert at10 == pytest.approx(100 * u.min_detectable_difference(u.difference_sd(0.25, rho=0.9), 10))
    assert "ρ 0.90" in line.get_label()
    with pytest.raises(DataError, match="outside rho_range"):
        u.plot_resolvable(d, {"tumor": (0.15, 0.25, 0.35)}, rho_range=(0.7, 0.8), rho=0.9)
    # read at the book's column width: no text under 10 pt, the dots' labels clear of each other
    from matplotlib.text import Text

    from kitsmsan.viz import display_points

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_text() and t.get_visible()]
    assert min(display_points(fig, t.get_fontsize()) for t in texts) >= 10
    for axis in fig.axes:
        boxes = [Text.get_window_extent(t, renderer) for t in axis.texts]  # the label, not its leader line
        assert len(boxes) >= 4
        assert not [
            (i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])
        ]


def test_measured_spread_by_hand():
    # two models on 3 cases: kidney a = [0.8, 0.9, 1.0], b = a - 0.1 -> SD 0.1 each, rho 1, SD of diff 0
    df = pd.DataFrame(
        {
            "case_id": ["c1", "c2", "c3"] * 2,
            "model": ["a"] * 3 + ["b"] * 3,
            "kidney": [0.8, 0.9, 1.0, 0.7, 0.8, 0.9],
            "tumor": [0.0] * 6,
        }
    )
    m = u.measured_spread(df)
    assert m.loc["kidney", "sd"] == pytest.approx(0.1) and m.loc["kidney", "rho"] == pytest.approx(1.0)
    assert m.loc["kidney", "sd_diff"] == pytest.approx(0.0, abs=1e-12)
    assert m.loc["kidney", "mean"] == pytest.approx(0.85) and m.loc["kidney", "n_cases"] == 3
    assert m.loc["tumor", "sd"] == 0.0 and math.isnan(m.loc["tumor", "rho"])  # constant: no correlation
    # anti-correlated third case
    df.loc[5, "kidney"] = 0.5
    assert u.measured_spread(df).loc["kidney", "rho"] < 0.5
    with pytest.raises(DataError, match="twice"):
        u.measured_spread(pd.concat([df, df]))


@pytest.mark.slow
def test_how_sure_notebook_runs_and_measures_a_run(tmp_path):
    """notebooks/07_how_sure.ipynb executes with papermill (seconds) and reads a per-case table."""
    pm = pytest.importorskip("papermill")
    nbformat = pytest.importorskip("nbformat")
    root = Path(__file__).resolve().parent.parent
    rng = np.random.default_rng(0)
    k = rng.uniform(0.8, 0.95, 6)
    rows = [
        {
            "case_id": f"case_{i:05d}",
            "model": m,
            "postprocess": 2,
            "status": "ok",
            "kidney": k[i] + rng.normal(0, 0.01),
            "tumor": 0.0,
            "composite": 0.0,
        }
        for m in ("unet3d", "msan_v1", "ensemble")
        for i in range(6)
    ]
    (tmp_path / "evaluation").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "evaluation" / "per_case.csv", index=False)
    out = tmp_path / "07.ipynb"
    pm.execute_notebook(
        str(root / "notebooks" / "07_how_sure.ipynb"),
        str(out),
        cwd=str(root),
        parameters={"smoke": True, "runs_dir": str(tmp_path), "reference_dir": ""},
        progress_bar=False,
        kernel_name="python3",
    )
    nb = nbformat.read(out, as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    text = "\n".join(
        str(o.get("data", {}).get("text/markdown", "")) + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )
    assert "Measured from" in text and "of its 8" in text
    # without a reference record the page says its spreads are assumptions, and which
    assert (
        "(SD kidney 0.040, tumour 0.250; ρ kidney 0.70, tumour 0.70; assumed (no reference record))" in text
    )
    assert sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])) >= 1


def test_ci_markdown_and_verdict_summary():
    df = _per_case()
    md = u.ci_markdown(u.ci_table(df), names={"unet3d": "3D U-Net"})
    lines = md.splitlines()
    assert lines[0] == "| model | Kidney (95 % CI) | Tumour (95 % CI) | cases |"
    row = u.ci_table(df).loc["unet3d"]
    assert lines[2] == (
        f"| 3D U-Net | {100 * row['kidney']:.1f} [{100 * row['kidney_low']:.1f}, "
        f"{100 * row['kidney_high']:.1f}] | 0.0 [0.0, 0.0] | 10 |"
    )
    comps = u.paired_table(df, [("msan_v1", "unet3d")])
    assert u.summarize_verdicts(comps) == (
        "kidney: 1 of 1 comparisons better; tumour: no verdict in 1 of 1 "
        "(too few cases, or runs too short to compare)."
    )
    mixed = pd.DataFrame({"region": ["kidney"] * 3, "verdict": [u.UNRESOLVED, u.BETTER, u.UNRESOLVED]})
    assert u.summarize_verdicts(mixed) == "kidney: 1 of 3 comparisons better, 2 not distinguishable."


def test_ci_table_by_two_columns_is_the_postprocessing_table():
    df = pd.concat([_per_case(), _per_case().assign(postprocess=1, kidney=lambda d: d["kidney"] - 0.1)])
    ci = u.ci_table(df, by=["model", "postprocess"])
    assert list(ci.index.names) == ["model", "postprocess"] and len(ci) == 4
    s = summarize(df, by=["model", "postprocess"])
    assert ci.loc[("unet3d", 1), "kidney"] == pytest.approx(s.loc[("unet3d", 1), "kidney"])
    md = u.ci_markdown(ci, names={"unet3d": "3D U-Net"})
    assert md.splitlines()[0].startswith("| model, postprocess | Kidney (95 % CI)")
    assert "| 3D U-Net, 1 |" in md
