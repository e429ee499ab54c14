"""KiTS19 Dice scores, per-case tables and the paper's Table 1 summary (MSAN paper, §3.2, Table 1).

The KiTS19 challenge scores two nested regions per case:

* **kidney** ("tumour + kidney", ``tk``): every voxel with ``label > 0`` (kidney *or* tumour);
* **tumour** (``tu``): every voxel with ``label == 2``.

Dice of a region is ``2 |P ∩ G| / (|P| + |G|)``. The official starter code
(``neheller/kits19``, ``starter_code/evaluation.py``, function ``evaluate``) computes exactly these two
numbers as ``tk_dice`` from ``np.greater(pred, 0)`` and ``tu_dice`` from ``np.greater(pred, 1)``. Its
empty-mask branch is ``except ZeroDivisionError: return 0.0, ...``, but the sums are NumPy integers, and
NumPy scalar division ``0 / 0`` does not raise: it returns ``nan`` (with a RuntimeWarning). So the
official script in effect reports **NaN when both masks of a region are empty**, and we do the same
explicitly; when only one of the two masks is empty the Dice is 0. (Every real KiTS19 case has a
kidney and a tumour, so this only matters for phantoms and ablations.)

The paper's Table 1 reports, per model, the kidney Dice and the tumour Dice (each a mean over the test
cases) and an "Averaged" column equal to the mean of those two means (3D U-Net: 89.70 and 46.90 give
68.30). :func:`summarize` reproduces that form; per-case means ignore NaN cases (``nanmean``) and the
number of cases that entered each mean is reported beside it.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kitsmsan.data.kits19 import (  # noqa: F401 (re-exported)
    SEGMENTATION_FILE,
    case_id,
    load_label,
    normalize_case_id,
    prediction_filename,
    probs_filename,
)
from kitsmsan.errors import DataError
from kitsmsan.postprocess import keep_largest_components
from kitsmsan.utils.io import atomic_write_text

#: the region columns of a per-case table, in order
REGIONS = ("kidney", "tumor")
#: the per-case score columns
SCORE_COLUMNS = ("kidney", "tumor", "composite")


# --------------------------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------------------------


def _check_label_array(arr: Any, name: str) -> np.ndarray:
    """Validate a label volume: an integer (or bool) array with values in {0, 1, 2}."""
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{name}: expected a numpy array, got {type(arr).__name__}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name}: expected integer labels in {{0, 1, 2}}, got dtype {arr.dtype}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 2:
            bad = lo if lo < 0 else hi
            raise DataError(f"{name}: label value {bad} outside {{0, 1, 2}} (background, kidney, tumour)")
    return arr


def dice(pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
    """Dice ``2|P∩G| / (|P|+|G|)`` of two boolean masks; NaN when both are empty.

    Args:
        pred_mask: boolean array.
        gt_mask: boolean array of the same shape.

    Returns:
        A float in [0, 1], or ``nan`` if both masks are empty (the official KiTS19 behaviour, see the
        module docstring); 0.0 if exactly one is empty.
    """
    if pred_mask.shape != gt_mask.shape:
        raise DataError(f"dice: mask shapes differ, pred {pred_mask.shape} vs gt {gt_mask.shape}")
    p = int(np.count_nonzero(pred_mask))
    g = int(np.count_nonzero(gt_mask))
    if p + g == 0:
        return math.nan
    inter = int(np.count_nonzero(np.logical_and(pred_mask, gt_mask)))
    return 2.0 * inter / (p + g)


def kits_dice(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """The official KiTS19 per-case scores (MSAN paper, Table 1; KiTS19 ``evaluation.py``).

    Args:
        pred: predicted labels ``(Z, Y, X)`` (any shape, same as ``gt``), integer in {0, 1, 2}.
        gt: ground-truth labels, same shape, integer in {0, 1, 2}.

    Returns:
        ``{"kidney": tk, "tumor": tu, "composite": c}`` where ``tk`` is the Dice of ``label > 0``,
        ``tu`` the Dice of ``label == 2`` (each NaN when that region is empty in both volumes, 0 when
        empty in only one), and ``c`` the mean of the two, NaN-aware: the mean of the defined ones,
        NaN only if both are NaN.

    Raises:
        DataError: if either input is not an integer array with values in {0, 1, 2} or the shapes
            differ (named in the message).
    """
    pred = _check_label_array(pred, "pred")
    gt = _check_label_array(gt, "gt")
    if pred.shape != gt.shape:
        raise DataError(f"kits_dice: pred shape {pred.shape} differs from gt shape {gt.shape}")
    kidney = dice(pred > 0, gt > 0)
    tumor = dice(pred == 2, gt == 2)
    defined = [v for v in (kidney, tumor) if not math.isnan(v)]
    composite = sum(defined) / len(defined) if defined else math.nan
    return {"kidney": kidney, "tumor": tumor, "composite": composite}


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------


def dice_table(rows: Iterable[Mapping[str, Any]]):
    """Per-case table from score dicts.

    Args:
        rows: one mapping per case with at least ``"case_id"`` and the keys of :func:`kits_dice`
            (``"kidney"``, ``"tumor"``, ``"composite"``); further keys (e.g. ``"postprocess"``,
            ``"model"``, ``"status"``) become extra columns.

    Returns:
        ``pandas.DataFrame`` with columns ``case_id, kidney, tumor, composite, ...`` in the given
        row order.

    Raises:
        DataError: if a row lacks ``case_id`` or a score key.
    """
    records = []
    for i, row in enumerate(rows):
        missing = [k for k in ("case_id", *SCORE_COLUMNS) if k not in row]
        if missing:
            raise DataError(f"dice_table: row {i} lacks {', '.join(missing)}")
        records.append(dict(row))
    columns = ["case_id", *SCORE_COLUMNS]
    if not records:
        return pd.DataFrame(columns=columns)
    df = pd.DataFrame.from_records(records)
    extra = [c for c in df.columns if c not in columns]
    return df[columns + extra]


def summarize(df, by: str | Sequence[str] | None = None):
    """The paper's Table 1 form: kidney, tumour and averaged Dice over cases (MSAN paper, Table 1).

    ``kidney`` and ``tumor`` are the means over cases (NaN cases skipped) and ``averaged`` is the
    mean of those two means, as in Table 1 (89.70 and 46.90 → 68.30). Rows whose ``status`` column
    (if present) is not ``"ok"`` are excluded and counted in ``n_missing``.

    Args:
        df: a per-case table from :func:`dice_table` / :func:`evaluate_folder`.
        by: column(s) to group by (e.g. ``"postprocess"`` or ``"model"``); None (default) gives a
            single row.

    Returns:
        ``pandas.DataFrame`` with columns ``kidney, tumor, averaged, n_cases, n_kidney, n_tumor,
        n_missing`` (fractions in [0, 1], not percent), indexed by the group key(s) (``"all"``
        when ``by`` is None).
    """

    def one(sub) -> dict[str, Any]:
        ok = sub
        n_missing = 0
        if "status" in sub.columns:
            ok = sub[sub["status"] == "ok"]
            n_missing = int(len(sub) - len(ok))
        kid = pd.to_numeric(ok["kidney"], errors="coerce")
        tum = pd.to_numeric(ok["tumor"], errors="coerce")
        k_mean = float(kid.mean()) if kid.notna().any() else math.nan
        t_mean = float(tum.mean()) if tum.notna().any() else math.nan
        return {
            "kidney": k_mean,
            "tumor": t_mean,
            "averaged": (k_mean + t_mean) / 2.0,
            "n_cases": int(len(ok)),
            "n_kidney": int(kid.notna().sum()),
            "n_tumor": int(tum.notna().sum()),
            "n_missing": n_missing,
        }

    if by is None:
        return pd.DataFrame([one(df)], index=pd.Index(["all"], name="group"))
    keys = [by] if isinstance(by, str) else list(by)
    for k in keys:
        if k not in df.columns:
            raise DataError(f"summarize: group column {k!r} not in table columns {list(df.columns)}")
    out, index = [], []
    for key, sub in df.groupby(keys, sort=False):
        out.append(one(sub))
        index.append(key[0] if isinstance(key, tuple) and len(keys) == 1 else key)
    idx = pd.Index(index, name=keys[0]) if len(keys) == 1 else pd.MultiIndex.from_tuples(index, names=keys)
    return pd.DataFrame(out, index=idx)


def table1_markdown(summary, *, title: str | None = None, digits: int = 2) -> str:
    """Render a :func:`summarize` result as a Markdown table in percent, like the paper's Table 1.

    Args:
        summary: the DataFrame from :func:`summarize`.
        title: optional heading line printed above the table.
        digits: decimals of the percentages (default 2, as in the paper).

    Returns:
        Markdown text ending with a newline.
    """

    def pct(v: float) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.{digits}f}"

    name = summary.index.name or "group"
    lines = []
    if title:
        lines += [title, ""]
    lines.append(f"| {name} | Kidney | Tumor | Averaged | cases |")
    lines.append("|---|---:|---:|---:|---:|")
    for key, row in summary.iterrows():
        label = ", ".join(map(str, key)) if isinstance(key, tuple) else str(key)
        cases = f"{int(row['n_cases'])}"
        if int(row.get("n_missing", 0)):
            cases += f" ({int(row['n_missing'])} missing)"
        lines.append(
            f"| {label} | {pct(row['kidney'])} | {pct(row['tumor'])} | {pct(row['averaged'])} | {cases} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# folders of predictions
# --------------------------------------------------------------------------------------------


def list_predictions(pred_dir: str | os.PathLike) -> list[str]:
    """Case ids of the ``prediction_XXXXX.nii.gz`` files in a folder, sorted.

    Raises:
        DataError: if ``pred_dir`` is not a folder.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: prediction folder does not exist or is not a folder")
    pat = re.compile(r"^prediction_(\d{5})\.nii\.gz$")
    return sorted(case_id(int(m.group(1))) for p in pred_dir.iterdir() if (m := pat.match(p.name)))


