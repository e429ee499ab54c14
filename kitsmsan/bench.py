"""Benchmarks of the pipeline's speed (the data cache, training, inference, the schedule).

One function per benchmark, each returning a list of flat result rows (dicts); every row names the
benchmark, the device, the PyTorch version and the commit (:func:`provenance`). ``kitsmsan bench``
prints them as a table (:func:`format_table`) and writes a JSON report (:func:`make_report`) that the
book's Performance page renders.

* :func:`bench_data` — random 4-slice windows per second from the memory-mapped training cache
  (:class:`kitsmsan.data.dataset.SliceWindowDataset`) versus straight from the ``.nii.gz``, and the
  ``DataLoader`` at batch 2 × 1 × 4 × H × W with 0 / 1 / 2 worker processes.
* :func:`bench_step` — one training iteration of each of the paper's five networks (MSAN paper,
  §3.1: batch 2 of 4 × 512 × 512 windows, Dice loss, deep supervision for the ``_ds`` variants, Adam)
  in fp32 eager, under autocast (bf16 where supported, else fp16 with a grad scaler), plus
  ``channels_last_3d``, plus :func:`torch.compile`; iterations/s, peak memory, projected hours for
  400,000 iterations and for the five-model schedule. On a CPU the same code runs at a reduced size.
* :func:`bench_inference` — seconds to label one 512 × 512 × 300 case with one network and with the
  five-network vote (MSAN paper, §3.1).
* :func:`bench_smoke` — wall time of ``kitsmsan reproduce --preset smoke`` (a subprocess).

Timing rules: warm-up iterations are excluded; on CUDA the clock is read after
``torch.cuda.synchronize()``; a ratio is only ever formed from two numbers measured in the same
call. Nothing here asserts a speed: the speed targets are reported as rows of
:func:`target_rows` ("met: yes/no"), never enforced.

Register benchmarks in :data:`BENCHMARKS` (name -> function returning a list of rows).
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from kitsmsan.errors import ConfigError

# ------------------------------------------------------------------------------------ constants
#: the paper's training configuration (MSAN paper, §3.1)
PAPER_BATCH = 2
PAPER_SLICES = 4
PAPER_SIZE = 512
PAPER_ITERS = 400_000
#: slices of the inference test case (a typical KiTS19 volume)
PAPER_CASE_SLICES = 300

#: the step benchmark's modes, each adding one optimisation to the previous
STEP_MODES = ("fp32", "cl", "amp", "amp+cl", "amp+cl+compile")
MODE_LABELS = {
    "fp32": "fp32 eager",
    "cl": "fp32 + channels_last_3d",
    "amp": "autocast",
    "amp+cl": "autocast + channels_last_3d",
    "amp+cl+compile": "autocast + channels_last_3d + torch.compile",
}

#: per-device defaults of :func:`bench_step` (CPU: reduced so that all five networks take ~1 min)
STEP_DEFAULTS = {
    "cuda": dict(size=PAPER_SIZE, base_channels=None, iters=20, warmup=5),
    "cpu": dict(size=128, base_channels=8, iters=3, warmup=1),
}
#: per-device defaults of :func:`bench_inference`
INFERENCE_DEFAULTS = {
    "cuda": dict(size=PAPER_SIZE, num_slices=PAPER_CASE_SLICES, base_channels=None),
    "cpu": dict(size=128, num_slices=32, base_channels=8),
}
#: the target for ``reproduce --preset smoke``, 10 minutes on 2 CPU cores
SMOKE_TARGET_S = 600.0
#: the target for the five-network schedule, 12 hours on one H100-class GPU
SCHEDULE_TARGET_H = 12.0

#: keys every row carries (:func:`provenance`); :func:`format_table` prints them once, as a header
PROVENANCE_KEYS = ("device", "torch", "commit")

#: The speed targets (two for the data cache, the rest for training and inference), in the order the book
#: lists them. ``higher``: the measured value must be at least ``required`` (else at most).
#: ``needs``: where it can be measured; a target with no row yet is shown as pending, never guessed.
TARGETS = (
    dict(id="cache_vs_nifti", target="cache windows / .nii.gz windows (x)", required=100, higher=True,
         needs="any machine", issue=6),
    dict(id="cache_per_cpu_s", target="cache windows per CPU-second (one core)", required=1000, higher=True,
         needs="any machine", issue=2),
    dict(id="cache_per_cpu_s_uint8", target="cache windows per CPU-second, uint8 label", required=1000,
         higher=True, needs="any machine", issue=2),
    dict(id="smoke_s", target="reproduce --preset smoke (s)", required=SMOKE_TARGET_S, higher=False,
         needs="2 CPU cores", issue=6),
    dict(id="gpu_fast_path", target="fast path / fp32 eager, slowest-gaining network (x)", required=2.5,
         higher=True, needs="a GPU", issue=6),
    dict(id="gpu_schedule_h", target="five networks x 400,000 iterations (h)", required=SCHEDULE_TARGET_H,
         higher=False, needs="a GPU", issue=6),
    dict(id="gpu_loader", target="DataLoader windows / windows the fastest step consumes (x)", required=5,
         higher=True, needs="a GPU", issue=6),
)


# ------------------------------------------------------------------------------------ helpers
def commit() -> str:
    """The commit measured: ``$KITSMSAN_COMMIT`` if set (a copy of the tree without ``.git``, as on
    the GPU machines of ``scripts/gpu_bench.sh``), else :func:`kitsmsan.utils.provenance.git_commit`."""
    from kitsmsan.utils.provenance import git_commit

    return os.environ.get("KITSMSAN_COMMIT", "").strip() or git_commit()


def provenance(device: str | None = None) -> dict[str, str]:
    """``{"device", "torch", "commit"}`` of a measurement (:mod:`kitsmsan.utils.provenance`).

    Args:
        device: the torch device measured on (default None: CUDA if available, else the CPU).
    """
    import torch

    from kitsmsan.utils.provenance import device_name

    return {"device": device_name(device), "torch": torch.__version__, "commit": commit()}


def resolve_device(device: str | None = None):
    """The ``torch.device`` to benchmark on.

    Args:
        device: None or ``"auto"`` (default: CUDA if available, else CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"``.

    Raises:
        ConfigError: not a device, or CUDA asked for but not available.
    """
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"--device {device!r}: not a torch device ({exc})") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: only cpu and cuda are benchmarked")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device!r}: CUDA is not available on this machine")
    return dev


def _sig(x: float | None, digits: int = 4) -> float | None:
    """Round to ``digits`` significant digits (None and non-finite values pass through)."""
    if x is None or not math.isfinite(x) or x == 0:
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name}={value!r}: expected an integer >= {low}")
    return int(value)


def _pick(what: str, value: Sequence[str] | str, known: Sequence[str]) -> list[str]:
    """``value`` (a list or a comma-separated string) as a non-empty list of names from ``known``."""
    names = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    if not names or any(n not in known for n in names):
        raise ConfigError(f"{what}={names!r}: expected names from {', '.join(known)}")
    return names


def _variants(variants: Sequence[str] | str | None) -> list[str]:
    from kitsmsan.models import list_models

    return list_models() if variants is None else _pick("variants", variants, list_models())


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


def _make_case(shape: tuple[int, int, int], seed: int, source: str = "phantom") -> tuple[np.ndarray, np.ndarray, str]:
    """``(image HU float32, label uint8, source)`` of ``shape`` (Z, Y, X).

    ``source="phantom"`` uses :func:`kitsmsan.data.phantom.make_phantom` (realistic content, so a
    realistic ``.nii.gz`` compression ratio; ~8 s for 60 × 512 × 512), falling back to the synthetic
    volume when the phantom cannot be made at this shape; ``"synthetic"`` is :func:`_synthetic_case`.
    """
    if source not in ("phantom", "synthetic"):
        raise ConfigError(f"source={source!r}: expected 'phantom' or 'synthetic'")
    if source == "phantom":
        try:
            from kitsmsan.data.phantom import make_phantom

            image, label = make_phantom(seed, size=shape[1], num_slices=shape[0])[:2]
            if tuple(image.shape) == tuple(shape):
                return np.asarray(image, np.float32), np.asarray(label, np.uint8), "phantom"
        except (ImportError, TypeError, ValueError):
            pass
    image, label = _synthetic_case(shape, seed)
    return image, label, "synthetic"


def _emit(rows: list[dict], row: dict, on_row: Callable[[dict], None] | None, verbose: bool) -> dict:
    rows.append(row)
    if on_row is not None:
        on_row(row)
    if verbose:
        print(format_table([row]), flush=True)
    return row


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
            :class:`kitsmsan.train.Trainer` uses (the label is widened on the device); ``"int64"`` is
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
    import torch

    from kitsmsan.data.dataset import SliceWindowDataset
    from kitsmsan.data.kits19 import IMAGING_FILE, save_case
    from kitsmsan.data.preprocess import normalize, prepare_cache

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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="kitsmsan-bench-")) if work_dir is None else Path(work_dir)
    try:
        shape = (num_slices, size, size)
        image, label, src = _make_case(shape, seed, source)
        t0 = time.perf_counter()
        save_case(tmp / "data", "case_00000", image, label, (2.5, 0.78, 0.78))
        write_s = time.perf_counter() - t0
        del image, label
        t0 = time.perf_counter()
        prepare_cache(tmp / "data", tmp / "cache", progress=False)
        prepare_s = time.perf_counter() - t0

        def cache_rate(label_dtype_: str) -> tuple[float, float]:
            ds = SliceWindowDataset(tmp / "cache", [0], num_slices=PAPER_SLICES, seed=seed, length=10**9,
                                    label_dtype=label_dtype_)
            for i in range(200):  # warm: open the memmap and fault in pages
                ds[i]
            for s in range(0, num_slices, PAPER_SLICES):  # read the whole case once: warm page cache
                np.asarray(ds._open("case_00000")[0][s])
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(num_windows):
                ds[i]
            return time.perf_counter() - t0, time.process_time() - c0

        cache_s, cache_cpu = cache_rate("int64")
        cache8_s, cache8_cpu = cache_rate("uint8")

        row = {"benchmark": "data", "case": f"{src} {num_slices}x{size}x{size}",
               "window": f"{PAPER_SLICES}x{size}x{size}", "threads": 1,
               "write_nifti_s": _sig(write_s), "prepare_s": _sig(prepare_s),
               "cache_windows_per_s": _sig(num_windows / cache_s)}
        if nifti:
            import nibabel as nib

            nii = tmp / "data" / "case_00000" / IMAGING_FILE
            rng = np.random.default_rng(seed)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(num_nifti_windows):
                start = int(rng.integers(num_slices - PAPER_SLICES + 1))
                img = nib.load(str(nii))
                window = normalize(np.asarray(img.dataobj[start: start + PAPER_SLICES], dtype=np.float32))
                torch.from_numpy(window)
            nifti_s, nifti_cpu = time.perf_counter() - t0, time.process_time() - c0
            row.update(nifti_windows_per_s=_sig(num_nifti_windows / nifti_s),
                       cache_vs_nifti=_sig((num_windows / cache_s) / (num_nifti_windows / nifti_s)))
        else:
            nifti_cpu = None
        # per CPU-second of this process: what one dedicated core does on a shared machine
        row["cache_windows_per_cpu_s"] = _sig(num_windows / max(cache_cpu, 1e-9))
        if nifti_cpu is not None:
            row["nifti_windows_per_cpu_s"] = _sig(num_nifti_windows / max(nifti_cpu, 1e-9))
        row.update(cache_windows_per_s_uint8=_sig(num_windows / cache8_s),
                   cache_windows_per_cpu_s_uint8=_sig(num_windows / max(cache8_cpu, 1e-9)),
                   load_avg=round(os.getloadavg()[0], 2), **prov)
        _emit(rows, row, on_row, verbose)

        for w in workers:
            res = _loader_rate(tmp / "cache", w, batch_size, loader_batches, dev.type == "cuda",
                               label_dtype, seed)
            _emit(rows, {
                "benchmark": "data_loader", "workers": w,
                "batch": f"{batch_size}x1x{PAPER_SLICES}x{size}x{size}", "label_dtype": label_dtype,
                "pin_memory": dev.type == "cuda", "batches": loader_batches,
                "windows_per_s": _sig(loader_batches * batch_size / res),
                "batches_per_s": _sig(loader_batches / res), "load_avg": round(os.getloadavg()[0], 2),
                **prov}, on_row, verbose)
    finally:
        torch.set_num_threads(threads)
        if work_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _loader_rate(cache: Path, workers: int, batch_size: int, batches: int, pin: bool,
                 label_dtype: str, seed: int) -> float:
    """Seconds for ``batches`` batches of a training-style DataLoader (3 warm-up batches excluded)."""
    import torch

    from kitsmsan.data.dataset import SliceWindowDataset

    warm = 3
    ds = SliceWindowDataset(cache, [0], num_slices=PAPER_SLICES, seed=seed,
                            length=(batches + warm) * batch_size, label_dtype=label_dtype)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin,
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None, drop_last=True)
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


# ------------------------------------------------------------------------------------ step
def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _step_modes(modes: Sequence[str] | str | None, dev_type: str, compile: bool) -> list[str]:
    if modes is None:  # CUDA: the mode ladder of the targets; CPU: also fp32 + channels-last, no compile
        modes = ["fp32", "amp", "amp+cl", "amp+cl+compile"] if dev_type == "cuda" else ["fp32", "cl", "amp", "amp+cl"]
        if dev_type == "cpu" and compile:
            modes.append("amp+cl+compile")
    else:
        modes = _pick("modes", modes, STEP_MODES)
    if "fp32" not in modes:
        modes.insert(0, "fp32")  # every ratio needs its baseline, measured in the same call
    return sorted(dict.fromkeys(modes), key=STEP_MODES.index)


def _time_step(variant: str, mode: str, dev, *, batch_size: int, num_slices: int, size: int,
               overrides: dict, iters: int, warmup: int, seed: int) -> dict[str, Any]:
    """Measure one (variant, mode): seconds per iteration, warm-up seconds, peak memory."""
    import contextlib

    import torch

    from kitsmsan.losses import DeepSupervisionLoss, DiceLoss
    from kitsmsan.models import build_model
    from kitsmsan.utils.amp import mixed_precision_dtype

    amp = mode.startswith("amp")
    channels_last = "cl" in mode.split("+")
    compiled = mode.endswith("compile")
    amp_dtype = mixed_precision_dtype(dev) if amp else None
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    cuda = dev.type == "cuda"

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        mem0 = torch.cuda.memory_allocated(dev)
    else:
        rss_reset = _reset_peak_rss()
        rss0 = _proc_status_kb("VmRSS")
    torch.manual_seed(seed)
    net = build_model(variant, **overrides).to(dev, memory_format=fmt)
    net.train()
    loss_fn = DeepSupervisionLoss(DiceLoss()) if net.config.deep_supervision else DiceLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True if cuda else None)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16)
    model = torch.compile(net) if compiled else net
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((batch_size, 1, num_slices, size, size), generator=gen).to(dev, memory_format=fmt)
    y = torch.randint(0, 3, (batch_size, num_slices, size, size), generator=gen).to(dev)
    autocast = (torch.autocast(dev.type, dtype=amp_dtype) if amp else contextlib.nullcontext())

    def step() -> torch.Tensor:
        with autocast:
            out = model(x)
        out = [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()
        loss = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.detach()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        loss = step()
    sync()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    finite = bool(torch.isfinite(loss).item())
    if cuda:
        peak_mb, how = (torch.cuda.max_memory_allocated(dev) - mem0) / 2**20, "cuda max_memory_allocated"
    else:
        hwm = _proc_status_kb("VmHWM")
        peak_mb = (hwm - rss0) / 1024 if (rss_reset and hwm is not None and rss0 is not None) else None
        how = "peak RSS - RSS before" if peak_mb is not None else "unavailable"
    params = sum(p.numel() for p in net.parameters())
    del model, net, opt, x, y
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return {"s_per_it": elapsed / iters, "cpu_s_per_it": cpu / iters, "warmup_s": warm_s,
            "peak_mem_mb": peak_mb, "mem_measure": how,
            "precision": str(amp_dtype).replace("torch.", "") if amp else "fp32",
            "channels_last": channels_last, "compile": compiled, "params": params, "loss_finite": finite}


def _child_main() -> None:
    """Entry point of an isolated step measurement: JSON arguments on stdin, JSON result on the
    last line of stdout (see :func:`_time_step_isolated`)."""
    import json

    import torch

    kw = json.loads(sys.stdin.read())
    torch.set_num_threads(kw.pop("threads"))
    dev = resolve_device(kw.pop("device"))
    res = _time_step(kw.pop("variant"), kw.pop("mode"), dev, **kw)
    print("\n" + json.dumps(res), flush=True)


def _run_child(payload: dict, code: str, timeout_s: float, env: dict[str, str] | None = None) -> dict:
    """Run ``python -c code`` with ``payload`` as JSON on stdin; its last stdout line is JSON.

    ``env`` adds environment variables for the child (default None: inherit unchanged).

    Raises:
        RuntimeError: the child crashed (a signal: e.g. a segfault inside a native kernel), failed,
            timed out or printed no result, with the reason.
    """
    import json
    import signal

    try:
        proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(payload), capture_output=True,
                              text=True, timeout=timeout_s, env={**os.environ, **env} if env else None)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"measurement stopped after {timeout_s:g} s") from None
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        raise RuntimeError(f"the process crashed ({name}) inside a native kernel")
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise RuntimeError(err[-1] if err else f"exit status {proc.returncode}, no result")
    try:
        return json.loads(lines[-1])
    except ValueError:
        raise RuntimeError(f"unreadable result {lines[-1][:100]!r}") from None


#: oneDNN's instruction-set cap used when its default (AMX) bf16 kernels crash the process
ONEDNN_FALLBACK_ISA = "AVX512_CORE_BF16"


def _time_step_isolated(variant: str, mode: str, dev, *, timeout_s: float = 1800.0, **kwargs) -> dict[str, Any]:
    """:func:`_time_step` in a fresh Python process, so that a crash in a native kernel becomes an
    error row instead of ending the benchmark, and each measurement starts from a clean heap.

    Seen here (torch 2.13.0+cpu, a Xeon with AMX): the oneDNN AMX kernel of the bf16 ``Conv3d``
    backward segfaults from 96 × 96 planes up. A crashed CPU measurement is therefore retried once
    with ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` (no AMX); the result then says so in ``onednn_isa``.
    """
    import torch

    payload = {"variant": variant, "mode": mode, "device": str(dev), "threads": torch.get_num_threads(), **kwargs}
    code = "from kitsmsan.bench import _child_main; _child_main()"
    try:
        return _run_child(payload, code, timeout_s)
    except RuntimeError as exc:
        if dev.type != "cpu" or "crashed" not in str(exc) or os.environ.get("ONEDNN_MAX_CPU_ISA"):
            raise
        first = str(exc)
    try:
        res = _run_child(payload, code, timeout_s, env={"ONEDNN_MAX_CPU_ISA": ONEDNN_FALLBACK_ISA})
    except RuntimeError as exc:
        raise RuntimeError(f"{first}; again with ONEDNN_MAX_CPU_ISA={ONEDNN_FALLBACK_ISA}: {exc}") from None
    crash = first.split("(", 1)[1].split(")", 1)[0] if "(" in first else "crash"
    res["onednn_isa"] = f"{ONEDNN_FALLBACK_ISA} (default: {crash})"
    return res


def bench_step(
    *,
    variants: Sequence[str] | str | None = None,
    modes: Sequence[str] | str | None = None,
    compile: bool = False,
    compile_variants: Sequence[str] | str | None = None,
    size: int | None = None,
    num_slices: int = PAPER_SLICES,
    batch_size: int = PAPER_BATCH,
    base_channels: int | None = None,
    iters: int | None = None,
    warmup: int | None = None,
    num_iters: int = PAPER_ITERS,
    device: str | None = None,
    threads: int | None = None,
    isolate: bool | None = None,
    seed: int = 0,
    budget: bool = True,
    verbose: bool = True,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict[str, Any]]:
    """Training-step speed of each network and mode, and the projected schedule (MSAN paper, §3.1).

    The step is what :mod:`kitsmsan.train` does per iteration: forward (autocast where the mode has
    it), outputs to float32, Dice loss (:class:`~kitsmsan.losses.DeepSupervisionLoss` over
    ``[logits, aux_1, aux_2]`` for the ``_ds`` variants), backward through a grad scaler (active
    for fp16 only), Adam (fused on CUDA). Input: random ``(batch_size, 1, num_slices, size, size)``
    images and labels (the content does not change the cost). On CUDA ``cudnn.benchmark`` is on, as
    in training, and TF32 follows PyTorch's defaults (reported in the row).

    Modes (:data:`STEP_MODES`): ``fp32`` (eager, float32), ``cl`` (fp32 + ``channels_last_3d``),
    ``amp`` (autocast: bf16 where supported, else fp16 with a grad scaler), ``amp+cl``
    (+ ``channels_last_3d``), ``amp+cl+compile`` (+ :func:`torch.compile`, whose compilation falls
    in the warm-up and is reported as ``warmup_s``). A mode that fails (out of memory, a compiler
    error, a crash of the isolated process) gives a row with ``error`` instead of timings; the others
    still run.

    Args:
        variants: networks to run, default all five (:func:`kitsmsan.models.list_models`); a list or
            a comma-separated string.
        modes: modes to run; default ``fp32, amp, amp+cl, amp+cl+compile`` on CUDA and
            ``fp32, cl, amp, amp+cl`` on CPU (``compile`` adds the compile mode). ``fp32`` is always
            added: it is the baseline of ``speedup_vs_fp32``.
        compile: on CPU, include the compile mode by default, default False.
        compile_variants: restrict the compile mode to these networks, measured in this order after
            every eager row (default None: all of them, in ``variants`` order).
        size: in-plane size H = W; default 512 on CUDA (the paper's), 128 on CPU.
        num_slices: slices per window, default 4 (the paper's).
        batch_size: windows per step, default 2 (the paper's).
        base_channels: width of the first level; default the model's (32) on CUDA, 8 on CPU.
        iters: timed iterations per mode; default 20 on CUDA, 3 on CPU.
        warmup: untimed iterations first; default 5 on CUDA, 1 on CPU.
        num_iters: iterations of one training run for the projection, default 400,000 (§3.1).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; default CUDA if available.
        threads: torch CPU threads during the benchmark; default None (leave as is).
        isolate: measure each (network, mode) in a fresh Python process; default None = on CPU
            (torch 2.13's oneDNN bf16 Conv3d backward crashes the process on this CPU from 96 × 96
            planes up: isolated, that becomes an ``error`` row), off on CUDA.
        seed: seed of the weights and the random batch, default 0.
        budget: end with the :func:`schedule_budget` row (counted, about 10 s on a CPU), default True.
        verbose: print each row as it is measured, default True.
        on_row: called with each row as soon as it is measured.

    Returns:
        One ``"step"`` row per (variant, mode): ``it_per_s``, ``s_per_it``, ``cpu_s_per_it`` (CPU time
        of this process per iteration, all threads; on a shared machine it shows how much of the wall
        time was this benchmark's), ``speedup_vs_fp32`` (this
        mode's it/s over the same variant's fp32 it/s, both measured here; on CPU also
        ``cpu_time_speedup_vs_fp32``, the same ratio in CPU seconds), ``peak_mem_mb`` (CUDA:
        ``max_memory_allocated`` above what was allocated before; CPU: peak RSS minus RSS before),
        ``hours_per_run`` (``num_iters`` at this speed), ``tflop_per_s`` (the step's counted
        convolution FLOPs, forward + backward, times ``it_per_s``; see :func:`schedule_budget`);
        then one ``"schedule"`` row (:func:`schedule_row`) and, with ``budget``, one ``"budget"`` row.

    Raises:
        ConfigError: unknown variant or mode, bad sizes, unavailable device.
    """
    import torch

    from kitsmsan.models import build_model, count_train_flops

    dev = resolve_device(device)
    defaults = STEP_DEFAULTS[dev.type]
    size = _check_int("size", defaults["size"] if size is None else size, 16)
    if size % 16:
        raise ConfigError(f"size={size}: must be a multiple of 16 (four 2x poolings)")
    if base_channels is None:
        base_channels = defaults["base_channels"]
    else:
        base_channels = _check_int("base_channels", base_channels, 1)
    iters = _check_int("iters", defaults["iters"] if iters is None else iters, 1)
    warmup = _check_int("warmup", defaults["warmup"] if warmup is None else warmup, 0)
    num_slices = _check_int("num_slices", num_slices, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    num_iters = _check_int("num_iters", num_iters, 1)
    names = _variants(variants)
    mode_list = _step_modes(modes, dev.type, compile)
    isolate = dev.type == "cpu" if isolate is None else bool(isolate)
    compile_names = names if compile_variants is None else _variants(compile_variants)
    overrides = {} if base_channels is None else {"base_channels": base_channels}
    prov = provenance(str(dev))
    rows: list[dict] = []
    old_threads = torch.get_num_threads()
    old_bench = torch.backends.cudnn.benchmark
    if threads:
        torch.set_num_threads(_check_int("threads", threads, 1))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    input_str = f"{batch_size}x1x{num_slices}x{size}x{size}"
    # eager modes for every network first, compile modes last: a time limit that stops the run
    # during compilation still leaves every eager row
    plan = [(v, m) for v in names for m in mode_list if not m.endswith("compile")]
    plan += [(v, m) for v in compile_names if v in names for m in mode_list if m.endswith("compile")]
    fp32_rate: dict[str, float] = {}
    fp32_cpu: dict[str, float] = {}
    train_flops: dict[str, int] = {}  # forward + backward of one step, counted once per network
    try:
        for variant, mode in plan:
            if variant not in train_flops:
                with torch.device("meta"):
                    train_flops[variant] = count_train_flops(build_model(variant, **overrides),
                                                             (batch_size, 1, num_slices, size, size))
            row: dict[str, Any] = {
                "benchmark": "step", "variant": variant, "mode": mode, "input": input_str,
                "base_channels": base_channels or build_model_default_base(variant),
                "deep_supervision": variant.endswith("_ds"), "warmup": warmup, "iters": iters,
                "isolated": isolate}
            try:
                timer = _time_step_isolated if isolate else _time_step
                res = timer(variant, mode, dev, batch_size=batch_size, num_slices=num_slices,
                            size=size, overrides=overrides, iters=iters, warmup=warmup, seed=seed)
            except Exception as exc:  # noqa: BLE001 - OOM, compiler failure: record it, run the rest
                msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                row.update(error=f"{type(exc).__name__}: {msg}", **prov)
                _emit(rows, row, on_row, verbose)
                gc.collect()
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            rate = 1.0 / res["s_per_it"]
            if mode == "fp32":
                fp32_rate[variant] = rate
                fp32_cpu[variant] = res["cpu_s_per_it"]
            row.update(
                precision=res["precision"], channels_last=res["channels_last"], compile=res["compile"],
                params=res["params"], warmup_s=_sig(res["warmup_s"]), it_per_s=_sig(rate),
                s_per_it=_sig(res["s_per_it"]), cpu_s_per_it=_sig(res["cpu_s_per_it"]),
                speedup_vs_fp32=_sig(rate / fp32_rate[variant]) if variant in fp32_rate else None,
                peak_mem_mb=_sig(res["peak_mem_mb"]), mem_measure=res["mem_measure"],
                hours_per_run=_sig(num_iters / rate / 3600), run_iters=num_iters,
                tflop_per_s=_sig(train_flops[variant] * rate / 1e12), loss_finite=res["loss_finite"],
                threads=torch.get_num_threads(),
            )
            if dev.type == "cpu" and variant in fp32_cpu and res["cpu_s_per_it"] > 0:
                # CPU seconds, not wall: on a shared machine the ratio that other load distorts least
                row["cpu_time_speedup_vs_fp32"] = _sig(fp32_cpu[variant] / res["cpu_s_per_it"])
            if res.get("onednn_isa"):
                row["onednn_isa"] = res["onednn_isa"]
            if dev.type == "cuda":
                row.update(cudnn_benchmark=True, tf32_conv=torch.backends.cudnn.allow_tf32,
                           tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
            row.update(prov)
            _emit(rows, row, on_row, verbose)
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.cudnn.benchmark = old_bench
    sched = schedule_row(rows, num_iters=num_iters)
    if sched is not None:
        _emit(rows, sched, on_row, verbose)
    if budget:
        _emit(rows, schedule_budget(num_iters=num_iters), on_row, verbose)
    return rows


def build_model_default_base(variant: str) -> int:
    """The ``base_channels`` a network gets without overrides (the package's paper-scale width)."""
    from kitsmsan.models import model_config

    return model_config(variant).base_channels


def schedule_row(rows: Iterable[dict], *, num_iters: int = PAPER_ITERS) -> dict[str, Any] | None:
    """The five-model schedule projected from ``"step"`` rows of one device and input size.

    For each network the fastest measured mode is taken; ``five_model_hours_best`` is the sum over
    the networks of ``num_iters`` at that speed, ``five_model_hours_fp32`` the same at fp32 eager,
    ``speedup`` their ratio. Both sums are None unless every one of the paper's five networks has a
    measurement (a partial schedule is not a schedule).

    Args:
        rows: results of :func:`bench_step` (other benchmarks' rows are ignored).
        num_iters: iterations per network, default 400,000 (MSAN paper, §3.1).

    Returns:
        A ``"schedule"`` row, or None when there is no successful step row.
    """
    from kitsmsan.models import list_models

    steps = [r for r in rows if r.get("benchmark") == "step" and r.get("it_per_s")]
    if not steps:
        return None
    best: dict[str, dict] = {}
    fp32: dict[str, dict] = {}
    for r in steps:
        if r["variant"] not in best or r["it_per_s"] > best[r["variant"]]["it_per_s"]:
            best[r["variant"]] = r
        if r["mode"] == "fp32":
            fp32[r["variant"]] = r
    everyone = list_models()
    complete = all(v in best for v in everyone)
    hours_best = sum(num_iters / best[v]["it_per_s"] / 3600 for v in everyone) if complete else None
    hours_fp32 = (sum(num_iters / fp32[v]["it_per_s"] / 3600 for v in everyone)
                  if all(v in fp32 for v in everyone) else None)
    first = steps[0]
    paper_size = first["input"] == f"{PAPER_BATCH}x1x{PAPER_SLICES}x{PAPER_SIZE}x{PAPER_SIZE}"
    return {
        "benchmark": "schedule", "input": first["input"], "base_channels": first["base_channels"],
        "at_paper_size": paper_size, "networks": len(best), "iters_per_network": num_iters,
        "best_modes": ", ".join(f"{v}: {best[v]['mode']}" for v in everyone if v in best),
        "five_model_hours_fp32": _sig(hours_fp32), "five_model_hours_best": _sig(hours_best),
        "speedup": _sig(hours_fp32 / hours_best) if hours_best and hours_fp32 else None,
        **{k: first[k] for k in PROVENANCE_KEYS},
    }


def schedule_budget(*, num_iters: int = PAPER_ITERS, hours: float = SCHEDULE_TARGET_H,
                    variants: Sequence[str] | str | None = None) -> dict[str, Any]:
    """What the schedule target asks of a device, by counting (not measuring) the arithmetic.

    For each network, the FLOPs of one training iteration at the paper's batch
    (2 × 1 × 4 × 512 × 512, forward + backward, counted on the ``meta`` device by
    :func:`kitsmsan.models.count_train_flops`); their sum over the five networks times ``num_iters``
    is the schedule's arithmetic, and dividing it by ``hours`` gives the convolution throughput a
    device must *sustain*, on average, for the whole schedule to fit. Element-wise work
    (normalisation, activations, the optimiser) is not counted, so the real requirement is higher.
    The same count turns a measured ``it_per_s`` into the ``tflop_per_s`` of the step rows.

    Args:
        num_iters: iterations per network, default 400,000 (MSAN paper, §3.1).
        hours: the time budget, default 12.
        variants: networks, default all five.

    Returns:
        A ``"budget"`` row: ``input``, ``tflop_per_iter_<network>`` (one key per network),
        ``schedule_eflop``, ``hours``, ``required_tflop_per_s``; its ``device`` says it was counted,
        not measured (the count is the same on every machine).
    """
    import torch

    from kitsmsan.models import build_model, count_train_flops

    num_iters = _check_int("num_iters", num_iters, 1)
    if not (isinstance(hours, (int, float)) and math.isfinite(hours) and hours > 0):
        raise ConfigError(f"hours={hours!r}: must be a positive number")
    shape = (PAPER_BATCH, 1, PAPER_SLICES, PAPER_SIZE, PAPER_SIZE)
    per_iter = {}
    for name in _variants(variants):
        with torch.device("meta"):
            per_iter[name] = count_train_flops(build_model(name), shape)
    total = sum(per_iter.values()) * num_iters
    return {"benchmark": "budget", "input": "x".join(map(str, shape)), "iters_per_network": num_iters,
            **{f"tflop_per_iter_{k}": round(v / 1e12, 3) for k, v in per_iter.items()},
            "schedule_eflop": _sig(total / 1e18), "hours": hours,
            "required_tflop_per_s": _sig(total / (hours * 3600) / 1e12),
            **provenance("cpu"), "device": "none: counted on the meta device, not measured"}


# ------------------------------------------------------------------------------------ inference
def bench_inference(
    *,
    size: int | None = None,
    num_slices: int | None = None,
    base_channels: int | None = None,
    single: str = "msan_v2_ds",
    ensemble: Sequence[str] | str | None = None,
    stride: int = 2,
    batch_size: int = 4,
    amp: str | None = None,
    device: str | None = None,
    threads: int | None = None,
    seed: int = 0,
    verbose: bool = True,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict[str, Any]]:
    """Seconds to label one whole case: one network, and the five-network vote (MSAN paper, §3.1).

    Uses :func:`kitsmsan.inference.predict_case` (sliding 4-slice windows, probability averaging of
    overlapping windows) and :func:`kitsmsan.inference.predict_ensemble_vote` (each network labels
    the case, then a per-voxel vote) on a synthetic ``num_slices × size × size`` HU volume, with
    untrained networks (the cost does not depend on the weights). Each network runs once on a short
    volume of the same plane size first (warm-up: cuDNN autotuning, allocator); then the case is timed.
    The post-processing (:func:`kitsmsan.postprocess.keep_largest_components`) of the single network's
    labels is timed separately (``postprocess_s``).

    Args:
        size: in-plane size; default 512 on CUDA, 128 on CPU.
        num_slices: slices of the case; default 300 on CUDA, 32 on CPU.
        base_channels: network width; default the model's (32) on CUDA, 8 on CPU.
        single: the network of the one-model row, default ``"msan_v2_ds"``.
        ensemble: the voting networks, default all five; a list or comma-separated string.
        stride: z step between windows, default 2 (as :func:`~kitsmsan.inference.predict_case`).
        batch_size: windows per forward pass, default 4.
        amp: ``predict_case``'s ``amp`` (default None: bf16/fp16 autocast on CUDA, off on CPU).
        device: default CUDA if available.
        threads: torch CPU threads during the benchmark; default None (leave as is).
        seed: seed of the weights and the volume, default 0.
        verbose: print each row as it is measured, default True.
        on_row: called with each row as soon as it is measured.

    Returns:
        Two ``"inference"`` rows (one network; the vote) with ``seconds_per_case`` and
        ``windows_per_s``; the vote's row also has ``vs_single`` (its time over the single
        network's, both measured here).

    Raises:
        ConfigError: bad sizes, names or device.
    """
    import torch

    from kitsmsan.inference import predict_case, predict_ensemble_vote, resolve_amp, window_starts
    from kitsmsan.models import build_model
    from kitsmsan.postprocess import keep_largest_components

    dev = resolve_device(device)
    defaults = INFERENCE_DEFAULTS[dev.type]
    size = _check_int("size", defaults["size"] if size is None else size, 16)
    num_slices = _check_int("num_slices", defaults["num_slices"] if num_slices is None else num_slices, 1)
    if base_channels is None:
        base_channels = defaults["base_channels"]
    else:
        base_channels = _check_int("base_channels", base_channels, 1)
    stride = _check_int("stride", stride, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    (single,) = _variants([single])
    names = _variants(ensemble)
    overrides = {} if base_channels is None else {"base_channels": base_channels}
    prov = provenance(str(dev))
    amp_dtype = resolve_amp(amp, dev)
    old_threads = torch.get_num_threads()
    old_bench = torch.backends.cudnn.benchmark
    if threads:
        torch.set_num_threads(_check_int("threads", threads, 1))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows: list[dict] = []
    try:
        image, _, _ = _make_case((num_slices, size, size), seed, "synthetic")
        warm = image[: min(num_slices, PAPER_SLICES + stride)]
        torch.manual_seed(seed)
        models = {v: build_model(v, **overrides).to(dev).eval() for v in dict.fromkeys([single, *names])}
        kwargs = dict(stride=stride, batch_size=batch_size, device=dev, amp=amp)
        for m in models.values():
            warm_pred = predict_case(m, warm, **kwargs)
        keep_largest_components(warm_pred)  # first call imports scipy.ndimage
        windows = len(window_starts(max(num_slices, PAPER_SLICES), PAPER_SLICES, stride))
        common = {"case": f"{num_slices}x{size}x{size}", "base_channels": base_channels or
                  build_model_default_base(single), "stride": stride, "batch_size": batch_size,
                  "windows": windows, "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off"}

        t0 = time.perf_counter()
        pred = predict_case(models[single], image, **kwargs)
        one_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        keep_largest_components(pred)
        post_s = time.perf_counter() - t0
        _emit(rows, {"benchmark": "inference", "models": 1, "variants": single, **common,
                     "seconds_per_case": _sig(one_s), "windows_per_s": _sig(windows / one_s),
                     "postprocess_s": _sig(post_s), "threads": torch.get_num_threads(), **prov},
              on_row, verbose)
        t0 = time.perf_counter()
        predict_ensemble_vote([models[v] for v in names], image, **kwargs)
        vote_s = time.perf_counter() - t0
        _emit(rows, {"benchmark": "inference", "models": len(names), "variants": ",".join(names), **common,
                     "seconds_per_case": _sig(vote_s), "windows_per_s": _sig(windows * len(names) / vote_s),
                     "vs_single": _sig(vote_s / one_s), "threads": torch.get_num_threads(), **prov},
              on_row, verbose)
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.cudnn.benchmark = old_bench
    return rows


# ------------------------------------------------------------------------------------ smoke
def bench_smoke(
    *,
    run: bool = True,
    out: str | Path | None = None,
    timeout_s: float = 3600.0,
    extra_args: Sequence[str] = (),
    command: Sequence[str] | None = None,
    verbose: bool = True,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict[str, Any]]:
    """Wall time of ``kitsmsan reproduce --preset smoke`` from scratch (target: ≤ 10 min on
    2 CPU cores), run as a subprocess so that its imports, data generation and five trainings count.

    Args:
        run: False gives a ``skipped`` row without running anything (it takes minutes). Default True.
        out: output folder of the reproduction; must be new or empty (an existing run would be
            resumed, timing nothing). Default None: a temporary folder, removed afterwards.
        timeout_s: stop the run after this many seconds, default 3600.
        extra_args: more arguments for ``reproduce`` (e.g. ``["--variants", "unet3d"]``).
        command: the whole command line instead (tests); default
            ``[python, -m, kitsmsan, reproduce, --preset, smoke, --out, OUT, --no-progress, *extra_args]``.
        verbose: print the row, default True.
        on_row: called with the row.

    Returns:
        One ``"smoke"`` row: ``wall_s``, ``returncode``, ``ok``, ``target_s`` (600) and
        ``within_target``; ``error`` (the last line of stderr) on failure; or ``skipped: True``.

    Raises:
        ConfigError: ``out`` exists and is not empty.
    """
    import torch

    prov = provenance("cpu")
    rows: list[dict] = []
    if not run:
        return [_emit(rows, {"benchmark": "smoke", "skipped": True, "wall_s": None,
                             "target_s": SMOKE_TARGET_S, **prov}, on_row, verbose)]
    if out is not None and Path(out).exists() and any(Path(out).iterdir()):
        raise ConfigError(f"--smoke-out {out}: not empty; reproduce would resume it and time nothing")
    tmp = Path(tempfile.mkdtemp(prefix="kitsmsan-smoke-")) if out is None else Path(out)
    cmd = list(command) if command is not None else [
        sys.executable, "-m", "kitsmsan", "reproduce", "--preset", "smoke", "--out", str(tmp / "reproduce"),
        "--no-progress", *extra_args]
    try:
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            rc, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc = None
            err = f"stopped after {timeout_s:g} s\n"
            if exc.stderr:
                err = (exc.stderr if isinstance(exc.stderr, str) else exc.stderr.decode(errors="replace")) + err
        wall = time.perf_counter() - t0
    finally:
        if out is None:
            shutil.rmtree(tmp, ignore_errors=True)
    row = {"benchmark": "smoke", "command": " ".join(["kitsmsan", *cmd[3:]]) if command is None else " ".join(cmd),
           "wall_s": _sig(wall), "returncode": rc, "ok": rc == 0, "target_s": SMOKE_TARGET_S,
           "within_target": rc == 0 and wall <= SMOKE_TARGET_S, "cpu_cores": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "load_avg": round(os.getloadavg()[0], 2)}
    if rc != 0:
        lines = [ln for ln in (err or "").strip().splitlines() if ln.strip()]
        row["error"] = lines[-1][:300] if lines else f"exit status {rc}"
    row.update(prov)
    return [_emit(rows, row, on_row, verbose)]


# ------------------------------------------------------------------------------------ report
#: name -> benchmark function (keyword arguments only, returns a list of rows)
BENCHMARKS: dict[str, Callable[..., list[dict]]] = {
    "data": bench_data,
    "step": bench_step,
    "inference": bench_inference,
    "smoke": bench_smoke,
}


def target_rows(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """The speed targets that ``rows`` can speak to, each as a ``"targets"`` row with ``met``.

    * cache windows ≥ 100 × the ``.nii.gz`` path (``data``, 4 × 512 × 512 windows only);
    * cache ≥ 1,000 windows per CPU-second on one core (``data``; int64 and uint8 label);
    * ``reproduce --preset smoke`` ≤ 600 s (``smoke``);
    * on CUDA at the paper's size: autocast + channels-last (+ compile) ≥ 2.5 × fp32 eager, for the
      network where it is smallest (``step``); the five-model schedule ≤ 12 h (``schedule``); the
      fastest DataLoader ≥ 5 × the windows per second the fastest step consumes (``data_loader`` and
      ``step``, same device).

    Each row carries the target's ``id`` from :data:`TARGETS` (the gpu_fast_path row also names the
    ``network``). A target whose inputs are missing is left out; nothing is inferred.
    """
    out: list[dict] = []

    spec = {t["id"]: t for t in TARGETS}

    def add(target_id: str, measured: float | None, src: dict, **extra: Any) -> None:
        if measured is None:
            return
        t = spec[target_id]
        met = measured >= t["required"] if t["higher"] else measured <= t["required"]
        out.append({"benchmark": "targets", "id": target_id, "target": t["target"], **extra,
                    "measured": _sig(measured), "required": t["required"], "met": met,
                    **{k: src.get(k) for k in PROVENANCE_KEYS}})

    by = {}
    for r in rows:
        by.setdefault(r.get("benchmark"), []).append(r)
    paper_window = f"{PAPER_SLICES}x{PAPER_SIZE}x{PAPER_SIZE}"
    for r in by.get("data", []):
        if r.get("window") == paper_window:  # the targets are about the paper's 4 x 512 x 512 windows
            add("cache_vs_nifti", r.get("cache_vs_nifti"), r)
            add("cache_per_cpu_s", r.get("cache_windows_per_cpu_s"), r)
            add("cache_per_cpu_s_uint8", r.get("cache_windows_per_cpu_s_uint8"), r)
    for r in by.get("smoke", []):
        if r.get("ok"):
            add("smoke_s", r.get("wall_s"), r)
    paper_input = f"{PAPER_BATCH}x1x{PAPER_SLICES}x{PAPER_SIZE}x{PAPER_SIZE}"
    gpu_steps = [r for r in by.get("step", []) if r.get("it_per_s") and r.get("input") == paper_input
                 and not str(r.get("device", "")).startswith("CPU")]
    if gpu_steps:
        fastest: dict[str, float] = {}
        for r in gpu_steps:
            if r["mode"] != "fp32" and r.get("speedup_vs_fp32"):
                fastest[r["variant"]] = max(fastest.get(r["variant"], 0.0), r["speedup_vs_fp32"])
        if fastest:
            worst = min(fastest, key=fastest.get)
            add("gpu_fast_path", fastest[worst], gpu_steps[0], network=worst)
        for s in by.get("schedule", []):
            if s.get("at_paper_size") and s.get("device") == gpu_steps[0].get("device"):
                add("gpu_schedule_h", s.get("five_model_hours_best"), s)
        loaders = [r for r in by.get("data_loader", []) if r.get("device") == gpu_steps[0].get("device")
                   and r.get("batch") == paper_input]
        if loaders:
            need = max(r["it_per_s"] for r in gpu_steps) * PAPER_BATCH
            add("gpu_loader", max(r["windows_per_s"] for r in loaders) / need, loaders[0])
    return out


def make_report(rows: Sequence[dict], device: str | None = None, note: str | None = None) -> dict[str, Any]:
    """The JSON document ``kitsmsan bench --json`` writes (read by the book's Performance page).

    Args:
        rows: benchmark rows (``"targets"`` rows are recomputed, old ones dropped).
        device: the device measured on (for the header); default CUDA if available.
        note: a sentence on the conditions of the run (machine load, threads), shown above the
            tables; default None (no note).

    Returns:
        ``{"device", "torch", "cuda", "commit", "python", "date", "host_cpus", "threads", ["note",]
        "results": [rows..., targets...]}``.
    """
    import torch

    from kitsmsan.utils.provenance import environment

    env = environment(device)
    rows = [dict(r) for r in rows if r.get("benchmark") != "targets"]
    return {
        "device": env["device"], "torch": env["torch"], "cuda": env["cuda"], "commit": commit(),
        "python": env["python"], "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host_cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        **({"note": note} if note else {}),
        "results": rows + target_rows(rows),
    }


def merge_reports(paths: Sequence[str | Path], device: str | None = None, note: str | None = None) -> dict[str, Any]:
    """One report from several (e.g. the stages of ``scripts/gpu_bench.sh``).

    Results are concatenated in order; ``"schedule"`` rows are kept as measured; a ``skipped``
    smoke row is dropped when a measured one is present (so a smoke run can be merged into a report
    made without it); targets are recomputed over the merged rows. The header is taken from the
    first report; ``note`` (default None) replaces its note.

    Raises:
        ConfigError: a file that is missing or not a report, naming it.
    """
    import json

    rows: list[dict] = []
    header: dict | None = None
    for path in paths:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: benchmark report not found") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not a readable JSON report ({exc})") from None
        if isinstance(data, list):
            data = {"results": data}
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise ConfigError(f"{path}: not a kitsmsan bench report (no 'results' list)")
        header = header or {k: v for k, v in data.items() if k != "results"}
        rows += [r for r in data["results"] if isinstance(r, dict) and r.get("benchmark") != "targets"]
    if not paths:
        raise ConfigError("merge: no reports given")
    if any(r.get("benchmark") == "smoke" and not r.get("skipped") for r in rows):
        rows = [r for r in rows if not (r.get("benchmark") == "smoke" and r.get("skipped"))]
    report = make_report(rows, device, note)
    report.update({k: v for k, v in (header or {}).items() if k != "date" and (k in report or k == "note")})
    if note:
        report["note"] = note
    results = report.pop("results")
    report["results"] = results  # keep the results last, after the header
    return report


def format_table(results: Sequence[dict[str, Any]], *, skip: Sequence[str] = ()) -> str:
    """Plain-text table of benchmark rows, grouped by ``benchmark``.

    A benchmark with one row prints as ``key  value`` lines; one with several rows prints as
    columns (a dash for a missing value). Keys in ``skip`` are left out (e.g. the provenance keys,
    printed once as a header by the command).
    """
    lines: list[str] = []
    groups: dict[str, list[dict]] = {}
    for res in results:
        groups.setdefault(str(res.get("benchmark", "?")), []).append(res)
    for name, group in groups.items():
        lines.append(f"== bench {name} ==")
        keys: list[str] = []
        for res in group:
            keys += [k for k in res if k != "benchmark" and k not in skip and k not in keys]
        if len(group) == 1:
            width = max((len(k) for k in keys), default=0)
            lines += [f"{k:<{width}}  {group[0][k]}" for k in keys]
            continue
        cells = [[_cell(r.get(k)) for k in keys] for r in group]
        widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
        lines.append("  ".join(k.ljust(w) for k, w in zip(keys, widths)).rstrip())
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)
