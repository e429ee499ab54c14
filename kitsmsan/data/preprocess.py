"""HU windowing, normalisation and the memory-mappable training cache (MSAN paper, §2.1).

The paper clips every CT to the Hounsfield window [-200, 500], where almost all kidney and tumour
voxels lie (MSAN paper, §2.1). We then map that window linearly onto [0, 1] (:func:`normalize`); the
paper does not state a normalisation, so this is our choice (book: decisions). Training windows and
inference both call :func:`normalize`, so they cannot disagree.

Reading a 4-slice window straight from a ``.nii.gz`` means decompressing the file up to that slice
(hundreds of MB). :func:`prepare_cache` therefore converts each case once into uncompressed ``.npy``
arrays that :class:`kitsmsan.data.dataset.SliceWindowDataset` memory-maps::

    cache_dir/index.json                 {"version", "window", "image_dtype", "cases": {id: meta}}
    cache_dir/case_00042/image.npy       int16 (Z, Y, X), HU rounded and clipped to the window
    cache_dir/case_00042/label.npy       uint8 (Z, Y, X) in {0, 1, 2}
    cache_dir/case_00042/meta.json       shape, spacing, source size + mtime, kidney/tumour slices

The image is stored as int16 HU already clipped to :data:`HU_WINDOW`: lossless for the integer HU of
real CT, at most 0.5 HU rounding for synthetic float data, and half the bytes of float32.

Each case is written into a hidden temporary folder (files fsynced, ``meta.json`` last) that is renamed
into place in one step, so a killed ``prepare`` never leaves a half case that looks complete; stale
temporary folders are removed by the next run. A case is up to date when its ``meta.json`` records the
same cache version, window and source file sizes and mtimes; such cases are skipped.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, TypedDict

import numpy as np
from tqdm.auto import tqdm

from kitsmsan.data import kits19
from kitsmsan.errors import DataError
from kitsmsan.utils.io import MARKER_FILE, atomic_write_json, claim_output_dir, read_marker, safe_join

HU_WINDOW = (-200.0, 500.0)  # MSAN paper, §2.1
CACHE_VERSION = 1
INDEX_FILE = "index.json"
META_FILE = "meta.json"
IMAGE_FILE = "image.npy"
LABEL_FILE = "label.npy"
_TMP_PREFIX = ".tmp-"
#: the files a cache case folder holds; a case folder with anything else is never replaced
CASE_FILES = frozenset({IMAGE_FILE, LABEL_FILE, META_FILE})


class CaseMeta(TypedDict):
    """Per-case entry of the cache index (also the case's ``meta.json``)."""

    shape: list[int]  # [Z, Y, X]
    spacing: list[float]  # [z, y, x] mm
    kidney_slices: list[int]  # slices with any label > 0 (kidney region, tumour included)
    tumor_slices: list[int]  # slices with any label == 2
    source: dict[str, dict[str, int]]  # file name -> {"size", "mtime_ns"}


class CacheIndex(TypedDict):
    """The dict returned by :func:`prepare_cache` / :func:`load_cache_index`."""

    version: int
    window: list[float]
    image_dtype: str
    cases: dict[str, CaseMeta]


def clip_hu(image: np.ndarray, low: float = HU_WINDOW[0], high: float = HU_WINDOW[1]) -> np.ndarray:
    """Clip CT intensities to the HU window ``[low, high]`` (MSAN paper, §2.1).

    Args:
        image: any-shape array in Hounsfield units.
        low: lower bound, default -200 HU.
        high: upper bound, default 500 HU.

    Returns:
        A new array of the same dtype and shape.

    Raises:
        DataError: if ``low >= high``.
    """
    if not low < high:
        raise DataError(f"HU window ({low}, {high}): low must be below high")
    return np.clip(image, low, high)


def normalize(image_hu: np.ndarray, window: tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """Clip to the HU window and map it linearly onto [0, 1].

    ``low -> 0``, ``high -> 1``; values outside the window saturate. With the default window,
    -200 HU -> 0, 150 HU -> 0.5, 500 HU -> 1.

    Args:
        image_hu: any-shape array in HU (float or integer, e.g. the cache's int16).
        window: ``(low, high)`` in HU, default :data:`HU_WINDOW` = (-200, 500).

    Returns:
        float32 array of the same shape, values in [0, 1].
    """
    low, high = (float(w) for w in window)
    if not low < high:
        raise DataError(f"window {window!r}: low must be below high")
    image_hu = np.asarray(image_hu)
    scale = np.float32(1.0 / (high - low))
    if (image_hu.dtype == np.int16 and low == int(low) and high == int(high)
            and -32768 <= low and high - low <= 32767):
        # int16 HU (the cache's dtype) and an integer window: clip and shift in 2-byte integers,
        # then one cast-and-scale pass -- same result, about 1.3x faster than the float path
        shifted = np.clip(image_hu, np.int16(low), np.int16(high))
        shifted -= np.int16(low)
        out = np.empty(image_hu.shape, dtype=np.float32)
        np.multiply(shifted, scale, out=out, casting="unsafe")
        return out
    lo, hi = np.float32(low), np.float32(high)
    out = image_hu.astype(np.float32, copy=True)
    np.clip(out, lo, hi, out=out)  # clip first (§2.1), then map [low, high] -> [0, 1]
    out -= lo
    out *= scale
    return out


def _source_stat(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _sources(case_dir: Path) -> dict[str, dict[str, int]]:
    out = {}
    for name in (kits19.IMAGING_FILE, kits19.SEGMENTATION_FILE):
        if (case_dir / name).is_file():
            out[name] = _source_stat(case_dir / name)
    return out


def _read_meta(case_cache: Path) -> dict | None:
    try:
        with open(case_cache / META_FILE, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return None
    if not all((case_cache / f).is_file() for f in (IMAGE_FILE, LABEL_FILE)):
        return None
    return meta


def _up_to_date(meta: dict | None, case_dir: Path, window: tuple[float, float]) -> bool:
    return (
        meta is not None
        and meta.get("version") == CACHE_VERSION
        and meta.get("window") == list(window)
        and meta.get("source") == _sources(case_dir)
    )


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def slice_lists(label: np.ndarray) -> tuple[list[int], list[int]]:
    """Slices holding kidney region (label > 0) and tumour (label == 2) of a ``(Z, Y, X)`` label."""
    per_slice_max = label.reshape(label.shape[0], -1).max(axis=1)
    kidney = np.flatnonzero(per_slice_max >= kits19.KIDNEY).tolist()
    tumor = np.flatnonzero(per_slice_max >= kits19.TUMOR).tolist()
    return kidney, tumor


def prepare_case(case_dir: Path, cache_dir: Path, window: tuple[float, float] = HU_WINDOW) -> dict:
    """Convert one case folder into its cache folder, atomically. Returns its meta dict.

    Raises:
        DataError: for a bad case (see :func:`kitsmsan.data.kits19.load_case`), a case without
            segmentation (the training cache needs labels), or a failed write (disk full ...);
            in every case nothing is left under ``cache_dir/<case_id>``.
    """
    cid = case_dir.name
    sources = _sources(case_dir)  # stat before reading: a file changed meanwhile re-prepares
    case = kits19.load_case(case_dir)
    if case.label is None:
        raise DataError(
            f"{case_dir / kits19.SEGMENTATION_FILE}: segmentation is missing; the training cache "
            "holds labelled cases only (predict reads unlabelled cases straight from imaging)"
        )
    image = np.rint(clip_hu(case.image, *window)).astype(np.int16)
    kidney, tumor = slice_lists(case.label)
    meta = {
        "version": CACHE_VERSION,
        "case_id": cid,
        "window": list(window),
        "image_dtype": "int16",
        "shape": list(case.label.shape),
        "spacing": list(case.spacing),
        "kidney_slices": kidney,
        "tumor_slices": tumor,
        "source": sources,
    }
    final = safe_join(cache_dir, cid)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{cid}-", dir=cache_dir))
    old = None
    try:
        _save_npy(tmp / IMAGE_FILE, image)
        _save_npy(tmp / LABEL_FILE, case.label)
        atomic_write_json(tmp / META_FILE, meta)  # written last: its presence marks completeness
        _fsync_dir(tmp)
        if final.exists():
            old = cache_dir / f"{_TMP_PREFIX}old-{cid}-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(cache_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not final.exists():
            os.replace(old, final)  # put the previous version back
            old = None
        reason = "no space left on device" if exc.errno == errno.ENOSPC else str(exc)
        raise DataError(f"{final}: cannot write the cache for {cid}: {reason}; nothing was kept") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return meta


def _refuse_data_folder_as_cache(cache_dir: Path, data_root: Path) -> None:
    """Refuse a cache folder that is (or holds) a data folder, or case folders with other files.

    Preparing replaces ``cache_dir/case_XXXXX`` as a whole, so a cache pointed at the data folder
    itself (or at another copy of KiTS19, compressed or not) would delete the source imaging and
    segmentations. The rule is by content, not by file name: a case folder holding anything but
    :data:`CASE_FILES` is not a cache case, and it is refused even with ``overwrite``.

    Raises:
        DataError: ``cache_dir`` is ``data_root``, or a case folder holds a file the cache did not
            write; the message names the folder and the file. Nothing is written.
    """
    if not cache_dir.is_dir():
        return
    if cache_dir.resolve() == data_root.resolve():
        raise DataError(f"{cache_dir}: the cache folder must differ from the data folder "
                        "(preparing replaces each case folder of the cache)")
    for sub in sorted(cache_dir.iterdir()):
        if kits19._CASE_RE.match(sub.name) and sub.is_dir():
            other = sorted(e.name for e in sub.iterdir() if e.name not in CASE_FILES)
            if other:
                raise DataError(f"{cache_dir}: {sub.name}/ holds {other[0]!r}, which is not a file of a "
                                "kitsmsan cache (a data folder?); refusing to replace it (choose a new folder)")


def is_cache_folder(path: Path) -> bool:
    """True for a cache written before output markers existed: a kitsmsan ``index.json``, case
    folders holding only :data:`CASE_FILES`, and nothing else but hidden temporary entries."""
    try:
        index = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(index, dict) or index.get("version") != CACHE_VERSION or not isinstance(
            index.get("cases"), dict):
        return False
    for e in path.iterdir():
        if e.name == INDEX_FILE or e.name.startswith(_TMP_PREFIX):
            continue
        if not (kits19._CASE_RE.match(e.name) and e.is_dir()
                and all(f.name in CASE_FILES for f in e.iterdir())):
            return False
    return True


def _missing_ancestors(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty; never touches a non-empty one."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _index_entry(meta: dict) -> dict:
    keys = ("shape", "spacing", "kidney_slices", "tumor_slices", "source")
    return {k: meta[k] for k in keys}


def _write_index(cache_dir: Path, window: tuple[float, float]) -> dict:
    cases = {}
    for p in sorted(cache_dir.iterdir()):
        if p.is_dir() and kits19._CASE_RE.match(p.name):
            meta = _read_meta(p)
            if meta is not None and meta.get("version") == CACHE_VERSION:
                cases[p.name] = _index_entry(meta)
    index = {"version": CACHE_VERSION, "window": list(window), "image_dtype": "int16", "cases": cases}
    try:
        atomic_write_json(cache_dir / INDEX_FILE, index)
    except OSError as exc:
        reason = "no space left on device" if exc.errno == errno.ENOSPC else str(exc)
        raise DataError(f"{cache_dir / INDEX_FILE}: cannot write the cache index: {reason}") from exc
    return index


def prepare_cache(
    data_root: str | Path,
    cache_dir: str | Path,
    *,
    case_ids: Iterable[int | str] | None = None,
    progress: bool = True,
    window: tuple[float, float] = HU_WINDOW,
    overwrite: bool = False,
) -> dict:
    """Convert KiTS19 cases into the memory-mappable cache (incremental and atomic).

    Args:
        data_root: KiTS19 data folder with ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``.
        cache_dir: output folder (created if missing).
        case_ids: cases to prepare (ints, ``"case_XXXXX"`` ids or a range string ``"0-179"``);
            default None = every case with imaging under ``data_root``.
        progress: show a tqdm progress bar (default True).
        window: HU window the stored image is clipped to, default :data:`HU_WINDOW`.
        overwrite: take over a ``cache_dir`` that is not a kitsmsan cache (default False:
            refused, see :func:`kitsmsan.utils.io.claim_output_dir`); its files are kept.

    Returns:
        The index (see :class:`CacheIndex`), also written to ``cache_dir/index.json``; it lists every
        complete case in ``cache_dir``.

    Raises:
        DataError: empty/wrong data folder, an unknown case id, a bad or unlabelled case, or a
            write error (disk full). Cases finished before the error stay valid and are indexed;
            a cache folder this call created is removed again when no case was finished.
    """
    data_root, cache_dir = Path(data_root), Path(cache_dir)
    available = kits19.list_cases(data_root)
    if case_ids is None:
        wanted = available
    else:
        if isinstance(case_ids, str):  # a range like "0-179,185"
            case_ids = kits19.parse_case_range(case_ids)
        wanted = [kits19.normalize_case_id(c) for c in case_ids]
        missing = sorted(set(wanted) - set(available))
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DataError(f"{data_root}: unknown case id(s) {shown} (no imaging.nii.gz there)")
        wanted = sorted(set(wanted))
    window = (float(window[0]), float(window[1]))
    if cache_dir.exists() and not cache_dir.is_dir():
        raise DataError(f"{cache_dir}: cache path exists and is not a folder")
    _refuse_data_folder_as_cache(cache_dir, data_root)
    created = _missing_ancestors(cache_dir)  # folders this call creates: removed again if it fails
    claim_output_dir(cache_dir, "cache", command="prepare", overwrite=overwrite, recognize=is_cache_folder)
    foreign = set((read_marker(cache_dir) or {}).get("foreign") or [])
    for stale in cache_dir.glob(f"{_TMP_PREFIX}*"):  # left by a killed run
        if stale.name not in foreign:
            shutil.rmtree(stale, ignore_errors=True)

    todo = [c for c in wanted if not _up_to_date(_read_meta(cache_dir / c), data_root / c, window)]
    bar = tqdm(total=len(wanted), initial=len(wanted) - len(todo), desc="prepare", unit="case",
               disable=not progress)
    try:
        for cid in todo:
            bar.set_postfix_str(cid)
            prepare_case(data_root / cid, cache_dir, window)
            bar.update(1)
    except BaseException:
        if created and all(e.name == MARKER_FILE for e in cache_dir.iterdir()):
            with contextlib.suppress(OSError):
                (cache_dir / MARKER_FILE).unlink()
            _remove_empty(created)  # a new cache folder and no case done: leave no trace
        else:
            with contextlib.suppress(DataError):  # index the cases done so far, if the disk allows
                _write_index(cache_dir, window)
        raise
    finally:
        bar.close()
    _write_index(cache_dir, window)
    return load_cache_index(cache_dir)


def load_cache_index(cache_dir: str | Path) -> dict:
    """Read ``cache_dir/index.json``.

    Returns:
        ``{"version", "window", "image_dtype", "cases": {case_id: {"shape", "spacing",
        "kidney_slices", "tumor_slices", "source"}}}``.

    Raises:
        DataError: if the index is missing, unreadable, of another cache version, or lists a case
            whose folder is gone.
    """
    cache_dir = Path(cache_dir)
    path = cache_dir / INDEX_FILE
    if not path.is_file():
        raise DataError(f"{path}: cache index is missing (run `kitsmsan prepare` first)")
    try:
        with open(path, encoding="utf-8") as fh:
            index: Any = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cache index is unreadable ({exc})") from exc
    if not isinstance(index, dict) or not isinstance(index.get("cases"), dict):
        raise DataError(f"{path}: not a kitsmsan cache index")
    if index.get("version") != CACHE_VERSION:
        raise DataError(f"{path}: cache version {index.get('version')} != {CACHE_VERSION}; re-run prepare")
    for cid in index["cases"]:
        if not (safe_join(cache_dir, cid) / IMAGE_FILE).is_file():
            raise DataError(f"{cache_dir / cid}: listed in the index but missing; re-run prepare")
    return index