def evaluate_folder(
    pred_dir: str | os.PathLike,
    data_root: str | os.PathLike,
    case_ids: Sequence[int | str] | None = None,
    postprocess: int | None = None,
    *,
    allow_missing: bool = False,
):
    """Score a folder of ``prediction_XXXXX.nii.gz`` files against KiTS19 segmentations.

    Args:
        pred_dir: folder of predictions (as written by ``kitsmsan predict``).
        data_root: KiTS19 ``data/`` folder holding ``case_XXXXX/segmentation.nii.gz``.
        case_ids: cases to score (ints or ``"case_XXXXX"``); None (default) scores every prediction
            file present in ``pred_dir``.
        postprocess: None or 0 (default): score the predictions as they are; ``k >= 1``: apply
            :func:`kitsmsan.postprocess.keep_largest_components` with ``num_components=k`` first
            (MSAN paper, §3.1).
        allow_missing: if False (default) a requested case without a prediction file is an error
            that lists every missing file; if True such cases get a row with ``status="missing"``
            and NaN scores (which :func:`summarize` excludes and counts).

    Returns:
        Per-case ``pandas.DataFrame`` with columns ``case_id, kidney, tumor, composite,
        postprocess, status``.

    Raises:
        DataError: missing predictions (listed by name) unless ``allow_missing``; a missing or bad
            ground truth; a prediction whose shape differs from its ground truth.
    """
    pred_dir, data_root = Path(pred_dir), Path(data_root)
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: prediction folder does not exist or is not a folder")
    if not data_root.is_dir():
        raise DataError(f"{data_root}: data folder does not exist or is not a folder")
    k = int(postprocess or 0)
    if k < 0:
        raise DataError(f"postprocess={postprocess!r}: expected 0 (off) or a number of components >= 1")
    if case_ids is None:
        ids = list_predictions(pred_dir)
        if not ids:
            raise DataError(f"{pred_dir}: no prediction_XXXXX.nii.gz files found")
    else:
        ids = [normalize_case_id(c) for c in case_ids]
    missing = [prediction_filename(c) for c in ids if not (pred_dir / prediction_filename(c)).is_file()]
    if missing and not allow_missing:
        raise DataError(f"{pred_dir}: {len(missing)} of {len(ids)} predictions missing: {', '.join(missing)}")
    no_gt = [c for c in ids if not (data_root / c / SEGMENTATION_FILE).is_file()]
    if no_gt:
        raise DataError(f"{data_root}: no ground truth ({SEGMENTATION_FILE}) for {', '.join(no_gt)}")
    rows = []
    for cid in ids:
        pred_path = pred_dir / prediction_filename(cid)
        if not pred_path.is_file():
            rows.append(
                {
                    "case_id": cid,
                    "kidney": math.nan,
                    "tumor": math.nan,
                    "composite": math.nan,
                    "postprocess": k,
                    "status": "missing",
                }
            )
            continue
        gt, _, _ = load_label(data_root / cid / SEGMENTATION_FILE)
        pred, _, _ = load_label(pred_path)
        if pred.shape != gt.shape:
            raise DataError(f"{pred_path}: shape {pred.shape} differs from ground truth {gt.shape}")
        if k:
            pred = keep_largest_components(pred, num_components=k)
        rows.append({"case_id": cid, **kits_dice(pred, gt), "postprocess": k, "status": "ok"})
    return dice_table(rows)


