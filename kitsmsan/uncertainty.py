"""How sure a Dice comparison is: case-level bootstrap intervals, paired differences, the spread over
training seeds, the sentence that compares two models, and how small a difference a test set of a
given size can resolve (MSAN paper, §3.2, Table 1).

The paper's Table 1 compares five models by their mean Dice on ten test cases, one training run each,
without an interval. This module puts an interval on every such number and lets the interval, not
the writer, decide the sentence:

* :func:`bootstrap_ci` — percentile bootstrap interval of a mean Dice over cases (one region);
* :func:`paired_bootstrap_ci` — the same for the difference of two models scored on the **same**
  cases (the cases are resampled together, so a case that is hard for both does not widen the
  interval); :func:`unpaired_bootstrap_ci` resamples the two independently, for contrast;
* :func:`across_seeds` — mean ± standard deviation of a number over training seeds;
* :func:`verdict` / :func:`compare_sentence` — "better", "worse", "not distinguishable", or no
  verdict at all when the runs are too short to compare or the cases too few (the rule below);
* :func:`ci_table` / :func:`paired_table` (and :func:`ci_markdown`, :func:`summarize_verdicts`) — the
  above over a per-case table of
  :func:`kitsmsan.metrics.evaluate_folder` / :func:`kitsmsan.metrics.dice_table`;
* :func:`min_detectable_difference`, :func:`ci_half_width`, :func:`cases_needed`,
  :func:`simulate_power`, :func:`resolvable_table`, :func:`plot_resolvable` — a *simulation* of what
  a paired comparison on ``n`` cases can resolve, given assumed per-case spreads
  (:func:`measured_spread` measures them from a run, to set beside the assumptions).

The verdict rule (:func:`verdict`), for the paired difference ``a − b`` on the cases both define:

1. **No verdict** when both arms' mean Dice over those cases is below :data:`DEGENERATE_FLOOR`
   (5 % Dice): the runs are too short to compare. A mean Dice under 5 % means the network has not
   yet found the region — the weakest tumour Dice of the paper's Table 1 (3D U-Net, 46.9 %) is
   more than nine times higher — so a difference between two such arms measures which one
   started to hit the region a few iterations earlier, not which design segments it better. One arm above the floor (a 0 % arm
   beside a 40 % arm) is a real comparison.
2. **No verdict** on fewer than :data:`MIN_CASES` cases, or with fewer than two (no interval).
3. **"identical"** when the two agree on every case.
4. **"better"** / **"worse"** when the whole interval lies above / below 0 by at least
   :data:`RESOLUTION` (0.05 Dice points, half the last digit the sentences write): an end that
   touches 0 — an interval that is 0 on one side, as when most cases differ by exactly 0 — or one
   that would be written "+0.0" does not exclude 0.
5. Otherwise **"not distinguishable"**.

Conventions:

* Dice values are fractions in [0, 1] (as :func:`kitsmsan.metrics.kits_dice` returns them);
  sentences and the Table 1 helpers speak in percentage points (× 100), like the paper.
* **NaN cases** (the region is empty in both prediction and ground truth, see
  :mod:`kitsmsan.metrics`) are skipped, as the official KiTS19 mean and
  :func:`kitsmsan.metrics.summarize` skip them (``nanmean``): the interval of a mean is the
  interval of the mean over the cases that define the region, and ``n`` says how many. A paired
  difference uses the cases where **both** models are defined.
* Bootstrap defaults: :data:`N_RESAMPLES` = 10,000 resamples, :data:`CONFIDENCE` = 0.95, seed
  :data:`SEED` = 0, drawn as ``numpy.random.default_rng(seed).integers(0, n, (n_resamples, n))``
  and cut at the linear-interpolation quantiles ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
  — the same resamples and the same cut as ``scipy.stats.bootstrap(..., method="percentile",
  rng=numpy.random.default_rng(seed))``, so the two agree to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

from kitsmsan.errors import DataError
from kitsmsan.metrics import REGIONS
from kitsmsan.viz import BOOK_COLUMN_IN, FONT_LABEL, FONT_LEGEND, FONT_TICK, FONT_TITLE, REGION_COLORS

#: confidence level of every interval (two-sided)
CONFIDENCE = 0.95
#: bootstrap resamples of every interval
N_RESAMPLES = 10_000
#: seed of the bootstrap resampling
SEED = 0
#: a comparison where both arms' mean Dice is below this is no comparison (e.g. tumour Dice 0.00
#: and 0.01 after 120 CPU iterations): the runs are too short to compare (rule 1 of the module text)
DEGENERATE_FLOOR = 0.05
#: a "better" or "worse" needs the interval to clear 0 by at least this (a fraction: 0.05 Dice
#: points, half the 0.1-point digit of the sentences), so no "+0.0 to +3.0" is said to exclude 0
RESOLUTION = 0.0005
#: fewest cases on which a difference gets a verdict: below 5 a percentile bootstrap has at most 35
#: distinct resample means and declares a winner between two equal models in about 16 % or more
#: of comparisons at a nominal 5 % (simulated on the "How sure" page)
MIN_CASES = 5
#: significance level and power of the minimum detectable difference
ALPHA = 0.05
POWER = 0.80

#: the comparisons the paper's Table 1 invites, as (model, reference) keys of
#: :data:`kitsmsan.reproduce.PAPER_TABLE1`: each step of the paper's story (§2.2, §3.1)
PAPER_COMPARISONS: tuple[tuple[str, str], ...] = (
    ("msan_v1", "unet3d"),
    ("msan_v2", "msan_v1"),
    ("msan_v2_ds", "msan_v2"),
    ("ensemble", "msan_v2_ds"),
)

#: verdicts of :func:`verdict`
BETTER, WORSE, UNRESOLVED, IDENTICAL, NO_VERDICT = (
    "better",
    "worse",
    "not distinguishable",
    "identical",
    "no verdict",
)


# --------------------------------------------------------------------------------------------
# intervals
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval.

    Attributes:
        estimate: the statistic on the data (a mean Dice, or a mean difference), a fraction.
        low, high: the interval's ends (NaN when no interval exists: fewer than 2 cases).
        n: number of cases that entered (NaN cases excluded).
        kind: ``"mean"``, ``"paired difference"`` or ``"unpaired difference"``.
        confidence, n_resamples, seed: how the interval was drawn.
        n_dropped: cases left out because they were NaN.
        degenerate: None, or why no verdict can be drawn from this interval (a phrase that
            completes "No verdict: ...").
        floor: the Dice floor used for :attr:`degenerate` (differences only).
    """

    estimate: float
    low: float
    high: float
    n: int
    kind: str = "mean"
    confidence: float = CONFIDENCE
    n_resamples: int = N_RESAMPLES
    seed: int | None = SEED
    n_dropped: int = 0
    degenerate: str | None = None
    floor: float = DEGENERATE_FLOOR
    identical: bool = False

    @property
    def half_width(self) -> float:
        """Half the interval's width (NaN when there is no interval)."""
        return (self.high - self.low) / 2.0

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (False when there is none)."""
        return bool(self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for tables and JSON)."""
        return asdict(self)

    def format(self, scale: float = 100.0, digits: int = 1, signed: bool | None = None) -> str:
        """``"89.7 [85.1, 93.0]"`` (``scale`` 100: percent / points); ``signed`` defaults to
        True for differences."""
        signed = self.kind != "mean" if signed is None else signed
        sign = "+" if signed else ""

        def f(v: float) -> str:
            return "n/a" if not math.isfinite(v) else f"{scale * v:{sign}.{digits}f}"

        return f"{f(self.estimate)} [{f(self.low)}, {f(self.high)}]"


