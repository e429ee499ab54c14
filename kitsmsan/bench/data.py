"""The data benchmark: windows per second from the cache vs the ``.nii.gz``, and the DataLoader."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from kitsmsan.bench.common import (
    PAPER_BATCH,
    PAPER_CASE_SLICES,
    PAPER_SIZE,
    PAPER_SLICES,
    _check_int,
    _emit,
    _sig,
    provenance,
)
from kitsmsan.data.dataset import SliceWindowDataset
from kitsmsan.data.kits19 import IMAGING_FILE, save_case
from kitsmsan.data.phantom import make_phantom
from kitsmsan.data.preprocess import normalize, prepare_cache
from kitsmsan.errors import ConfigError
from kitsmsan.utils.device import resolve_device
from kitsmsan.utils.torch_state import torch_settings


def _synthetic_case(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A crude abdomen-like volume (body ellipse, two kidneys with a tumour) in HU, and its label.

    Cheap (about 1 s for 60 × 512 × 512); used where the content does not matter for the timing.
    """
    rng = np.random.default_rng(seed)
    z, y, x = shape
    zz, yy, xx = np.ogrid[:z, :y, :x]
    body = ((yy - y / 2) / (0.42 * y)) ** 2 + ((xx - x / 2) / (0.47 * x)) ** 2 <= 1
    image = rng.normal(0, 15, shape).astype(np.float32)
    image += np.where(body, 40.0, -1000.0).astype(np.float32)
    label = np.zeros(shape, np.uint8)

    def ellipsoid(cz, cy, cx, rz, ry, rx):
        return ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1

    for cx in (0.32 * x, 0.68 * x):
        label[ellipsoid(z / 2, 0.55 * y, cx, 0.15 * z, 0.07 * y, 0.05 * x)] = 1
    tumor = np.broadcast_to(ellipsoid(z / 2, 0.55 * y, 0.32 * x, 0.04 * z, 0.03 * y, 0.03 * x), shape)
    label[tumor & (label > 0)] = 2
    image[label == 1] = 180.0
    image[label == 2] = 100.0
    return np.rint(image).astype(np.float32), label


def _make_case(
    shape: tuple[int, int, int], seed: int, source: str = "phantom"
) -> tuple[np.ndarray, np.ndarray, str]:
    """``(image HU float32, label uint8, source)`` of ``shape`` (Z, Y, X).

    ``source="phantom"`` uses :func:`kitsmsan.data.phantom.writer.make_phantom` (realistic content, so a
    realistic ``.nii.gz`` compression ratio; ~8 s for 60 × 512 × 512), falling back to the synthetic
    volume when the phantom cannot be made at this shape; ``"synthetic"`` is :func:`_synthetic_case`.
    """
    if source not in ("phantom", "synthetic"):
        raise ConfigError(f"source={source!r}: expected 'phantom' or 'synthetic'")
    if source == "phantom":
        try:
            image, label = make_phantom(seed, size=shape[1], num_slices=shape[0])[:2]
            if tuple(image.shape) == tuple(shape):
                return np.asarray(image, np.float32), np.asarray(label, np.uint8), "phantom"
        except ValueError:  # ConfigError: no phantom at this shape
            pass
    image, label = _synthetic_case(shape, seed)
    return image, label, "synthetic"


