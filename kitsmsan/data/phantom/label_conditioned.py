"""Label-conditioned phantoms: a real KiTS19 segmentation kept exactly, the CT synthesised around it
(:func:`phantom_from_label`, :func:`write_label_conditioned_dataset`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from kitsmsan.data.kits19 import (
    TUMOR,
    case_number,
    check_label_values,
    list_cases,
    load_case,
    normalize_case_id,
    save_case,
)
from kitsmsan.data.phantom.anatomy import (
    PhantomSpec,
    _check_positive,
    _check_seed,
    _draw_anatomy,
    _draw_hu,
    _rng,
)
from kitsmsan.data.phantom.render import (
    _Components,
    _Grid,
    _render,
)
from kitsmsan.data.phantom.writer import (
    _case_seed,
    _progress,
    _refuse_foreign_cases,
    _write_metadata,
)
from kitsmsan.errors import ConfigError, DataError


def resample_label_inplane(label: np.ndarray, spacing, size: int):
    """Nearest-neighbour in-plane resampling: the longer side becomes ``size`` pixels.

    The aspect ratio (hence square pixels) is kept: a 512 x 796 slice (case_00160) at size 128
    becomes 82 x 128. Slices are untouched.

    Returns:
        ``(label, spacing)``: uint8 ``(Z, Y', X')`` and the updated ``(z, y, x)`` mm.
    """
    size = _check_positive(size, "size", integer=True, minimum=1)
    _, ny, nx = label.shape
    f = size / max(ny, nx)
    new = (max(1, int(math.floor(ny * f + 0.5))), max(1, int(math.floor(nx * f + 0.5))))  # half up
    iy = np.minimum((np.arange(new[0]) + 0.5) * ny / new[0], ny - 1).astype(np.intp)
    ix = np.minimum((np.arange(new[1]) + 0.5) * nx / new[1], nx - 1).astype(np.intp)
    out = np.ascontiguousarray(label[:, iy][:, :, ix])
    return out, (float(spacing[0]), spacing[1] * ny / new[0], spacing[2] * nx / new[1])


def resample_label_z(label: np.ndarray, spacing, slice_thickness: float):
    """Nearest-neighbour resampling along z to about ``slice_thickness`` mm per slice.

    The number of slices becomes ``max(1, round(Z * z_spacing / slice_thickness))``; output slice
    ``k`` takes source slice ``floor((k + 0.5) * Z / Z')`` (the source slice under its centre). The
    z extent is kept exactly, so the new z spacing is ``Z * z_spacing / Z'`` — ``slice_thickness``
    up to rounding. In-plane pixels are untouched. Thin structures (a tumour smaller than the new
    slice thickness) can disappear, as in a real thick-slice scan.

    Args:
        label: ``(Z, Y, X)`` labels.
        spacing: ``(z, y, x)`` mm.
        slice_thickness: target z spacing in mm (> 0).

    Returns:
        ``(label, spacing)``: uint8 ``(Z', Y, X)`` and the updated ``(z, y, x)`` mm.

    Raises:
        ConfigError: ``slice_thickness`` is not a positive number.
    """
    thickness = _check_positive(slice_thickness, "slice_thickness")
    nz = label.shape[0]
    new = max(1, int(math.floor(nz * float(spacing[0]) / thickness + 0.5)))
    iz = np.minimum((np.arange(new) + 0.5) * nz / new, nz - 1).astype(np.intp)
    out = np.ascontiguousarray(label[iz], dtype=np.uint8)
    return out, (float(spacing[0]) * nz / new, float(spacing[1]), float(spacing[2]))


def _check_margin(value) -> float:
    """``z_margin_mm`` must be a finite number >= 0 (ConfigError otherwise)."""
    bad = isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
    if bad or not math.isfinite(float(value)) or value < 0:
        raise ConfigError(f"z_margin_mm={value!r}: expected a number >= 0 (mm)")
    return float(value)


def crop_label_z(label: np.ndarray, spacing, z_margin_mm: float):
    """Crop the slices to the kidney region's z extent (``label > 0``) plus ``z_margin_mm`` each side.

    The margin is rounded up to whole slices and clipped to the volume; a label without kidney is
    returned whole. The slices kept are unchanged (no resampling).

    Args:
        label: ``(Z, Y, X)`` labels.
        spacing: ``(z, y, x)`` mm.
        z_margin_mm: margin above and below the kidneys, in mm (>= 0).

    Returns:
        ``(label, (z0, z1))``: the cropped ``(z1 - z0, Y, X)`` label and the source slice range.

    Raises:
        ConfigError: ``z_margin_mm`` is negative or not a number.
    """
    margin = _check_margin(z_margin_mm)
    nz = label.shape[0]
    rows = np.flatnonzero((label > 0).any(axis=(1, 2)))
    if not len(rows):
        return label, (0, nz)
    pad = int(math.ceil(margin / float(spacing[0]) - 1e-9))
    z0, z1 = max(0, int(rows[0]) - pad), min(nz, int(rows[-1]) + 1 + pad)
    return np.ascontiguousarray(label[z0:z1]), (z0, z1)


def _spec_from_label(label: np.ndarray, spacing, seed: int) -> PhantomSpec:
    """Body, spine and organs placed around the kidneys of a real label."""
    rng = _rng(seed, 4)
    grid = _Grid(label.shape, spacing)
    sp = np.asarray(grid.spacing)
    kc = _Components(label > 0)
    sizes = kc.sizes
    offset = np.array([0.0, grid.shape[1] * sp[1] / 2, grid.shape[2] * sp[2] / 2])
    fg = np.argwhere(label > 0)
    if len(fg):
        lo_mm, hi_mm = (fg.min(axis=0) + 0.5) * sp - offset, (fg.max(axis=0) + 0.5) * sp - offset
    else:  # an empty label: a body in the middle of the field of view
        lo_mm, hi_mm = np.array([0.0, -10, -60]), np.array([grid.z[-1], 30, 60])
    kid = []
    if len(sizes):
        for i in np.argsort(-sizes)[:2]:
            if sizes[i] >= 0.2 * sizes.max():
                idx = kc.voxels(i)
                c = (idx.mean(axis=0) + 0.5) * sp - offset
                w = (idx[:, 2].max() - idx[:, 2].min() + 1) * sp[2] / 2
                kid.append((c, w))
    if len(kid) == 2:
        midline = float((kid[0][0][2] + kid[1][0][2]) / 2)
    elif len(kid) == 1:
        cx = kid[0][0][2]
        midline = float(cx - np.sign(cx) * 70.0) if abs(cx) > 20 else float(cx + 70.0)
    else:
        midline = float((lo_mm[2] + hi_mm[2]) / 2)
    ky = float(np.mean([c[1] for c, _ in kid])) if kid else float(hi_mm[1] - 20)
    spine_y = ky - float(rng.uniform(5, 15))
    gaps = [abs(c[2] - midline) - w for c, w in kid]
    vertebra_rx = float(np.clip(min(gaps, default=30.0) - 8.0, 12.0, 24.0))
    fat_mm = float(rng.uniform(8, 40))
    muscle_mm = float(rng.uniform(8, 15))
    margin = fat_mm + muscle_mm + float(rng.uniform(15, 40))
    body_semi_x = max(abs(hi_mm[2] - midline), abs(lo_mm[2] - midline)) + margin
    body_semi_x = max(body_semi_x, float(rng.uniform(135, 175)))
    back = max(spine_y + float(rng.uniform(75, 95)), hi_mm[1] + margin)
    body_semi_y = max(body_semi_x * float(rng.uniform(0.62, 0.8)), (back - lo_mm[1] + margin) / 2)
    body_y = back - body_semi_y
    # liver / spleen height: the right (small x) and left kidney's z, mirrored when one is missing
    zs = {"right": None, "left": None}
    for c, _ in kid:
        zs["right" if c[2] < midline else "left"] = float(c[0])
    z_mid = float((lo_mm[0] + hi_mm[0]) / 2)
    right_z = zs["right"] if zs["right"] is not None else (zs["left"] if zs["left"] is not None else z_mid)
    left_z = zs["left"] if zs["left"] is not None else right_z
    anatomy = _draw_anatomy(
        rng, midline_x=midline, body_y=body_y, body_semi_x=body_semi_x, body_semi_y=body_semi_y,
        fat_mm=fat_mm, muscle_mm=muscle_mm, spine_y=spine_y, vertebra_rx=vertebra_rx,
        z_extent=float(grid.shape[0] * sp[0]), right_kidney_z=right_z, left_kidney_z=left_z)
    return PhantomSpec(int(seed), tuple(int(v) for v in label.shape), tuple(float(s) for s in sp),
                       anatomy, (), (), _draw_hu(rng), float(rng.uniform(10, 20)))


def _check_spacing(spacing, name="spacing") -> tuple[float, float, float]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}={spacing!r}: expected three numbers (z, y, x) in mm") from exc
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise DataError(f"{name}={spacing!r}: expected three positive finite numbers (z, y, x)")
    return values


def phantom_from_label(label: np.ndarray, spacing, seed: int, *, size: int | None = None,
                       slice_thickness: float | None = None, z_margin_mm: float | None = None,
                       return_tissues: bool = False):
    """Synthesise CT intensities around a real segmentation (a "label-conditioned" phantom).

    The label is kept exactly (``size=None``); a body containing the kidneys, the spine between and
    in front of their posterior edge, back muscles, psoas, vessels (renal vessels to each hilum),
    liver beside the right kidney, spleen above the left, bowel, fat and noise are drawn around it,
    and the kidneys and tumours are painted with the same cortex/medulla/sinus and tumour textures
    as the pure phantoms (:func:`~kitsmsan.data.phantom.writer.make_phantom`).

    Args:
        label: ``(Z, Y, X)`` integer labels in {0, 1, 2} (uint8 or uint16, as in the KiTS19 files).
        spacing: ``(z, y, x)`` mm of ``label``.
        seed: non-negative integer; same inputs and seed give identical images.
        size: if given, resample in-plane first (nearest neighbour, the longer side becomes
            ``size``; see :func:`resample_label_inplane`) and update the spacing (default None:
            keep the label's grid).
        slice_thickness: if given, resample along z by nearest neighbour to about this many mm per
            slice (:func:`resample_label_z`) and update the spacing (default None: keep the slices —
            the label stays exact). For fast CPU runs: a 611-slice 0.5 mm case
            becomes ~60 slices at 5 mm.
        z_margin_mm: if given, first crop the slices to the kidneys' z extent plus this margin in
            mm (:func:`crop_label_z`; default None: keep every slice). Applied before
            ``slice_thickness``.
        return_tissues: also return the tissue map (default False).

    Returns:
        ``(image, label, spacing)`` (or ``(image, label, spacing, tissues)``): float32 HU, the
        (possibly resampled) uint8 label, ``(z, y, x)`` mm.

    Raises:
        DataError: if ``label`` is not 3-D or holds values outside {0, 1, 2}, or ``spacing`` is bad.
        ConfigError: bad ``seed``, ``size``, ``slice_thickness`` or ``z_margin_mm``.
    """
    seed = _check_seed(seed)
    if slice_thickness is not None:
        _check_positive(slice_thickness, "slice_thickness")
    if z_margin_mm is not None:
        _check_margin(z_margin_mm)
    label = np.asarray(label)
    if label.ndim != 3 or min(label.shape) < 1:
        raise DataError(f"label: expected a non-empty 3-D (Z, Y, X) array, got shape {label.shape}")
    label = check_label_values(label, "label")
    spacing = _check_spacing(spacing)
    if z_margin_mm is not None:
        label, _ = crop_label_z(label, spacing, z_margin_mm)
    if slice_thickness is not None:
        label, spacing = resample_label_z(label, spacing, slice_thickness)
    if size is not None:
        label, spacing = resample_label_inplane(label, spacing, size)
    spec = _spec_from_label(label, spacing, seed)
    image, label_out, tissues, _ = _render(spec, label)
    return (image, label_out, spec.spacing, tissues) if return_tissues else \
        (image, label_out, spec.spacing)


def write_label_conditioned_dataset(
    labels_root: str | Path,
    out_root: str | Path,
    *,
    case_ids: Iterable[str | int] | None = None,
    size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    slice_thickness: float | None = None,
    z_margin_mm: float | None = None,
) -> list[str]:
    """Write label-conditioned phantoms of real KiTS19 segmentations in the KiTS19 layout.

    Reads ``labels_root/case_XXXXX/segmentation.nii.gz`` (labels-only folders are fine), writes
    ``out_root/case_XXXXX/{imaging,segmentation}.nii.gz`` with the official header convention and
    ``phantoms.json`` (kind ``"label-conditioned"``, the source folder, per-case seed and
    spacing). Case ``case_000NN`` uses the seed derived from ``(seed, NN)``. Attribute KiTS19
    (CC BY-NC-SA 4.0) when you use the result: the segmentations are theirs.

    Args:
        labels_root: folder with KiTS19 case folders holding ``segmentation.nii.gz``.
        out_root: output folder (may not be ``labels_root``).
        case_ids: which cases (ints or ids; default all with a segmentation).
        size: in-plane resampling (default None: keep the real grid).
        seed: dataset seed (default 0).
        progress: tqdm bar (default True).
        slice_thickness: z resampling to about this many mm per slice, nearest neighbour (default
            None: keep the real slices). See :func:`phantom_from_label`.
        z_margin_mm: crop the slices to the kidneys' z extent plus this margin in mm (default None:
            no crop); ``phantoms.json`` records the source slice range per case (``z_range``).

    Returns:
        The case ids written.

    Raises:
        DataError: missing/corrupt label files (named), ``out_root`` equal to ``labels_root``, or
            ``out_root`` holding case folders not listed in its ``phantoms.json`` (nothing written).
        ConfigError: bad ``seed``, ``size``, ``slice_thickness`` or ``z_margin_mm``.
    """
    seed = _check_seed(seed)
    _check_positive(size, "size", integer=True, minimum=1)
    if slice_thickness is not None:
        _check_positive(slice_thickness, "slice_thickness")
    if z_margin_mm is not None:
        _check_margin(z_margin_mm)
    labels_root, out_root = Path(labels_root), Path(out_root)
    if out_root.resolve() == labels_root.resolve():
        raise DataError(f"{out_root}: the output folder must differ from the labels folder")
    available = list_cases(labels_root, require_imaging=False)
    ids = available if case_ids is None else [normalize_case_id(c) for c in case_ids]
    missing = [c for c in ids if c not in available]
    if missing:
        raise DataError(f"{labels_root}: no segmentation for {', '.join(missing[:5])}"
                        + (" ..." if len(missing) > 5 else ""))
    _refuse_foreign_cases(out_root, ids)
    written = []
    for cid in _progress(ids, len(ids), "label-conditioned phantoms", progress):
        case = load_case(labels_root / cid, load_image=False)
        case_seed = _case_seed(seed, case_number(cid))
        source = case.label
        z_range = (0, source.shape[0])
        if z_margin_mm is not None:
            source, z_range = crop_label_z(source, case.spacing, z_margin_mm)
        image, label, spacing = phantom_from_label(source, case.spacing, case_seed, size=size,
                                                   slice_thickness=slice_thickness)
        save_case(out_root, cid, image, label, spacing)
        entry = {"seed": case_seed, "shape": list(label.shape),
                 "spacing": [round(float(s), 6) for s in spacing],
                 "source_shape": list(case.label.shape),
                 "source_spacing": [round(float(s), 6) for s in case.spacing],
                 "z_range": [int(z_range[0]), int(z_range[1])],
                 "kidney_voxels": int((label > 0).sum()), "tumor_voxels": int((label == TUMOR).sum())}
        _write_metadata(out_root, "label-conditioned", seed, {cid: entry},
                        {"size": size, "slice_thickness": slice_thickness, "z_margin_mm": z_margin_mm,
                         "labels_root": str(labels_root),
                         "attribution": "Segmentations: KiTS19 challenge (Heller et al. 2019), "
                                        "CC BY-NC-SA 4.0"})
        written.append(cid)
    return written