def _values(values: Any, name: str) -> np.ndarray:
    """``values`` as a 1-D float array, else :class:`DataError` naming it."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise DataError(f"{name}: expected one value per case (a 1-D sequence), got shape {arr.shape}")
    if np.any(np.isinf(arr)):
        raise DataError(f"{name}: infinite Dice value; Dice lies in [0, 1] (or NaN for an empty region)")
    return arr


def _check_options(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise DataError(f"confidence={confidence!r}: expected a level strictly between 0 and 1")
    if int(n_resamples) < 1:
        raise DataError(f"n_resamples={n_resamples!r}: expected at least 1 resample")


def resample_indices(n: int, n_resamples: int = N_RESAMPLES, seed: int | None = SEED) -> np.ndarray:
    """The bootstrap resamples of ``n`` cases: ``(n_resamples, n)`` indices drawn with replacement.

    ``numpy.random.default_rng(seed).integers(0, n, (n_resamples, n))``: the draw
    ``scipy.stats.bootstrap`` makes with the same generator (defaults: 10,000 resamples, seed 0).
    """
    return np.random.default_rng(seed).integers(0, n, (int(n_resamples), n))


def percentile_interval(distribution: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile interval of a bootstrap distribution: its linear-interpolation quantiles at
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` (default confidence 0.95)."""
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.asarray(distribution, dtype=np.float64), [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(
    values: Any, *, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int | None = SEED
) -> Interval:
    """Case-level percentile bootstrap interval of a mean Dice (one region, one model).

    Args:
        values: one Dice per case (fractions; NaN for a case where the region is empty in both
            prediction and ground truth — skipped, as the KiTS19 mean skips it).
        confidence: two-sided level, default 0.95.
        n_resamples: bootstrap resamples, default 10,000.
        seed: seed of ``numpy.random.default_rng``, default 0.

    Returns:
        An :class:`Interval` of kind ``"mean"``; with 0 or 1 defined cases its ends are NaN (0 cases:
        the estimate too) and :attr:`Interval.degenerate` says why.

    Raises:
        DataError: ``values`` is not one number per case, or an option is out of range.
    """
    _check_options(confidence, n_resamples)
    x = _values(values, "values")
    keep = x[~np.isnan(x)]
    dropped = int(x.size - keep.size)
    common = {
        "kind": "mean",
        "confidence": confidence,
        "n_resamples": int(n_resamples),
        "seed": seed,
        "n_dropped": dropped,
    }
    if keep.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, degenerate="no case defines this region", **common)
    if keep.size == 1:
        return Interval(
            float(keep[0]), math.nan, math.nan, 1, degenerate="one case gives no interval", **common
        )
    boot = keep[resample_indices(keep.size, n_resamples, seed)].mean(axis=1)
    low, high = percentile_interval(boot, confidence)
    return Interval(float(keep.mean()), low, high, int(keep.size), **common)


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Two per-case score vectors aligned case by case (pandas Series are aligned on their index)."""
    if hasattr(a, "index") and hasattr(b, "index") and hasattr(a, "reindex"):
        if set(a.index) != set(b.index):
            only_a = sorted(map(str, set(a.index) - set(b.index)))
            only_b = sorted(map(str, set(b.index) - set(a.index)))
            raise DataError(
                f"paired comparison: the two models were scored on different cases "
                f"(only in the first: {only_a or 'none'}; only in the second: {only_b or 'none'})"
            )
        b = b.reindex(a.index)
    x, y = _values(a, "a"), _values(b, "b")
    if x.shape != y.shape:
        raise DataError(
            f"paired comparison: {x.size} cases in the first model, {y.size} in the second; "
            "a paired comparison needs the same cases"
        )
    return x, y


def _too_short(mean_a: float, mean_b: float, floor: float) -> str:
    """The reason of rule 1: both mean Dice below the floor."""
    return (
        f"the runs are too short to compare: both arms score below {100 * floor:g} % mean Dice "
        f"({100 * mean_a:.1f} % and {100 * mean_b:.1f} %)"
    )


def _degenerate_pair(x: np.ndarray, y: np.ndarray, floor: float, min_cases: int) -> str | None:
    """Why a comparison of two score vectors (NaN-free, same cases) cannot be read, or None."""
    n = x.size
    if n == 0:
        return "no case is defined in both models"
    if n == 1:
        return "one case gives no interval"
    if x.mean() < floor and y.mean() < floor:
        return _too_short(x.mean(), y.mean(), floor)
    if n < min_cases:
        return f"{n} cases are too few for a bootstrap verdict (it needs at least {min_cases})"
    return None


def paired_bootstrap_ci(
    a: Any,
    b: Any,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int | None = SEED,
    floor: float = DEGENERATE_FLOOR,
    min_cases: int = MIN_CASES,
) -> Interval:
    """Paired case-level bootstrap interval of ``mean(a - b)``: two models scored on the same cases.

    The cases are resampled together (one index draws case ``i`` of both models), which is
    ``scipy.stats.bootstrap((a, b), lambda a, b, axis: (a - b).mean(axis), paired=True)``.

    Args:
        a, b: per-case Dice of the two models, in the same case order (or pandas Series, aligned on
            their index). A case where either is NaN is skipped (counted in ``n_dropped``).
        confidence: two-sided level, default 0.95.
        n_resamples: default 10,000.
        seed: default 0.
        floor: when both models' mean Dice over the paired cases is below it (default
            :data:`DEGENERATE_FLOOR` = 0.05) the runs are too short to compare: no verdict.
        min_cases: fewer cases than this (default :data:`MIN_CASES` = 5) give an interval but no
            verdict.

    Returns:
        An :class:`Interval` of kind ``"paired difference"`` (fractions; ``a`` minus ``b``);
        :attr:`Interval.identical` is True when the two agree on every case.

    Raises:
        DataError: the two were not scored on the same cases, or an option is out of range.
    """
    _check_options(confidence, n_resamples)
    x, y = _pair(a, b)
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    d = x - y
    common = {
        "kind": "paired difference",
        "confidence": confidence,
        "n_resamples": int(n_resamples),
        "seed": seed,
        "n_dropped": int(ok.size - ok.sum()),
        "floor": floor,
    }
    why = _degenerate_pair(x, y, floor, min_cases)
    if d.size < 2:
        est = float(d.mean()) if d.size else math.nan
        return Interval(est, math.nan, math.nan, int(d.size), degenerate=why, **common)
    boot = d[resample_indices(d.size, n_resamples, seed)].mean(axis=1)
    low, high = percentile_interval(boot, confidence)
    return Interval(
        float(d.mean()), low, high, int(d.size), degenerate=why, identical=bool(np.all(d == 0)), **common
    )


def unpaired_bootstrap_ci(
    a: Any,
    b: Any,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int | None = SEED,
    floor: float = DEGENERATE_FLOOR,
    min_cases: int = MIN_CASES,
) -> Interval:
    """Bootstrap interval of ``mean(a) - mean(b)`` resampling the two groups independently.

    This ignores that the two models saw the same cases; it is here to show what pairing buys
    (on correlated per-case scores this interval is wider than :func:`paired_bootstrap_ci`).
    Same resamples as ``scipy.stats.bootstrap((a, b), ..., paired=False)``: ``a``'s indices
    are drawn first, then ``b``'s, from one generator. NaN cases are skipped in each group.

    Args:
        a, b: per-case Dice of the two groups (lengths may differ).
        confidence, n_resamples, seed, floor, min_cases: as :func:`paired_bootstrap_ci` (0.95,
            10,000, 0, 0.05, 5).

    Returns:
        An :class:`Interval` of kind ``"unpaired difference"`` (``n`` = the smaller group).
    """
    _check_options(confidence, n_resamples)
    x, y = _values(a, "a"), _values(b, "b")
    xd, yd = x[~np.isnan(x)], y[~np.isnan(y)]
    common = {
        "kind": "unpaired difference",
        "confidence": confidence,
        "n_resamples": int(n_resamples),
        "seed": seed,
        "n_dropped": int(x.size - xd.size + y.size - yd.size),
        "floor": floor,
    }
    n = int(min(xd.size, yd.size))
    why = None
    if n < 2:
        why = "fewer than two defined cases in a group"
    elif xd.mean() < floor and yd.mean() < floor:
        why = _too_short(xd.mean(), yd.mean(), floor)
    elif n < min_cases:
        why = f"{n} cases are too few for a bootstrap verdict (it needs at least {min_cases})"
    if n < 2:
        est = float(xd.mean() - yd.mean()) if n else math.nan
        return Interval(est, math.nan, math.nan, n, degenerate=why, **common)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, xd.size, (int(n_resamples), xd.size))
    ib = rng.integers(0, yd.size, (int(n_resamples), yd.size))
    boot = xd[ia].mean(axis=1) - yd[ib].mean(axis=1)
    low, high = percentile_interval(boot, confidence)
    return Interval(float(xd.mean() - yd.mean()), low, high, n, degenerate=why, **common)


# --------------------------------------------------------------------------------------------
# verdicts
# --------------------------------------------------------------------------------------------


def verdict(interval: Interval, resolution: float = RESOLUTION) -> str:
    """The verdict an interval of a difference supports (the rule of the module text).

    Args:
        interval: from :func:`paired_bootstrap_ci` or :func:`unpaired_bootstrap_ci`.
        resolution: how far (a fraction) the interval must clear 0 for "better" / "worse";
            default :data:`RESOLUTION` = 0.0005 (0.05 Dice points).

    Returns:
        :data:`NO_VERDICT` (runs too short to compare, too few cases, or no interval),
        :data:`IDENTICAL` (the two agree on every case), :data:`BETTER` (the whole interval at
        least ``resolution`` above 0), :data:`WORSE` (below 0), else :data:`UNRESOLVED`
        ("not distinguishable").
    """
    if interval.degenerate is not None or not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        return NO_VERDICT
    if interval.identical:
        return IDENTICAL
    if interval.low >= resolution:
        return BETTER
    if interval.high <= -resolution:
        return WORSE
    return UNRESOLVED


def compare_sentence(
    interval: Interval,
    a: str = "A",
    b: str = "B",
    region: str = "kidney",
    *,
    scale: float = 100.0,
    digits: int = 1,
) -> str:
    """The sentence that compares model ``a`` with model ``b``, computed from the interval of ``a − b``.

    Args:
        interval: from :func:`paired_bootstrap_ci` (or :func:`unpaired_bootstrap_ci`) of ``a − b``.
        a, b: display names of the two models.
        region: the scored region, as written in the sentence (``"kidney"``, ``"tumour"``).
        scale: 100 (default) writes the difference in Dice percentage points.
        digits: decimals (default 1).

    Returns:
        One sentence, e.g. "MSAN-V1 is better than 3D U-Net on kidney Dice: +2.8 points (95 % CI
        +1.1 to +4.6, paired bootstrap over 10 cases); the interval excludes 0." — or "... are not
        distinguishable on these 10 cases ...", or "No verdict on tumour Dice for A vs B: the runs
        are too short to compare: both arms score below 5 % mean Dice (0.0 % and 1.0 %)."
    """
    v = verdict(interval)
    n = interval.n
    conf = f"{100 * interval.confidence:g} %"
    how = "paired bootstrap" if interval.kind == "paired difference" else "bootstrap"

    def pts(x: float) -> str:
        text = f"{scale * x:+.{digits}f}"
        return text[1:] if float(text) == 0 else text  # "0.0", never "-0.0" or "+0.0"

    if v == NO_VERDICT:
        why = interval.degenerate or "no interval could be computed"
        return f"No verdict on {region} Dice for {a} vs {b}: {why}."
    if v == IDENTICAL:
        return f"{a} and {b} give the same {region} Dice on every one of the {n} cases."
    ci = f"{conf} CI {pts(interval.low)} to {pts(interval.high)}"
    if v in (BETTER, WORSE):
        word = "better" if v == BETTER else "worse"
        return (
            f"{a} is {word} than {b} on {region} Dice: {pts(interval.estimate)} points ({ci}, {how} "
            f"over {n} cases); the interval excludes 0."
        )
    inside = interval.low <= 0 <= interval.high
    return (
        f"{a} and {b} are not distinguishable on {region} Dice on these {n} cases: "
        f"{pts(interval.estimate)} points ({ci}, {how}); the interval "
        + ("includes 0." if inside else f"clears 0 by less than {100 * RESOLUTION:g} points.")
    )


# --------------------------------------------------------------------------------------------
# per-case tables
# --------------------------------------------------------------------------------------------


def _ok_rows(per_case):
    """The rows :func:`kitsmsan.metrics.summarize` uses: ``status == "ok"`` where there is a status."""
    if "status" in per_case.columns:
        return per_case[per_case["status"] == "ok"]
    return per_case


def ci_table(
    per_case,
    *,
    by: str | Sequence[str] = "model",
    regions: Sequence[str] = REGIONS,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int | None = SEED,
):
    """Mean Dice with its bootstrap interval per group and region.

    Args:
        per_case: per-case table (:func:`kitsmsan.metrics.dice_table`) with ``case_id``, ``by`` and
            the ``regions`` columns (cases are resampled in case-id order); rows whose ``status`` is not ``"ok"`` are left out, as in
            :func:`kitsmsan.metrics.summarize`.
        by: group column(s), default ``"model"`` (``["model", "postprocess"]`` gives the
            post-processing table).
        regions: default :data:`kitsmsan.metrics.REGIONS` (``kidney``, ``tumor``).
        confidence, n_resamples, seed: as :func:`bootstrap_ci` (0.95, 10,000, 0).

    Returns:
        ``pandas.DataFrame`` indexed by group (a MultiIndex for several columns) with, per region, ``<region>``, ``<region>_low``,
        ``<region>_high``, ``<region>_n`` (fractions) — the means equal :func:`summarize`'s.
    """
    df = _ok_rows(per_case)
    keys = [by] if isinstance(by, str) else list(by)
    for col in (*keys, *regions):
        if col not in df.columns:
            raise DataError(f"ci_table: per-case table has no column {col!r}")
    out, index = [], []
    for key, sub in df.groupby(keys if len(keys) > 1 else keys[0], sort=False):
        if "case_id" in sub.columns:  # case-id order: the resamples do not depend on the row order
            sub = sub.sort_values("case_id", kind="stable")
        row: dict[str, Any] = {}
        for region in regions:
            iv = bootstrap_ci(
                pd.to_numeric(sub[region], errors="coerce").to_numpy(),
                confidence=confidence,
                n_resamples=n_resamples,
                seed=seed,
            )
            row.update(
                {region: iv.estimate, f"{region}_low": iv.low, f"{region}_high": iv.high, f"{region}_n": iv.n}
            )
        out.append(row)
        index.append(key)
    idx = pd.Index(index, name=keys[0]) if len(keys) == 1 else pd.MultiIndex.from_tuples(index, names=keys)
    return pd.DataFrame(out, index=idx)


def paired_table(
    per_case,
    pairs: Sequence[tuple[str, str]],
    *,
    by: str = "model",
    regions: Sequence[str] = REGIONS,
    names: Mapping[str, str] | None = None,
    region_names: Mapping[str, str] | None = None,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int | None = SEED,
    floor: float = DEGENERATE_FLOOR,
    min_cases: int = MIN_CASES,
):
    """Paired bootstrap comparisons ``a − b`` from a per-case table, with their verdicts and sentences.

    Args:
        per_case: per-case table with ``case_id``, ``by`` and the region columns (rows whose
            ``status`` is not ``"ok"`` are left out).
        pairs: ``(a, b)`` group keys, e.g. ``[("msan_v1", "unet3d"), ("ensemble", "msan_v2_ds")]``.
        by: group column, default ``"model"`` (``"postprocess"`` compares k = 2 with k = 1).
        regions: default ``("kidney", "tumor")``.
        names: display names of the group keys (default: the keys).
        region_names: display names of the regions (default ``{"tumor": "tumour"}``).
        confidence, n_resamples, seed, floor, min_cases: as :func:`paired_bootstrap_ci` (0.95, 10,000,
            0, 0.05, 5).

    Returns:
        ``pandas.DataFrame`` with columns ``a, b, region, difference, low, high, n, verdict,
        sentence`` (differences as fractions), one row per pair and region.

    Raises:
        DataError: a group key is absent, a case appears twice in a group, or the two groups were
            scored on different cases.
    """
    df = _ok_rows(per_case)
    for col in ("case_id", by, *regions):
        if col not in df.columns:
            raise DataError(f"paired_table: per-case table has no column {col!r}")
    names = dict(names or {})
    region_names = {"tumor": "tumour", **dict(region_names or {})}
    groups = set(df[by].tolist())
    rows = []
    for a, b in pairs:
        for key in (a, b):
            if key not in groups:
                raise DataError(
                    f"paired_table: no rows with {by} = {key!r} (present: {sorted(map(str, groups))})"
                )
        # cases in case-id order, so the resamples do not depend on the row order of the table
        sa = df[df[by] == a].set_index("case_id").sort_index()
        sb = df[df[by] == b].set_index("case_id").sort_index()
        for key, s in ((a, sa), (b, sb)):
            if s.index.has_duplicates:
                raise DataError(
                    f"paired_table: a case appears twice for {by} = {key!r}; filter the table "
                    "(e.g. one post-processing setting) first"
                )
        for region in regions:
            iv = paired_bootstrap_ci(
                pd.to_numeric(sa[region], errors="coerce"),
                pd.to_numeric(sb[region], errors="coerce"),
                confidence=confidence,
                n_resamples=n_resamples,
                seed=seed,
                floor=floor,
                min_cases=min_cases,
            )
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "region": region,
                    "difference": iv.estimate,
                    "low": iv.low,
                    "high": iv.high,
                    "n": iv.n,
                    "verdict": verdict(iv),
                    "sentence": compare_sentence(
                        iv, names.get(a, str(a)), names.get(b, str(b)), region_names.get(region, region)
                    ),
                }
            )
    return pd.DataFrame(
        rows, columns=["a", "b", "region", "difference", "low", "high", "n", "verdict", "sentence"]
    )


def ci_markdown(
    ci,
    *,
    names: Mapping[str, str] | None = None,
    regions: Sequence[str] = REGIONS,
    digits: int = 1,
    scale: float = 100.0,
) -> str:
    """Render a :func:`ci_table` as Markdown: ``mean [low, high]`` per region, in percent.

    Args:
        ci: from :func:`ci_table`.
        names: display names of the index keys (default: the keys).
        regions: default ``("kidney", "tumor")``.
        digits: decimals (default 1); scale: 100 (default) for percent.

    Returns:
        Markdown text ending with a newline; a cell reads ``n/a`` where there is no interval.
    """
    names = dict(names or {})

    def pct(v: float) -> str:
        return "n/a" if not math.isfinite(float(v)) else f"{scale * float(v):.{digits}f}"

    def name(key: Any) -> str:
        parts = key if isinstance(key, tuple) else (key,)
        return ", ".join(str(names.get(p, p)) for p in parts)

    label = {"tumor": "Tumour"}
    head = " | ".join(f"{label.get(r, r.capitalize())} (95 % CI)" for r in regions)
    index_name = ", ".join(n for n in ci.index.names if n) or "group"
    lines = [f"| {index_name} | {head} | cases |", "|---|" + "---:|" * len(regions) + "---:|"]
    for key, row in ci.iterrows():
        cells = [f"{pct(row[r])} [{pct(row[f'{r}_low'])}, {pct(row[f'{r}_high'])}]" for r in regions]
        n = max(int(row[f"{r}_n"]) for r in regions)
        lines.append(f"| {name(key)} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines) + "\n"


def summarize_verdicts(comparisons, *, region_names: Mapping[str, str] | None = None) -> str:
    """One sentence counting the verdicts of a :func:`paired_table` per region.

    Example: "kidney: 1 of 4 comparisons better, 3 not distinguishable; tumour: no verdict in 4 of 4
    (too few cases, or runs too short to compare)."

    Args:
        comparisons: from :func:`paired_table` (``region`` and ``verdict`` columns).
        region_names: display names (default ``{"tumor": "tumour"}``).
    """
    region_names = {"tumor": "tumour", **dict(region_names or {})}
    order = (BETTER, WORSE, UNRESOLVED, IDENTICAL, NO_VERDICT)
    parts = []
    for region, sub in comparisons.groupby("region", sort=False):
        counts = sub["verdict"].value_counts()
        total = len(sub)
        if counts.get(NO_VERDICT, 0) == total:
            parts.append(
                f"{region_names.get(region, region)}: no verdict in {total} of {total} "
                "(too few cases, or runs too short to compare)"
            )
            continue
        words = [f"{int(counts[v])} {v}" for v in order if counts.get(v, 0)]
        words[0] = words[0].replace(" ", f" of {total} comparisons ", 1)
        parts.append(f"{region_names.get(region, region)}: {', '.join(words)}")
    return "; ".join(parts) + "."


# --------------------------------------------------------------------------------------------
# training seeds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedSpread:
    """A number over training seeds: mean, sample standard deviation (ddof 1), range, count."""

    mean: float
    sd: float
    min: float
    max: float
    n_seeds: int

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"87.1 ± 1.2 (3 seeds, 85.9–88.3)"``; one seed prints no spread."""
        if self.n_seeds == 0:
            return "n/a"
        if self.n_seeds == 1:
            return f"{scale * self.mean:.{digits}f} (1 seed, no spread)"
        return (
            f"{scale * self.mean:.{digits}f} ± {scale * self.sd:.{digits}f} ({self.n_seeds} seeds, "
            f"{scale * self.min:.{digits}f}–{scale * self.max:.{digits}f})"
        )


