"""Benchmarks: one function per benchmark, each returning a flat dict; :func:`format_table` prints them.

``kitsmsan bench data`` (:func:`bench_data`) measures why the training cache exists: random 4-slice
512 × 512 windows per second read from the memory-mapped cache
(:class:`kitsmsan.data.dataset.SliceWindowDataset`) versus straight from the ``.nii.gz`` (nibabel load
and slice, which decompresses the file up to the window every time).

Register new benchmarks in :data:`BENCHMARKS` (name -> function returning a dict).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _synthetic_case(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A crude abdomen-like volume (body ellipse, two kidneys with a tumour), for when
    :mod:`kitsmsan.data.phantom` is not available."""
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


def _make_case(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from kitsmsan.data import phantom  # written by another part; optional here
    except ImportError:
        phantom = None
    if phantom is not None and hasattr(phantom, "make_phantom"):
        try:
            out = phantom.make_phantom(seed, size=shape[1], num_slices=shape[0])
            image, label = out[0], out[1]
            if tuple(image.shape) == shape:
                return np.asarray(image, np.float32), np.asarray(label, np.uint8), "phantom"
        except TypeError:
            pass
    image, label = _synthetic_case(shape, seed)
    return image, label, "synthetic"


def bench_data(
    *,
    size: int = 512,
    num_slices: int = 300,
    num_windows: int = 2000,
    num_nifti_windows: int = 5,
    seed: int = 0,
    work_dir: str | Path | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Random 4-slice windows/s from the cache vs straight from the ``.nii.gz`` (issue #2 target:
    >= 100x and >= 1000 windows/s on one core, warm cache).

    Args:
        size: in-plane size of the test case, default 512.
        num_slices: slices of the test case, default 300.
        num_windows: windows timed from the cache, default 2000 (after one warm-up pass).
        num_nifti_windows: windows timed from the ``.nii.gz``, default 5 (each is slow).
        seed: seed of the case and the sampler, default 0.
        work_dir: scratch folder; default a temporary folder, removed afterwards.
        verbose: print progress and the result table (default True).

    Returns:
        ``{"benchmark": "data", "case": ..., "cache_windows_per_s", "nifti_windows_per_s",
        "speedup", "prepare_s", "threads": 1, "cache_windows_per_cpu_s", ...}`` (rates in wall
        time, and per CPU-second of the process, which a busy shared machine does not distort).
    """
    import nibabel as nib
    import torch

    from kitsmsan.data.dataset import SliceWindowDataset
    from kitsmsan.data.kits19 import IMAGING_FILE, save_case
    from kitsmsan.data.preprocess import normalize, prepare_cache

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="kitsmsan-bench-")) if work_dir is None else Path(work_dir)
    try:
        shape = (num_slices, size, size)
        image, label, source = _make_case(shape, seed)
        t0 = time.perf_counter()
        save_case(tmp / "data", "case_00000", image, label, (2.5, 0.78, 0.78))
        write_s = time.perf_counter() - t0
        del image, label
        t0 = time.perf_counter()
        prepare_cache(tmp / "data", tmp / "cache", progress=False)
        prepare_s = time.perf_counter() - t0

        ds = SliceWindowDataset(tmp / "cache", [0], num_slices=4, seed=seed, length=10**9)
        for i in range(200):  # warm: open the memmap and fault in pages
            ds[i]
        for s in range(0, num_slices, 4):  # read the whole file once so the page cache is warm
            ds._open("case_00000")[0][s]
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(num_windows):
            ds[i]
        cache_s, cache_cpu = time.perf_counter() - t0, time.process_time() - c0

        nii = tmp / "data" / "case_00000" / IMAGING_FILE
        rng = np.random.default_rng(seed)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(num_nifti_windows):
            start = int(rng.integers(num_slices - 4 + 1))
            img = nib.load(str(nii))
            window = normalize(np.asarray(img.dataobj[start : start + 4], dtype=np.float32))
            torch.from_numpy(window)
        nifti_s, nifti_cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        torch.set_num_threads(threads)
        if work_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "benchmark": "data",
        "case": f"{source} {num_slices}x{size}x{size}",
        "threads": 1,
        "write_nifti_s": round(write_s, 3),
        "prepare_s": round(prepare_s, 3),
        "cache_windows_per_s": round(num_windows / cache_s, 1),
        "nifti_windows_per_s": round(num_nifti_windows / nifti_s, 2),
        "speedup": round((num_windows / cache_s) / (num_nifti_windows / nifti_s), 1),
        # per CPU-second of this process: what one dedicated core would do on a shared machine
        "cache_windows_per_cpu_s": round(num_windows / max(cache_cpu, 1e-9), 1),
        "nifti_windows_per_cpu_s": round(num_nifti_windows / max(nifti_cpu, 1e-9), 2),
    }
    if verbose:
        print(format_table([result]))
    return result


def _not_implemented(name: str) -> Callable[..., dict]:
    def run(**_: Any) -> dict:
        from kitsmsan.errors import ConfigError

        raise ConfigError(f"bench {name}: not implemented yet")

    return run


#: name -> benchmark function (returns a flat dict); others add theirs here
BENCHMARKS: dict[str, Callable[..., dict]] = {
    "data": bench_data,
    "step": _not_implemented("step"),
    "inference": _not_implemented("inference"),
    "smoke": _not_implemented("smoke"),
}


def format_table(results: list[dict[str, Any]]) -> str:
    """Plain-text table of benchmark results: one block per result, ``key  value`` rows."""
    lines = []
    for res in results:
        title = f"== bench {res.get('benchmark', '?')} =="
        lines.append(title)
        width = max((len(k) for k in res if k != "benchmark"), default=0)
        for key, val in res.items():
            if key != "benchmark":
                lines.append(f"{key:<{width}}  {val}")
    return "\n".join(lines)
