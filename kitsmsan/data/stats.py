"""Data exploration: per-case statistics, HU histograms and the post-processing ceiling.

What the data-exploration chapter shows, computed from whatever cases are at
hand: the real KiTS19 segmentations (labels only), pure phantoms, label-conditioned phantoms or
the full KiTS19 imaging.

* :func:`case_statistics` / :func:`dataset_statistics`: slices, spacing, kidney and tumour volumes in
  ml, number of connected components, and the fraction of slices holding kidney or tumour (which
  sets how often the 4-slice window sampler of MSAN paper §3.1 meets foreground by chance).
* :func:`hu_histograms`: intensity histograms per label, to place the paper's HU window
  ``[-200, 500]`` (§2.1) against the data.
* :func:`postprocess_ceiling` / :func:`ceiling_table`: the paper keeps the "maximal connected
  component" of each prediction (§3.1, Table 1 caption). Applied to the *ground truth itself*, this
  tells how much Dice that step costs a perfect prediction: with one component kept, one of two
  kidneys is deleted. ``k = 2`` is the obvious repair; both are reported.

Volumes are in millilitres (1 ml = 1000 mm^3); components are 26-connected (the convention of
:func:`kitsmsan.postprocess.keep_largest_components`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm.auto import tqdm

from kitsmsan.data.kits19 import KIDNEY, TUMOR, Case, list_cases, load_case, normalize_case_id
from kitsmsan.errors import DataError
from kitsmsan.metrics import kits_dice
from kitsmsan.postprocess import keep_largest_components
from kitsmsan.utils.io import atomic_write_text

__all__ = [
    "KITS19_ATTRIBUTION",
    "STAT_COLUMNS",
    "CEILING_COLUMNS",
    "case_statistics",
    "dataset_statistics",
    "hu_histograms",
    "postprocess_ceiling",
    "ceiling_table",
    "ceiling_summary",
    "summarize_statistics",
    "write_table",
    "read_table",
]

#: the line every table derived from the KiTS19 labels carries
KITS19_ATTRIBUTION = (
    "Derived from the KiTS19 challenge segmentations (Heller et al., 'The KiTS19 Challenge Data', "
    "2019; github.com/neheller/kits19), licensed CC BY-NC-SA 4.0"
)

#: columns of :func:`case_statistics` (label part; the HU columns are added with an image)
STAT_COLUMNS = (
    "case_id", "slices", "rows", "cols", "slice_thickness_mm", "pixel_spacing_mm",
    "kidney_ml", "tumor_ml", "kidney_region_ml", "kidney_components", "kidney_components_1ml",
    "tumor_components", "kidney_slice_fraction", "tumor_slice_fraction",
)

#: columns of :func:`postprocess_ceiling` (plus ``case_id`` in :func:`ceiling_table`)
CEILING_COLUMNS = (
    "kidney_components", "kidney_dice_k1", "tumor_dice_k1", "composite_k1", "kidney_deleted_k1",
    "removed_ml_k1", "kidney_dice_k2", "tumor_dice_k2", "composite_k2", "kidney_deleted_k2",
    "removed_ml_k2",
)

_STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def _as_case(case, *, need_image: bool = False) -> Case:
    """A :class:`Case` from a Case or a case folder (labels-only unless ``need_image``)."""
    if isinstance(case, Case):
        if need_image and case.image is None:
            raise DataError(f"{case.case_id}: no image loaded (a labels-only case)")
        return case
    if isinstance(case, (str, os.PathLike)):
        return load_case(case, load_image=need_image)
    raise DataError(f"case: expected a Case or a case folder, got {type(case).__name__}")


def _foreground_box(mask: np.ndarray):
    """Slices of the bounding box of ``mask`` (None if empty)."""
    spans = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
             for ax in range(mask.ndim)]
    if any(len(s) == 0 for s in spans):
        return None
    return tuple(slice(int(s[0]), int(s[-1]) + 1) for s in spans)


def _component_sizes(mask: np.ndarray) -> np.ndarray:
    """Voxel counts of the 26-connected components of ``mask``, largest first."""
    box = _foreground_box(mask)
    if box is None:
        return np.zeros(0, dtype=np.int64)
    comps, n = ndimage.label(mask[box], structure=_STRUCTURE)
    return np.sort(np.bincount(comps.ravel(), minlength=n + 1)[1:])[::-1]


def case_statistics(case: Case | str | os.PathLike) -> dict:
    """Label statistics of one case (and HU means when the image is loaded).

    Args:
        case: a :class:`~kitsmsan.data.kits19.Case` with a label, or a case folder (read
            labels-only).

    Returns:
        A dict with the keys of :data:`STAT_COLUMNS`: ``slices``, ``rows``, ``cols``,
        ``slice_thickness_mm`` (z spacing), ``pixel_spacing_mm`` (row spacing), ``kidney_ml``
        (label 1), ``tumor_ml`` (label 2), ``kidney_region_ml`` (label > 0, the official kidney
        region), ``kidney_components`` and ``kidney_components_1ml`` (26-connected components of
        label > 0, all / those >= 1 ml), ``tumor_components`` (of label == 2),
        ``kidney_slice_fraction`` / ``tumor_slice_fraction`` (fraction of axial slices holding any
        label > 0 / label == 2). With an image: ``kidney_hu_mean``, ``kidney_hu_std``,
        ``tumor_hu_mean``, ``tumor_hu_std`` (NaN when the label is absent).

    Raises:
        DataError: if the case has no label.
    """
    case = _as_case(case)
    if case.label is None:
        raise DataError(f"{case.path}: no segmentation, cannot compute label statistics")
    label = case.label
    dz, dy, dx = (float(s) for s in case.spacing)
    ml = dz * dy * dx / 1000.0
    region = label > 0
    tumor = label == TUMOR
    n_kidney = int(np.count_nonzero(label == KIDNEY))
    n_tumor = int(np.count_nonzero(tumor))
    kidney_sizes = _component_sizes(region)
    stats = {
        "case_id": case.case_id,
        "slices": int(label.shape[0]),
        "rows": int(label.shape[1]),
        "cols": int(label.shape[2]),
        "slice_thickness_mm": dz,
        "pixel_spacing_mm": dy,
        "kidney_ml": n_kidney * ml,
        "tumor_ml": n_tumor * ml,
        "kidney_region_ml": (n_kidney + n_tumor) * ml,
        "kidney_components": int(len(kidney_sizes)),
        "kidney_components_1ml": int(np.count_nonzero(kidney_sizes * ml >= 1.0)),
        "tumor_components": int(len(_component_sizes(tumor))),
        "kidney_slice_fraction": float(region.any(axis=(1, 2)).mean()),
        "tumor_slice_fraction": float(tumor.any(axis=(1, 2)).mean()),
    }
    if case.image is not None:
        for name, mask in (("kidney", label == KIDNEY), ("tumor", tumor)):
            values = case.image[mask]
            stats[f"{name}_hu_mean"] = float(values.mean()) if values.size else math.nan
            stats[f"{name}_hu_std"] = float(values.std()) if values.size else math.nan
    return stats


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="case")


def _select(root, labels_only: bool, case_ids):
    available = list_cases(root, require_imaging=not labels_only)
    if case_ids is None:
        return available
    ids = [normalize_case_id(c) for c in case_ids]
    missing = [c for c in ids if c not in available]
    if missing:
        what = "segmentation" if labels_only else "imaging"
        more = " ..." if len(missing) > 5 else ""
        raise DataError(f"{root}: no {what} for {', '.join(missing[:5])}{more}")
    return ids


def dataset_statistics(root: str | os.PathLike, labels_only: bool = False, *,
                       case_ids: Iterable[str | int] | None = None, progress: bool = False):
    """:func:`case_statistics` of every case under ``root``, as a pandas DataFrame.

    Args:
        root: a KiTS19 data folder.
        labels_only: if True, list cases that hold a ``segmentation.nii.gz`` and read only that
            (the public label checkout); if False (default), list cases with imaging, read the
            image too and add the HU columns. Cases without a segmentation are skipped.
        case_ids: restrict to these cases (default all).
        progress: show a tqdm bar (default False).

    Returns:
        One row per case, columns :data:`STAT_COLUMNS` (+ HU columns).

    Raises:
        DataError: bad folder, a requested case missing, or a corrupt file (named).
    """
    root = Path(root)
    rows = []
    ids = _select(root, labels_only, case_ids)
    for cid in _progress(ids, len(ids), "statistics", progress):
        case = load_case(root / cid, load_image=not labels_only)
        if case.label is not None:
            rows.append(case_statistics(case))
    return pd.DataFrame(rows, columns=None if rows else list(STAT_COLUMNS))


def _image_label_pairs(cases):
    if isinstance(cases, (Case, str, os.PathLike)) or (
            isinstance(cases, tuple) and len(cases) == 2 and isinstance(cases[0], np.ndarray)):
        cases = [cases]
    for item in cases:
        if isinstance(item, tuple):
            image, label = (np.asarray(a) for a in item)
            source = "image/label pair"
        else:
            case = _as_case(item, need_image=True)
            image, label, source = case.image, case.label, case.path
        if label is None:
            raise DataError(f"{source}: no segmentation, cannot split HU by label")
        if image.shape != label.shape:
            raise DataError(f"{source}: image shape {image.shape} differs from label shape {label.shape}")
        yield image, label


def hu_histograms(cases, bins: int | np.ndarray = 200, *, hu_range: tuple[float, float] = (-1000.0, 1000.0)
                  ) -> dict[str, np.ndarray]:
    """Histograms of the HU values of each label (background, kidney, tumour), summed over cases.

    Args:
        cases: a :class:`Case` with image, a case folder, an ``(image, label)`` tuple, or an
            iterable of these.
        bins: number of equal bins over ``hu_range`` (default 200, i.e. 10 HU wide), or explicit
            bin edges.
        hu_range: ``(low, high)`` HU (default ``(-1000, 1000)``); values outside are counted in the
            first / last bin, so every voxel is counted once.

    Returns:
        ``{"edges": (n + 1,), "background": (n,), "kidney": (n,), "tumor": (n,)}``, counts int64.

    Raises:
        DataError: a case without image or label, or with mismatched shapes.
    """
    if np.ndim(bins) == 0:
        n = int(bins)
        if n < 1:
            raise DataError(f"bins={bins!r}: expected a positive count or bin edges")
        edges = np.linspace(float(hu_range[0]), float(hu_range[1]), n + 1)
    else:
        edges = np.asarray(bins, dtype=np.float64)
        if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
            raise DataError("bins: explicit edges must be a strictly increasing 1-D array")
    names = {0: "background", KIDNEY: "kidney", TUMOR: "tumor"}
    out = {"edges": edges, **{name: np.zeros(len(edges) - 1, np.int64) for name in names.values()}}
    for image, label in _image_label_pairs(cases):
        clipped = np.clip(image, edges[0], edges[-1])
        for value, name in names.items():
            counts, _ = np.histogram(clipped[label == value], bins=edges)
            out[name] += counts
    return out


def _keep_largest(label, k):
    return keep_largest_components(label, num_components=k)


def postprocess_ceiling(label: np.ndarray, spacing=None, *, min_kidney_fraction: float = 0.1) -> dict:
    """What the paper's largest-component step costs a *perfect* prediction (MSAN paper, §3.1).

    Applies :func:`kitsmsan.postprocess.keep_largest_components` with ``k = 1`` (the paper's
    "maximal connected component") and ``k = 2`` to the ground truth and scores the result
    against the ground truth with :func:`kitsmsan.metrics.kits_dice`. Computed on the bounding box
    of the foreground (identical result: outside it both volumes are background).

    Args:
        label: ``(Z, Y, X)`` ground truth in {0, 1, 2}.
        spacing: ``(z, y, x)`` mm, only for the ``removed_ml_*`` columns (default None: NaN).
        min_kidney_fraction: a removed component counts as "a whole kidney" if it holds at least
            this fraction of the largest component's voxels (default 0.1; stray voxels and small
            islands of the annotation do not count).

    Returns:
        dict with ``kidney_components`` (26-connected, of label > 0) and, for ``k`` in 1, 2:
        ``kidney_dice_k``, ``tumor_dice_k``, ``composite_k`` (NaN as in ``kits_dice`` when the case
        has no tumour), ``kidney_deleted_k`` (True if a whole kidney was removed) and
        ``removed_ml_k``.

    Raises:
        DataError: if ``label`` is not an integer 3-D array with values in {0, 1, 2}.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise DataError(f"label: expected a 3-D (Z, Y, X) array, got shape {label.shape}")
    voxel_ml = math.prod(float(s) for s in spacing) / 1000.0 if spacing is not None else math.nan
    box = _foreground_box(label > 0)
    crop = label[box] if box is not None else label
    sizes = _component_sizes(crop > 0)
    out: dict = {"kidney_components": int(len(sizes))}
    for k in (1, 2):
        kept = _keep_largest(crop, k)
        scores = kits_dice(kept, crop)
        removed = sizes[k:]
        whole = bool(len(sizes) and np.any(removed >= min_kidney_fraction * sizes[0]))
        out.update({
            f"kidney_dice_k{k}": scores["kidney"],
            f"tumor_dice_k{k}": scores["tumor"],
            f"composite_k{k}": scores["composite"],
            f"kidney_deleted_k{k}": whole,
            f"removed_ml_k{k}": float(removed.sum()) * voxel_ml,
        })
    return out