# ------------------------------------------------------------------------------------ data
def bench_data(
    *,
    size: int = PAPER_SIZE,
    num_slices: int = PAPER_CASE_SLICES,
    num_windows: int = 2000,
    num_nifti_windows: int = 5,
    workers: Sequence[int] = (0, 1, 2),
    loader_batches: int = 50,
    batch_size: int = PAPER_BATCH,
    label_dtype: str = "uint8",
    source: str = "phantom",
    nifti: bool = True,
    device: str | None = None,
    seed: int = 0,
    work_dir: str | Path | None = None,
    verbose: bool = True,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict[str, Any]]:
    """Training windows per second: the cache vs the ``.nii.gz``, and the ``DataLoader``.

    One case of ``num_slices × size × size`` is written as KiTS19 ``.nii.gz`` and prepared into the
    cache. Then, on one thread:

    * ``num_windows`` random 4-slice windows (after 200 warm-up windows and one read of the whole
      case, i.e. a warm page cache) from :class:`~kitsmsan.data.dataset.SliceWindowDataset`, with the
      default int64 label and with the uint8 fast-path label;
    * ``num_nifti_windows`` windows read straight from the ``.nii.gz`` (nibabel load, slice,
      normalise), which decompresses the file up to the window every time.

    Then a ``torch.utils.data.DataLoader`` over the cache at ``batch_size × 1 × 4 × size × size``
    (pinned memory on CUDA, persistent workers), for each worker count in ``workers``:
    ``loader_batches`` batches after 3 warm-up batches (worker start-up excluded).

    Args:
        size: in-plane size of the test case, default 512 (the paper's).
        num_slices: slices of the test case, default 300.
        num_windows: windows timed from the cache, default 2000.
        num_nifti_windows: windows timed from the ``.nii.gz``, default 5 (each is slow).
        workers: DataLoader worker counts, default ``(0, 1, 2)``; empty to skip the loader rows.
        loader_batches: batches timed per worker count, default 50.
        batch_size: windows per batch, default 2 (the paper's).
        label_dtype: label dtype of the loader's dataset, default ``"uint8"``, what
            :class:`~kitsmsan.train.loop.Trainer` uses (the label is widened on the device); ``"int64"`` is
            the dataset's own default.
        source: ``"phantom"`` (default, realistic compression) or ``"synthetic"`` (faster to make).
        nifti: time the ``.nii.gz`` path, default True.
        device: where batches would go (decides ``pin_memory``); default CUDA if available.
        seed: seed of the case and the sampler, default 0.
        work_dir: scratch folder; default a temporary folder, removed afterwards.
        verbose: print each row as it is measured, default True.
        on_row: called with each row as soon as it is measured (e.g. to save partial results).

    Returns:
        Rows: one ``"data"`` row (``cache_windows_per_s``, ``nifti_windows_per_s``, ``cache_vs_nifti``
        = their ratio, per-CPU-second rates, the uint8 rates, ``prepare_s``) and one ``"data_loader"``
        row per worker count (``windows_per_s``, ``batches_per_s``).

    Raises:
        ConfigError: bad sizes or counts.
    """
    size = _check_int("size", size, 16)
    num_slices = _check_int("num_slices", num_slices, PAPER_SLICES)
    num_windows = _check_int("num_windows", num_windows, 1)
    num_nifti_windows = _check_int("num_nifti_windows", num_nifti_windows, 1)
    loader_batches = _check_int("loader_batches", loader_batches, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    workers = [_check_int("workers", w, 0) for w in workers]
    dev = resolve_device(device)
    prov = provenance(str(dev))
    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="kitsmsan-bench-")) if work_dir is None else Path(work_dir)
    try:
        with torch_settings(threads=1):
            row = _data_row(
                tmp, (num_slices, size, size), seed, source, num_windows, num_nifti_windows if nifti else None
            )
            _emit(rows, {**row, "load_avg": round(os.getloadavg()[0], 2), **prov}, on_row, verbose)
            for w in workers:
                res = _loader_rate(
                    tmp / "cache", w, batch_size, loader_batches, dev.type == "cuda", label_dtype, seed
                )
                _emit(
                    rows,
                    {
                        "benchmark": "data_loader",
                        "workers": w,
                        "batch": f"{batch_size}x1x{PAPER_SLICES}x{size}x{size}",
                        "label_dtype": label_dtype,
                        "pin_memory": dev.type == "cuda",
                        "batches": loader_batches,
                        "windows_per_s": _sig(loader_batches * batch_size / res),
                        "batches_per_s": _sig(loader_batches / res),
                        "load_avg": round(os.getloadavg()[0], 2),
                        **prov,
                    },
                    on_row,
                    verbose,
                )
    finally:
        if work_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _cache_rate(
    cache: Path, num_slices: int, num_windows: int, seed: int, label_dtype: str
) -> tuple[float, float]:
    """(wall, CPU) seconds for ``num_windows`` random windows from the cache, after 200 warm-up windows
    and one read of the whole case (a warm page cache)."""
    ds = SliceWindowDataset(
        cache, [0], num_slices=PAPER_SLICES, seed=seed, length=10**9, label_dtype=label_dtype
    )
    for i in range(200):  # warm: open the memmap and fault in pages
        ds[i]
    for s in range(0, num_slices, PAPER_SLICES):  # read the whole case once: warm page cache
        np.asarray(ds._open("case_00000")[0][s])
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(num_windows):
        ds[i]
    return time.perf_counter() - t0, time.process_time() - c0