def write_results(
    out_dir: str | os.PathLike,
    per_case,
    summary,
    *,
    provenance: Mapping[str, Any] | None = None,
    title: str = "Dice on the test cases (Table 1 form)",
) -> dict[str, Path]:
    """Write ``per_case.csv``, ``summary.csv``, ``summary.json`` and ``summary.md`` atomically.

    Args:
        out_dir: output folder (created).
        per_case: table from :func:`evaluate_folder` / :func:`dice_table`.
        summary: table from :func:`summarize`.
        provenance: extra JSON-able facts stored under ``"provenance"`` in ``summary.json`` and
            listed under the Markdown table (data, cases, commit, ...).
        title: Markdown heading.

    Returns:
        ``{"per_case": path, "summary_csv": path, "summary_json": path, "summary_md": path}``.

    Raises:
        DataError: a file could not be written (disk full, no permission); the message names it
            and the files written before it. Each file is replaced atomically, so none is ever
            half-written; an output folder this call created is removed again if still empty.
    """
    out_dir = Path(out_dir)
    paths = {
        "per_case": out_dir / "per_case.csv",
        "summary_csv": out_dir / "summary.csv",
        "summary_json": out_dir / "summary.json",
        "summary_md": out_dir / "summary.md",
    }

    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, (np.integer,)):
            return int(v)
        if isinstance(v, (np.floating,)):
            return None if math.isnan(float(v)) else float(v)
        return v

    summary_rows = [
        {
            "group": (list(map(clean, key)) if isinstance(key, tuple) else clean(key)),
            **{c: clean(row[c]) for c in summary.columns},
        }
        for key, row in summary.iterrows()
    ]
    missing = []
    if "status" in per_case.columns:
        missing = per_case.loc[per_case["status"] != "ok", "case_id"].drop_duplicates().tolist()
    summary_json = {"summary": summary_rows, "missing_cases": missing, "provenance": dict(provenance or {})}
    md = table1_markdown(summary, title=f"## {title}")
    if missing:
        md += f"\nMissing predictions (excluded from the means): {', '.join(missing)}\n"
    if provenance:
        md += "\n" + "\n".join(f"- {k}: {v}" for k, v in provenance.items()) + "\n"
    texts = {
        "per_case": per_case.to_csv(index=False, float_format="%.6f"),
        "summary_csv": summary.to_csv(float_format="%.6f"),
        # the text atomic_write_json would write (kitsmsan.utils.io)
        "summary_json": json.dumps(summary_json, indent=2, sort_keys=False, default=str) + "\n",
        "summary_md": md,
    }
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]  # deepest first
    written: list[str] = []
    target = out_dir
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for key, text in texts.items():
            target = paths[key]
            atomic_write_text(target, text)
            written.append(target.name)
    except OSError as exc:
        for folder in created:  # only empty folders go: rmdir refuses the others
            try:
                folder.rmdir()
            except OSError:
                break
        done = f"; written before it: {', '.join(written)}" if written else "; nothing was written"
        raise DataError(f"{target}: cannot write the results ({exc.strerror or exc}){done}") from exc
    return paths