def ceiling_table(root: str | os.PathLike, *, case_ids: Iterable[str | int] | None = None,
                  progress: bool = False):
    """:func:`postprocess_ceiling` of every labelled case under ``root`` (labels only read).

    Args:
        root: a KiTS19 data folder (a labels-only checkout is enough).
        case_ids: restrict to these cases (default all with a segmentation).
        progress: tqdm bar (default False).

    Returns:
        pandas DataFrame, one row per case: ``case_id`` then :data:`CEILING_COLUMNS`.
    """
    root = Path(root)
    rows = []
    ids = _select(root, True, case_ids)
    for cid in _progress(ids, len(ids), "ceiling", progress):
        case = load_case(root / cid, load_image=False)
        rows.append({"case_id": cid, **postprocess_ceiling(case.label, case.spacing)})
    return pd.DataFrame(rows, columns=["case_id", *CEILING_COLUMNS])


def ceiling_summary(table) -> dict:
    """Mean Dice ceilings and deletion counts of a :func:`ceiling_table` (NaN-aware means)."""
    out = {"cases": int(len(table))}
    for k in (1, 2):
        for col in ("kidney_dice", "tumor_dice", "composite"):
            out[f"{col}_k{k}"] = float(table[f"{col}_k{k}"].mean())
        out[f"kidney_deleted_k{k}"] = int(table[f"kidney_deleted_k{k}"].sum())
    return out


def write_table(table, path: str | os.PathLike, *, comment: str | Iterable[str] = ()) -> Path:
    """Write a DataFrame as CSV, atomically, after comment lines prefixed with ``#``.

    Read it back with :func:`read_table` (``pandas.read_csv(path, comment="#")``).
    """
    lines = [comment] if isinstance(comment, str) else list(comment)
    text = "".join(f"# {line}\n" for line in lines) + table.to_csv(index=False, float_format="%.6g")
    path = Path(path)
    atomic_write_text(path, text)
    return path


def read_table(path: str | os.PathLike):
    """Read a table written by :func:`write_table` (comment lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: table file does not exist")
    return pd.read_csv(path, comment="#")


def summarize_statistics(table) -> Mapping[str, float]:
    """Medians of the main columns of a :func:`dataset_statistics` table (for prose and logs)."""
    cols = ["slices", "slice_thickness_mm", "pixel_spacing_mm", "kidney_ml", "tumor_ml",
            "kidney_components", "kidney_components_1ml", "tumor_components",
            "kidney_slice_fraction", "tumor_slice_fraction"]
    return {c: float(table[c].median()) for c in cols if c in table}