def across_seeds(values: Any) -> SeedSpread:
    """Mean ± spread of one number (e.g. a mean Dice) over training seeds.

    Args:
        values: one value per seed; NaN seeds are skipped.

    Returns:
        :class:`SeedSpread` with the sample standard deviation (``ddof=1``; NaN with one seed).
    """
    x = _values(values, "values")
    x = x[~np.isnan(x)]
    if x.size == 0:
        return SeedSpread(math.nan, math.nan, math.nan, math.nan, 0)
    sd = float(x.std(ddof=1)) if x.size > 1 else math.nan
    return SeedSpread(float(x.mean()), sd, float(x.min()), float(x.max()), int(x.size))


def seed_table(summaries, *, by: str = "model", seed_column: str = "seed", regions: Sequence[str] = REGIONS):
    """Across-seed mean, SD and count per group and region from a table of per-seed summaries.

    Args:
        summaries: one row per (group, seed) with ``by``, ``seed_column`` and the region columns
            (e.g. :func:`kitsmsan.metrics.summarize` of each seed's run, concatenated).
        by: group column, default ``"model"``; seed_column: default ``"seed"``.
        regions: default ``("kidney", "tumor")``.

    Returns:
        ``pandas.DataFrame`` indexed by group with ``<region>_mean``, ``<region>_sd``,
        ``<region>_min``, ``<region>_max`` and ``n_seeds``.
    """
    for col in (by, seed_column, *regions):
        if col not in summaries.columns:
            raise DataError(f"seed_table: table has no column {col!r}")
    out, index = [], []
    for key, sub in summaries.groupby(by, sort=False):
        if sub[seed_column].duplicated().any():
            raise DataError(f"seed_table: a seed appears twice for {by} = {key!r}")
        row: dict[str, Any] = {}
        for region in regions:
            s = across_seeds(pd.to_numeric(sub[region], errors="coerce").to_numpy())
            row.update(
                {
                    f"{region}_mean": s.mean,
                    f"{region}_sd": s.sd,
                    f"{region}_min": s.min,
                    f"{region}_max": s.max,
                }
            )
        row["n_seeds"] = int(sub[seed_column].nunique())
        out.append(row)
        index.append(key)
    return pd.DataFrame(out, index=pd.Index(index, name=by))