def _nifti_rate(nii: Path, num_slices: int, num_windows: int, seed: int) -> tuple[float, float]:
    """(wall, CPU) seconds for ``num_windows`` random windows read straight from a ``.nii.gz``."""
    rng = np.random.default_rng(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(num_windows):
        start = int(rng.integers(num_slices - PAPER_SLICES + 1))
        img = nib.load(str(nii))
        window = normalize(np.asarray(img.dataobj[start : start + PAPER_SLICES], dtype=np.float32))
        torch.from_numpy(window)
    return time.perf_counter() - t0, time.process_time() - c0


def _data_row(
    tmp: Path,
    shape: tuple[int, int, int],
    seed: int,
    source: str,
    num_windows: int,
    num_nifti_windows: int | None,
) -> dict[str, Any]:
    """Write one case, prepare its cache and time windows from both; the ``"data"`` row (no provenance)."""
    num_slices, size = shape[0], shape[1]
    image, label, src = _make_case(shape, seed, source)
    t0 = time.perf_counter()
    save_case(tmp / "data", "case_00000", image, label, (2.5, 0.78, 0.78))
    write_s = time.perf_counter() - t0
    del image, label
    t0 = time.perf_counter()
    prepare_cache(tmp / "data", tmp / "cache", progress=False)
    prepare_s = time.perf_counter() - t0
    cache_s, cache_cpu = _cache_rate(tmp / "cache", num_slices, num_windows, seed, "int64")
    cache8_s, cache8_cpu = _cache_rate(tmp / "cache", num_slices, num_windows, seed, "uint8")
    row = {
        "benchmark": "data",
        "case": f"{src} {num_slices}x{size}x{size}",
        "window": f"{PAPER_SLICES}x{size}x{size}",
        "threads": 1,
        "write_nifti_s": _sig(write_s),
        "prepare_s": _sig(prepare_s),
        "cache_windows_per_s": _sig(num_windows / cache_s),
    }
    if num_nifti_windows:
        nifti_s, nifti_cpu = _nifti_rate(
            tmp / "data" / "case_00000" / IMAGING_FILE, num_slices, num_nifti_windows, seed
        )
        row.update(
            nifti_windows_per_s=_sig(num_nifti_windows / nifti_s),
            cache_vs_nifti=_sig((num_windows / cache_s) / (num_nifti_windows / nifti_s)),
        )
    # per CPU-second of this process: what one dedicated core does on a shared machine
    row["cache_windows_per_cpu_s"] = _sig(num_windows / max(cache_cpu, 1e-9))
    if num_nifti_windows:
        row["nifti_windows_per_cpu_s"] = _sig(num_nifti_windows / max(nifti_cpu, 1e-9))
    row.update(
        cache_windows_per_s_uint8=_sig(num_windows / cache8_s),
        cache_windows_per_cpu_s_uint8=_sig(num_windows / max(cache8_cpu, 1e-9)),
    )
    return row


def _loader_rate(
    cache: Path, workers: int, batch_size: int, batches: int, pin: bool, label_dtype: str, seed: int
) -> float:
    """Seconds for ``batches`` batches of a training-style DataLoader (3 warm-up batches excluded)."""
    warm = 3
    ds = SliceWindowDataset(
        cache,
        [0],
        num_slices=PAPER_SLICES,
        seed=seed,
        length=(batches + warm) * batch_size,
        label_dtype=label_dtype,
    )
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        drop_last=True,
    )
    it = iter(loader)
    try:
        for _ in range(warm):
            next(it)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        return time.perf_counter() - t0
    finally:
        del it, loader
