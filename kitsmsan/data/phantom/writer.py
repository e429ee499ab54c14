"""Pure phantoms: one case (:func:`make_phantom`) and a KiTS19-layout dataset of them
(:func:`write_phantom_dataset`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from kitsmsan.data.kits19 import (
    TUMOR,
    normalize_case_id,
    save_case,
)
from kitsmsan.data.kits19 import (
    case_id as _case_id,
)
from kitsmsan.data.phantom.anatomy import (
    _SALT,
    GENERATOR_VERSION,
    PhantomSpec,
    _check_positive,
    _check_seed,
    phantom_spec,
)
from kitsmsan.data.phantom.render import (
    _render,
)
from kitsmsan.errors import ConfigError, DataError
from kitsmsan.utils.io import atomic_write_json


def render_phantom(spec: PhantomSpec, *, return_tissues: bool = False):
    """Render a :class:`~kitsmsan.data.phantom.anatomy.PhantomSpec` to voxels (see :func:`make_phantom` for the outputs)."""
    image, label, tissues, _ = _render(spec, None)
    return (image, label, tissues) if return_tissues else (image, label)


def make_phantom(
    seed: int,
    *,
    size: int = 512,
    num_slices: int | None = None,
    slice_thickness: float | None = None,
    pixel_spacing: float | None = None,
    return_tissues: bool = False,
):
    """A synthetic KiTS-like abdominal CT case (stand-in for the KiTS19 data of MSAN paper, §2.1).

    The spacing is not returned (the contract is ``(image, label)``); it is
    ``phantom_spacing(seed, **same_kwargs)`` (or ``phantom_spec(...).spacing``), a cheap function
    of the same arguments. :func:`write_phantom_dataset` stores it in the NIfTI headers.

    Args:
        seed: non-negative integer; same seed and arguments give identical arrays.
        size: in-plane rows = columns (default 512). Same anatomy at every size (see
            :func:`~kitsmsan.data.phantom.anatomy.phantom_spec`).
        num_slices: slice count override (default None: kidneys plus 20-80 mm margins at the drawn
            slice thickness, e.g. ~70 slices at 3 mm).
        slice_thickness: mm (default None: drawn like KiTS19: 0.5/1/2.5/3/5 mm).
        pixel_spacing: in-plane mm (default None: the case's field of view / ``size``, ~0.78 mm at
            512).
        return_tissues: also return the uint8 tissue map (codes in :data:`~kitsmsan.data.phantom.anatomy.TISSUES`; default False).

    Returns:
        ``(image, label)`` or ``(image, label, tissues)``: image float32 ``(Z, Y, X)`` in HU (air
        -1000, fat ~-100, muscle ~50, kidney cortex 150-250, medulla 30-80, tumour 40-180, bone up
        to ~1000), label uint8 ``(Z, Y, X)`` in {0, 1, 2}.

    Raises:
        ConfigError: naming a bad argument.
    """
    spec = phantom_spec(seed, size=size, num_slices=num_slices, slice_thickness=slice_thickness,
                        pixel_spacing=pixel_spacing)
    return render_phantom(spec, return_tissues=return_tissues)


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="case")


def _case_seed(seed: int, k: int) -> int:
    """Seed of case ``k`` of a dataset drawn with ``seed`` (a 63-bit hash of the pair)."""
    state = np.random.SeedSequence([_SALT, int(seed), int(k)]).generate_state(1, np.uint64)
    return int(state[0]) >> 2


def _check_case_ids(case_ids, num_cases: int) -> list[str]:
    if case_ids is None:
        return [_case_id(k) for k in range(num_cases)]
    ids = [normalize_case_id(c) for c in case_ids]
    if len(ids) != num_cases:
        raise ConfigError(f"case_ids: {len(ids)} ids given for num_cases={num_cases}")
    if len(set(ids)) != len(ids):
        raise ConfigError("case_ids: duplicate case ids")
    return ids


def _refuse_foreign_cases(root: Path, ids: Sequence[str]) -> None:
    """Refuse to write phantoms over case folders that ``kitsmsan phantoms`` did not write.

    A case folder of ``ids`` that already holds files and is not listed in ``root/phantoms.json``
    is real (or foreign) data: writing a phantom there would replace it.

    Raises:
        DataError: naming ``root`` and the case folders; nothing is written.
    """
    listed: set[str] = set()
    meta_path = root / "phantoms.json"
    if meta_path.is_file():
        try:
            cases = json.loads(meta_path.read_text()).get("cases", {})
            listed = set(cases) if isinstance(cases, dict) else set()
        except (OSError, ValueError, AttributeError):
            listed = set()
    foreign = [cid for cid in ids
               if cid not in listed and (root / cid).is_dir() and any((root / cid).iterdir())]
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise DataError(f"{root}: holds case folders not written by kitsmsan phantoms ({shown}; not "
                        "listed in phantoms.json); refusing to overwrite them (choose a new folder)")


def _write_metadata(root: Path, kind: str, seed: int, entries: dict, extra: dict) -> None:
    meta_path = root / "phantoms.json"
    meta = {"generator": "kitsmsan.data.phantom", "kind": kind, "version": GENERATOR_VERSION,
            "seed": seed, **extra, "cases": {}}
    if meta_path.is_file():  # merge with an earlier run into the same folder
        try:
            old = json.loads(meta_path.read_text())
            if old.get("kind") == kind and old.get("version") == GENERATOR_VERSION:
                meta["cases"].update(old.get("cases", {}))
        except (OSError, ValueError):
            pass
    meta["cases"].update(entries)
    meta["cases"] = dict(sorted(meta["cases"].items()))
    atomic_write_json(meta_path, meta)


def write_phantom_dataset(
    root: str | Path,
    num_cases: int,
    seed: int = 0,
    *,
    size: int = 512,
    case_ids: Sequence[str | int] | None = None,
    num_slices: int | None = None,
    pixel_spacing: float | None = None,
    progress: bool = True,
) -> list[str]:
    """Write pure phantoms in the KiTS19 layout, plus ``phantoms.json``.

    Each case goes through :func:`kitsmsan.data.kits19.save_case` (float32 imaging, uint8
    segmentation, the official affine; atomic). Case ``k`` uses the seed derived from
    ``(seed, k)``, so case ``k`` does not depend on ``num_cases``. ``phantoms.json`` records the
    generator version, the dataset seed and, per case, its seed, shape, spacing, kidneys, tumours
    and the painted tumour components (merged with an existing file of the same kind/version).

    Args:
        root: output data folder (created).
        num_cases: number of cases (>= 1).
        seed: dataset seed (default 0).
        size: in-plane size (default 512).
        case_ids: ids to write (default ``case_00000`` ... in order); ``len == num_cases``.
        num_slices: slice count override for every case (default None: per case).
        pixel_spacing: in-plane spacing in mm for every case (default None: the whole abdomen's
            field of view at any ``size``, as :func:`make_phantom`). A finer spacing at a small
            ``size`` gives a smaller field of view centred on the abdomen (the CPU smoke data).
        progress: show a tqdm bar (default True).

    Returns:
        The case ids written.

    Raises:
        ConfigError: bad arguments (nothing written).
        DataError: ``root`` holds case folders of ``case_ids`` that are not listed in its
            ``phantoms.json`` (real data would be overwritten; nothing written).
    """
    num_cases = _check_positive(num_cases, "num_cases", integer=True)
    seed = _check_seed(seed)
    ids = _check_case_ids(case_ids, num_cases)
    phantom_spec(0, size=size, num_slices=num_slices, pixel_spacing=pixel_spacing)  # validates before writing
    root = Path(root)
    _refuse_foreign_cases(root, ids)
    entries = {}
    for k, cid in _progress(enumerate(ids), len(ids), "phantoms", progress):
        case_seed = _case_seed(seed, k)
        spec = phantom_spec(case_seed, size=size, num_slices=num_slices, pixel_spacing=pixel_spacing)
        image, label, _, tumors = _render(spec, None)
        save_case(root, cid, image, label, spec.spacing)
        entries[cid] = {**spec.to_dict(), "index": k, "tumor_components": tumors,
                        "kidney_voxels": int((label > 0).sum()), "tumor_voxels": int((label == TUMOR).sum())}
        _write_metadata(root, "pure", seed, {cid: entries[cid]}, {"size": size})
    return ids