# --------------------------------------------------------------------------------------------
# how small a difference n cases resolve (a simulation under stated assumptions)
# --------------------------------------------------------------------------------------------


def measured_spread(per_case, *, by: str = "model", regions: Sequence[str] = REGIONS):
    """Per-case Dice spread and between-model correlation measured from a per-case table — the two
    inputs of :func:`difference_sd`, for setting an assumption beside a run.

    Args:
        per_case: per-case table with ``case_id``, ``by`` and the region columns, **one** row per
            (model, case) (filter one post-processing setting first); rows whose ``status`` is not
            ``"ok"`` are left out.
        by: model column, default ``"model"``.
        regions: default ``("kidney", "tumor")``.

    Returns:
        ``pandas.DataFrame`` indexed by region with ``n_models``, ``n_cases`` (cases defined for
        every model), ``mean`` (over models and cases), ``sd`` (per-case SD, ``ddof=1``, averaged
        over models), ``sd_min``, ``sd_max``, ``rho`` (mean Pearson correlation of per-case Dice over
        all model pairs; NaN where a model is constant, e.g. tumour 0 everywhere) and ``sd_diff``
        (mean per-case SD of the pairwise differences).

    Raises:
        DataError: a missing column, or a case twice for one model.
    """
    df = _ok_rows(per_case)
    for col in ("case_id", by, *regions):
        if col not in df.columns:
            raise DataError(f"measured_spread: per-case table has no column {col!r}")
    if df.duplicated(["case_id", by]).any():
        raise DataError(
            f"measured_spread: a case appears twice for one {by}; filter the table (e.g. one "
            "post-processing setting) first"
        )
    out, index = [], []
    for region in regions:
        wide = df.pivot(index="case_id", columns=by, values=region).apply(pd.to_numeric, errors="coerce")
        wide = wide.dropna(axis=0, how="any")
        models = list(wide.columns)
        sds = [float(wide[m].std(ddof=1)) for m in models] if len(wide) > 1 else []
        rhos, dsds = [], []
        for i, ma in enumerate(models):
            for mb in models[i + 1 :]:
                if len(wide) > 1:
                    dsds.append(float((wide[ma] - wide[mb]).std(ddof=1)))
                if len(wide) > 2 and wide[ma].std() > 0 and wide[mb].std() > 0:
                    rhos.append(float(np.corrcoef(wide[ma], wide[mb])[0, 1]))
        out.append(
            {
                "n_models": len(models),
                "n_cases": len(wide),
                "mean": float(np.nanmean(wide.to_numpy())) if wide.size else math.nan,
                "sd": float(np.mean(sds)) if sds else math.nan,
                "sd_min": float(np.min(sds)) if sds else math.nan,
                "sd_max": float(np.max(sds)) if sds else math.nan,
                "rho": float(np.mean(rhos)) if rhos else math.nan,
                "sd_diff": float(np.mean(dsds)) if dsds else math.nan,
            }
        )
        index.append(region)
    return pd.DataFrame(out, index=pd.Index(index, name="region"))


def difference_sd(sd_a: float, sd_b: float | None = None, rho: float = 0.7) -> float:
    """Standard deviation of the per-case difference of two models' Dice.

    ``sqrt(sd_a² + sd_b² − 2 ρ sd_a sd_b)``: two models that find the same cases hard (large
    between-model correlation ``rho`` of per-case Dice) differ from case to case by little.

    Args:
        sd_a: per-case Dice SD of the first model (fraction).
        sd_b: of the second; None (default) = ``sd_a``.
        rho: correlation of the two models' per-case Dice, in [-1, 1]; default 0.7.
    """
    sd_b = sd_a if sd_b is None else sd_b
    if sd_a < 0 or sd_b < 0:
        raise DataError(f"difference_sd: per-case SDs must be >= 0, got {sd_a!r}, {sd_b!r}")
    if not -1.0 <= rho <= 1.0:
        raise DataError(f"difference_sd: rho={rho!r} is not a correlation in [-1, 1]")
    return math.sqrt(max(sd_a * sd_a + sd_b * sd_b - 2.0 * rho * sd_a * sd_b, 0.0))


def max_sd(mean: float) -> float:
    """The largest per-case SD a mean Dice allows: ``sqrt(m (1 − m))`` for values in [0, 1]
    (Bhatia–Davis bound; reached when every case scores 0 or 1)."""
    if not 0.0 <= mean <= 1.0:
        raise DataError(f"max_sd: mean={mean!r} is not a Dice in [0, 1]")
    return math.sqrt(mean * (1.0 - mean))


def _check_n(n: int) -> int:
    if int(n) != n or n < 2:
        raise DataError(f"n={n!r}: a paired comparison needs at least 2 cases")
    return int(n)


def paired_power(delta: float, sd_diff: float, n: int, *, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` (default 0.05) to detect a true mean
    difference ``delta`` on ``n`` cases whose differences are normal with SD ``sd_diff``
    (exact, from the noncentral t distribution)."""
    n = _check_n(n)
    if sd_diff <= 0:
        return 1.0 if delta != 0 else alpha
    df = n - 1
    nc = delta * math.sqrt(n) / sd_diff
    t = sps.t.ppf(1.0 - alpha / 2.0, df)
    upper, lower = sps.nct.sf(t, df, abs(nc)), sps.nct.cdf(-t, df, abs(nc))
    # the far tail underflows to NaN for a large noncentrality; it is 0 there
    return float(min(1.0, upper + (0.0 if math.isnan(lower) else lower)))


def min_detectable_difference(sd_diff: float, n: int, *, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest true mean difference a paired comparison on ``n`` cases detects with the given
    power (default 0.80) at two-sided level ``alpha`` (default 0.05), per-case differences normal
    with SD ``sd_diff`` (same unit as ``sd_diff``; exact noncentral-t power, solved numerically).

    Close to ``(t_{1−α/2, n−1} + t_{power, n−1}) · sd_diff / √n``.
    """
    n = _check_n(n)
    if not alpha < power < 1.0:
        raise DataError(f"power={power!r}: expected a power between alpha={alpha} and 1")
    if sd_diff <= 0:
        return 0.0
    df = n - 1  # the normal-theory guess, doubled, brackets the root
    hi = 2.0 * (sps.t.ppf(1.0 - alpha / 2.0, df) + sps.t.ppf(power, df)) * sd_diff / math.sqrt(n)
    return float(
        optimize.brentq(
            lambda d: paired_power(d, sd_diff, n, alpha=alpha) - power, 0.0, hi, xtol=1e-10 * sd_diff
        )
    )


def ci_half_width(sd_diff: float, n: int, *, confidence: float = CONFIDENCE) -> float:
    """Half-width of the paired t interval of a mean difference on ``n`` cases when the per-case
    differences have SD ``sd_diff``: ``t_{(1+confidence)/2, n−1} · sd_diff / √n`` (default 95 %)."""
    n = _check_n(n)
    return float(sps.t.ppf((1.0 + confidence) / 2.0, n - 1) * sd_diff / math.sqrt(n))


def cases_needed(
    delta: float, sd_diff: float, *, power: float = POWER, alpha: float = ALPHA, max_n: int = 100_000
) -> int | None:
    """The fewest cases with which a paired t-test detects ``delta`` with the given power (defaults
    0.80, 0.05); None when even ``max_n`` (default 100,000) does not suffice or ``delta`` is 0."""
    if delta == 0:
        return None
    if sd_diff <= 0:
        return 2
    if paired_power(delta, sd_diff, max_n, alpha=alpha) < power:
        return None
    lo, hi = 2, max_n  # power is increasing in n: bisection on the integers
    if paired_power(delta, sd_diff, lo, alpha=alpha) >= power:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if paired_power(delta, sd_diff, mid, alpha=alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def simulate_power(
    delta: float,
    sd_diff: float,
    n: int,
    *,
    test: str = "t",
    alpha: float = ALPHA,
    n_sims: int = 20_000,
    n_resamples: int = 2_000,
    seed: int = SEED,
) -> float:
    """Brute force: the fraction of simulated paired comparisons that find a difference.

    Each simulation draws ``n`` per-case differences ``N(delta, sd_diff²)`` and asks either the
    two-sided paired t-test at ``alpha`` (``test="t"``, default) or whether the percentile
    bootstrap interval at ``1 − alpha`` excludes 0 (``test="bootstrap"``, with ``n_resamples``
    resamples each, the rule :func:`verdict` applies).

    Args:
        delta, sd_diff: true mean and SD of the per-case differences.
        n: cases per comparison.
        test: ``"t"`` or ``"bootstrap"``.
        alpha: default 0.05.
        n_sims: simulated comparisons, default 20,000 (Monte Carlo SE of a power near 0.8:
            0.003).
        n_resamples: bootstrap resamples per simulated comparison, default 2,000.
        seed: default 0.

    Returns:
        The rejection fraction (the power when ``delta != 0``, the false-positive rate at 0).
    """
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    d = rng.normal(delta, sd_diff, size=(int(n_sims), n))
    if test == "t":
        mean = d.mean(axis=1)
        se = d.std(axis=1, ddof=1) / math.sqrt(n)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.abs(mean / se)
        return float(np.mean(t > sps.t.ppf(1.0 - alpha / 2.0, n - 1)))
    if test == "bootstrap":
        hits = 0
        for row in d:
            boot = row[rng.integers(0, n, (int(n_resamples), n))].mean(axis=1)
            low, high = percentile_interval(boot, 1.0 - alpha)
            hits += bool(low > 0 or high < 0)
        return hits / int(n_sims)
    raise DataError(f"simulate_power: test={test!r}; expected 't' or 'bootstrap'")


def paper_differences(
    table: Mapping[str, Mapping[str, float] | None],
    pairs: Sequence[tuple[str, str]] = PAPER_COMPARISONS,
    regions: Sequence[str] = REGIONS,
):
    """The differences between rows of a Table 1 (in its unit, percent for the paper's).

    Args:
        table: ``{model: {"kidney": ..., "tumor": ...}}``, e.g.
            :data:`kitsmsan.reproduce.PAPER_TABLE1` (a None row is skipped).
        pairs: ``(model, reference)`` keys; default :data:`PAPER_COMPARISONS`.
        regions: default ``("kidney", "tumor")``.

    Returns:
        ``pandas.DataFrame`` with columns ``a, b, region, a_value, b_value, difference``.
    """
    rows = []
    for a, b in pairs:
        ra, rb = table.get(a), table.get(b)
        if ra is None or rb is None:
            continue
        for region in regions:
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "region": region,
                    "a_value": float(ra[region]),
                    "b_value": float(rb[region]),
                    "difference": float(ra[region]) - float(rb[region]),
                }
            )
    return pd.DataFrame(rows, columns=["a", "b", "region", "a_value", "b_value", "difference"])


def resolvable_table(
    differences,
    sd_per_case: Mapping[str, float],
    *,
    rho: float = 0.7,
    n: int = 10,
    power: float = POWER,
    alpha: float = ALPHA,
    scale: float = 100.0,
):
    """Set observed differences against what a paired comparison on ``n`` cases can resolve.

    Args:
        differences: from :func:`paper_differences` (``region`` and ``difference`` columns, in the
            unit of ``scale`` × Dice, percent for the paper).
        sd_per_case: assumed per-case Dice SD per region (fractions), e.g.
            ``{"kidney": 0.04, "tumor": 0.25}`` — the same for both models of a pair.
        rho: assumed between-model correlation of per-case Dice (default 0.7).
        n: cases of the comparison (default 10, the paper's test set).
        power, alpha: of the minimum detectable difference (defaults 0.80, 0.05).
        scale: Dice → table unit (default 100: points).

    Returns:
        ``differences`` with added columns ``sd_diff``, ``ci_half_width``, ``mdd`` (all in the
        table unit), ``power`` (of a paired t-test, had the observed difference been the true one),
        ``cases_needed`` (for 80 % power) and ``resolvable`` (``|difference| >= mdd``).
    """
    out = differences.copy()
    sds = [difference_sd(sd_per_case[r], rho=rho) for r in out["region"]]
    out["sd_diff"] = [scale * s for s in sds]
    out["ci_half_width"] = [scale * ci_half_width(s, n, confidence=1.0 - alpha) for s in sds]
    out["mdd"] = [scale * min_detectable_difference(s, n, power=power, alpha=alpha) for s in sds]
    out["power"] = [paired_power(d / scale, s, n, alpha=alpha) for d, s in zip(out["difference"], sds)]
    out["cases_needed"] = [
        cases_needed(d / scale, s, power=power, alpha=alpha) for d, s in zip(out["difference"], sds)
    ]
    out["resolvable"] = out["difference"].abs() >= out["mdd"]
    return out


def plot_resolvable(
    differences,
    sd_range: Mapping[str, Sequence[float]],
    *,
    rho_range: Sequence[float] = (0.5, 0.9),
    rho: float | None = None,
    n_max: int = 60,
    n_paper: int = 10,
    power: float = POWER,
    alpha: float = ALPHA,
    scale: float = 100.0,
    labels: Mapping[str, str] | None = None,
    region_names: Mapping[str, str] | None = None,
    title: str | None = None,
):
    """The smallest resolvable difference against the number of test cases, one panel per region,
    with observed differences marked at ``n_paper`` cases (a simulation under assumed spreads).

    Args:
        differences: from :func:`paper_differences` (``a``, ``b``, ``region``, ``difference``).
        sd_range: per region ``(low, central, high)`` per-case Dice SD (fractions).
        rho_range: ``(low, high)`` between-model correlation; the band spans the worst and best
            combination of SD and correlation. Default (0.5, 0.9).
        rho: the central correlation of the line (with the central SD); default ``None``: the
            middle of ``rho_range``. Pass the value the tables use, or line and tables disagree.
        n_max: largest number of cases on the x axis (default 60).
        n_paper: the paper's number of test cases, marked (default 10).
        power, alpha: of the minimum detectable difference (0.80, 0.05).
        scale: Dice → plot unit (default 100: points).
        labels: display names of the model keys (default: the keys).
        region_names: display names of the regions (default ``{"tumor": "tumour"}``).
        title: figure title.

    Returns:
        The Figure (one axis per region in ``sd_range``, one above the other at the book column's
        width, text at 10 pt or more): the 80 %-power minimum detectable
        difference (line and band), the observed ``|difference|`` as labelled points at ``n_paper``.
    """
    labels = dict(labels or {})
    region_names = {"tumor": "tumour", **dict(region_names or {})}
    regions = list(sd_range)
    ns = np.arange(3, int(n_max) + 1)
    # one panel per row at the book column's width: the dots' labels stay at 10 pt when shown
    fig, axes = plt.subplots(
        len(regions),
        1,
        figsize=(BOOK_COLUMN_IN, 3.9 * len(regions) + 0.4),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    rho_lo, rho_hi = min(rho_range), max(rho_range)
    rho_mid = (rho_lo + rho_hi) / 2 if rho is None else float(rho)
    if not rho_lo <= rho_mid <= rho_hi:
        raise DataError(f"plot_resolvable: rho={rho_mid} is outside rho_range {tuple(rho_range)}")
    for ax, region in zip(axes[:, 0], regions):
        sd_lo, sd_mid, sd_hi = sd_range[region]
        color = REGION_COLORS.get(region, "C0")
        mid = [
            scale * min_detectable_difference(difference_sd(sd_mid, rho=rho_mid), n, power=power, alpha=alpha)
            for n in ns
        ]
        best = [
            scale * min_detectable_difference(difference_sd(sd_lo, rho=rho_hi), n, power=power, alpha=alpha)
            for n in ns
        ]
        worst = [
            scale * min_detectable_difference(difference_sd(sd_hi, rho=rho_lo), n, power=power, alpha=alpha)
            for n in ns
        ]
        ax.fill_between(
            ns,
            best,
            worst,
            color=color,
            alpha=0.2,
            lw=0,
            label=f"SD {sd_lo:.3f}–{sd_hi:.3f}, ρ {rho_lo:.2f}–{rho_hi:.2f}",
        )
        ax.plot(ns, mid, color=color, lw=2, label=f"SD {sd_mid:.3f}, ρ {rho_mid:.2f}")
        ax.axvline(n_paper, color="0.4", ls="--", lw=1)
        sub = differences[differences["region"] == region].copy()
        sub["y"] = sub["difference"].abs().clip(lower=1e-3)
        sub = sub.sort_values("y")
        ax.scatter([n_paper] * len(sub), sub["y"], color="k", zorder=3, s=18)
        ax.set_yscale("log")
        # label heights spread in log space so that close differences do not overprint: a line of
        # 10 pt text is FONT_TICK * 1.6 / 72 in of the ~2.7 in high axes spanning these decades
        decades = float(np.diff(np.log10(ax.get_ylim()))[0])
        text_y, gap = [], FONT_TICK * 1.6 / 72 * decades / 2.7
        for y in np.log10(sub["y"].to_numpy()):
            text_y.append(max(y, text_y[-1] + gap) if text_y else y)
        for (_, row), ty in zip(sub.iterrows(), text_y):
            name = f"{labels.get(row['a'], row['a'])} − {labels.get(row['b'], row['b'])}: {row['difference']:+.2f}"
            ax.annotate(
                name,
                (n_paper, row["y"]),
                xytext=(n_paper + 0.12 * (n_max - n_paper), 10**ty),
                textcoords="data",
                fontsize=FONT_TICK,
                va="center",
                arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6},
            )
        ax.set_yscale("log")
        if ax is axes[-1, 0]:
            ax.set_xlabel("test cases in a paired comparison", fontsize=FONT_LABEL)
        ax.set_ylabel(f"resolved with {100 * power:g} % power\n(Dice points)", fontsize=FONT_LABEL)
        ax.tick_params(labelsize=FONT_TICK, which="both")
        ax.set_title(
            f"{region_names.get(region, region)} (dots: |differences| at n = {n_paper})", fontsize=FONT_LABEL
        )
        ax.legend(fontsize=FONT_LEGEND, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=FONT_TITLE)
    return fig
