"""Will it fit, and how long will it take? GPU memory and time of the paper's training, counted on a CPU.

**Memory** (`kitsmsan bench memory`). One training step — the training loop's own
:func:`~kitsmsan.train.step.train_step` with the loss of :func:`~kitsmsan.train.step.build_loss` (forward
under autocast where asked, outputs to float32, Dice loss, backward, Adam) — runs inside
:class:`torch._subclasses.fake_tensor.FakeTensorMode`: every tensor has its shape, dtype and device
but no storage, so nothing is computed and the paper's batch (2 × 1 × 4 × 512 × 512, MSAN paper, §3.1)
is counted in seconds on a laptop. :class:`torch.distributed._tools.mem_tracker.MemTracker` records
every allocation and free by category (parameters, gradients, optimizer states, activations,
temporaries) and keeps the peak of their sum. The step is run twice and the peak of the second
iteration counts (Adam's states exist from the first ``step()`` on).

What the count leaves out, and the margin :func:`required_gib` adds for it:

* the CUDA context and the cuDNN/cuBLAS handles and kernels (outside PyTorch's allocator:
  several hundred MiB; ``nvidia-smi`` sees them, ``max_memory_allocated`` does not) — **+ 0.5 GiB**;
* the cuDNN workspace of the convolution algorithms ``cudnn.benchmark`` picks and the caching
  allocator's rounding and fragmentation (reserved minus allocated) — **+ 20 %** of the count;
* the ``GradScaler`` of fp16 training (one scalar per device; the unscale is in place) and the
  data loader's pinned host buffers (host memory, not GPU).

The autocast op lists are the CPU's (``torch.autocast("cpu", ...)``): the convolutions and the
transposed convolutions, which hold almost all activations, run in the low precision on CPU and CUDA
alike; fp16 and bf16 have the same size, so their counts agree. ``channels_last_3d`` changes strides,
not sizes, and is not applied (fake parameters cannot be re-laid-out). On a CUDA device
:func:`cuda_training_peak` runs the same step for real and reports ``torch.cuda.max_memory_allocated``
beside the count.

**Time.** Hours of a run are projected from the convolution FLOPs of one iteration
(:func:`kitsmsan.models.count_flops` with ``backward=True``) and each GPU's dense tensor-core peak from
its vendor datasheet (:data:`GPUS`), at an assumed fraction of that peak (:data:`EFFICIENCY`). They
are estimates; :func:`time_rows` replaces a row by the measured ``kitsmsan bench step`` speed when a
GPU report (``book/data/bench_gpu.json``) has one for that GPU.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from kitsmsan.bench.common import (
    PAPER_BATCH,
    PAPER_CASE_SLICES,
    PAPER_ITERS,
    PAPER_SIZE,
    PAPER_SLICES,
    commit,
)
from kitsmsan.errors import ConfigError
from kitsmsan.models.registry import build_model, list_models, model_config
from kitsmsan.models.report import count_flops, count_parameters
from kitsmsan.train.config import TrainConfig
from kitsmsan.train.step import build_loss, build_optimizer, train_step

GIB = 2**30
#: the paper's training step (MSAN paper, §3.1) is ``kitsmsan.bench.common``'s: batch 2 (PAPER_BATCH) of
#: 4 slices (PAPER_SLICES) of 512 × 512 (PAPER_SIZE), 400,000 iterations (PAPER_ITERS).
#: the inference test case: 300 slices of 512 × 512, windows of 4 every 2 slices, 4 windows per pass
#: (the defaults of :func:`kitsmsan.inference.predict_case`)
CASE_SLICES, INFER_STRIDE, INFER_BATCH = PAPER_CASE_SLICES, 2, 4
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: margin for what the count leaves out (module docstring): need = count × (1 + fraction) + context
MARGIN_FRACTION = 0.20
CONTEXT_GIB = 0.5
#: assumed share of the datasheet peak that the counted convolution FLOPs run at (not measured)
EFFICIENCY = 0.30

#: GPUs of the fit and time tables. ``usable_gib``: the total memory PyTorch reports on the card
#: (``torch.cuda.get_device_properties(0).total_memory``; typical values, below the nominal size
#: because of ECC and reserved memory; not measured here). ``tflops``: dense (no sparsity) peak of the
#: tensor cores in the precision ``amp`` that :func:`kitsmsan.utils.amp.mixed_precision_dtype` picks
#: (bf16 from compute capability 8.0, else fp16); ``tflops_fp32``: what fp32 training runs at (TF32
#: tensor cores where the card has them, PyTorch's default for convolutions; plain FP32 on the T4).
GPUS: dict[str, dict[str, Any]] = {
    "T4": dict(
        nominal_gb=16,
        usable_gib=14.7,
        capability=7.5,
        amp="fp16",
        tflops=65.0,
        tflops_fp32=8.1,
        source="NVIDIA T4 Tensor Core GPU datasheet: mixed-precision FP16/FP32 65 TFLOPS, FP32 8.1",
    ),
    "L4": dict(
        nominal_gb=24,
        usable_gib=22.0,
        capability=8.9,
        amp="bf16",
        tflops=121.0,
        tflops_fp32=60.0,
        source="NVIDIA L4 datasheet: BF16/FP16 tensor 242 TFLOPS and TF32 120 with sparsity; "
        "half of each, dense",
    ),
    "A100 40GB": dict(
        nominal_gb=40,
        usable_gib=39.4,
        capability=8.0,
        amp="bf16",
        tflops=312.0,
        tflops_fp32=156.0,
        source="NVIDIA A100 Tensor Core GPU datasheet: BF16/FP16 tensor 312 TFLOPS, TF32 156 (dense)",
    ),
    "A100 80GB": dict(
        nominal_gb=80,
        usable_gib=79.1,
        capability=8.0,
        amp="bf16",
        tflops=312.0,
        tflops_fp32=156.0,
        source="NVIDIA A100 Tensor Core GPU datasheet: BF16/FP16 tensor 312 TFLOPS, TF32 156 (dense)",
    ),
    "H100 80GB": dict(
        nominal_gb=80,
        usable_gib=79.1,
        capability=9.0,
        amp="bf16",
        tflops=989.0,
        tflops_fp32=495.0,
        source="NVIDIA H100 Tensor Core GPU datasheet (SXM): BF16/FP16 tensor 1,979 TFLOPS and "
        "TF32 989 with sparsity; half of each, dense (PCIe: 756 / 378)",
    ),
}


# ------------------------------------------------------------------------------------ counting
def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}={value!r}: expected an integer >= {low}")
    return value


def _check_precision(precision: str) -> torch.dtype | None:
    if precision not in _DTYPES:
        raise ConfigError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    return _DTYPES[precision]


def count_peak_memory(
    setup: Callable[[], tuple[Callable[[], Any], Sequence[Any]]], *, iters: int = 2
) -> dict[str, int]:
    """Peak bytes of a step, counted under ``FakeTensorMode`` (nothing computed or allocated).

    Args:
        setup: called inside the fake mode; builds the model, optimizer and inputs (so they are fake)
            and returns ``(step, tracked)``: ``step()`` runs one iteration, ``tracked`` are the
            modules/optimizers created there (handed to ``MemTracker.track_external``).
        iters: iterations run, default 2; the peak is taken over all of them.

    Returns:
        ``{"total", "parameters", "gradients", "optimizer", "activations", "temporary", "buffers"}``
        in bytes, the breakdown at the moment of the peak.
    """
    # lazy: torch.distributed is slow to import and missing from some builds; only counting needs it
    from torch.distributed._tools.mem_tracker import MemTracker

    iters = _check_int("iters", iters, 1)
    with warnings.catch_warnings(), FakeTensorMode(allow_non_fake_inputs=True):
        warnings.filterwarnings("ignore", message="Module is None")  # MemTracker's hooks, harmless
        step, tracked = setup()
        tracker = MemTracker()
        tracker.track_external(*tracked)
        with tracker:
            for _ in range(iters):
                step()
                tracker.reset_mod_stats()
        peak = tracker.get_tracker_snapshot("peak")
    snap = peak.get(torch.device("cpu")) or next(iter(peak.values()))
    by = {str(getattr(k, "value", k)): int(v) for k, v in snap.items()}
    return {
        "total": by["Total"],
        "parameters": by.get("Parameter", 0),
        "gradients": by.get("Gradient", 0),
        "optimizer": by.get("Optstate", 0),
        "activations": by.get("Activation", 0),
        "temporary": by.get("Temp", 0),
        "buffers": by.get("Buffer", 0),
    }


def _train_setup(
    variant: str,
    batch_size: int,
    num_slices: int,
    size: int,
    amp_dtype,
    overrides: dict,
    dice_include_background: bool,
    ds_weights,
    device: str | torch.device = "cpu",
    grad_scaler: bool = False,
):
    config = TrainConfig(
        dice_include_background=dice_include_background,
        ds_weights=None if ds_weights is None else list(ds_weights),
    )

    def setup():
        with torch.device(device):  # built where it runs: fake parameters cannot be moved
            model = build_model(variant, **overrides)
        model.train()
        loss_fn = build_loss(config, model)
        opt = build_optimizer(config, model, torch.device(device))  # fused Adam on CUDA, as in training
        image = torch.rand((batch_size, 1, num_slices, size, size), device=device)
        label = torch.randint(
            0, model.config.num_classes, (batch_size, num_slices, size, size), device=device
        )

        # fp16 training scales the loss (kitsmsan.train); a fake step cannot: the scaler reads
        # found-inf back to the host. It is disabled there (its memory is one scalar per device).
        scaler = torch.amp.GradScaler(
            torch.device(device).type, enabled=grad_scaler and amp_dtype == torch.float16
        )

        def step():
            return train_step(model, loss_fn, opt, scaler, image, label, amp_dtype=amp_dtype)

        return step, (model, opt)

    return setup


def _overrides(base_channels: int | None) -> dict:
    return {} if base_channels is None else {"base_channels": _check_int("base_channels", base_channels, 1)}


def training_memory(
    variant: str,
    *,
    batch_size: int = PAPER_BATCH,
    num_slices: int = PAPER_SLICES,
    size: int = PAPER_SIZE,
    precision: str = "fp32",
    base_channels: int | None = None,
    dice_include_background: bool = True,
    ds_weights: Sequence[float] | None = None,
    iters: int = 2,
) -> dict[str, Any]:
    """Counted peak GPU memory of one training step of ``variant`` (a ``"memory"`` row).

    Args:
        variant: a name from :func:`~kitsmsan.models.list_models`.
        batch_size: windows per step, default 2 (§3.1).
        num_slices: slices per window D, default 4 (§3.1).
        size: in-plane size H = W (a multiple of 16), default 512 (§3.1).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast), default ``"fp32"``.
        base_channels: network width, default None (the model's, 32).
        dice_include_background, ds_weights: the loss settings (TrainConfig's defaults).
        iters: steps counted, default 2.

    Returns:
        ``{"benchmark": "memory", "kind": "train", "variant", "precision", "input", "base_channels",
        "parameters", "counted_gib", "required_gib", breakdown in GiB ...}``.

    Raises:
        ConfigError: unknown variant or precision, bad sizes.
    """
    amp_dtype = _check_precision(precision)
    batch_size = _check_int("batch_size", batch_size, 1)
    num_slices = _check_int("num_slices", num_slices, 1)
    size = _check_int("size", size, 16)
    overrides = _overrides(base_channels)
    config = model_config(variant, **overrides)
    if size % 16:
        raise ConfigError(f"size={size}: must be a multiple of 16 (four 2x poolings)")
    counted = count_peak_memory(
        _train_setup(
            variant, batch_size, num_slices, size, amp_dtype, overrides, dice_include_background, ds_weights
        ),
        iters=iters,
    )
    with torch.device("meta"):
        params = count_parameters(build_model(variant, **overrides))
    return {
        "benchmark": "memory",
        "kind": "train",
        "variant": variant,
        "precision": precision,
        "input": f"{batch_size}x1x{num_slices}x{size}x{size}",
        "batch_size": batch_size,
        "size": size,
        "base_channels": config.base_channels,
        "parameters": params,
        "counted_gib": _gib(counted["total"]),
        "required_gib": round(required_gib(counted["total"]), 3),
        **{f"{k}_gib": _gib(v) for k, v in counted.items() if k != "total"},
        "counted_bytes": counted["total"],
    }


def inference_memory(
    variant: str,
    *,
    num_slices_case: int = CASE_SLICES,
    size: int = PAPER_SIZE,
    precision: str = "bf16",
    base_channels: int | None = None,
    batch_size: int = INFER_BATCH,
    num_slices: int = PAPER_SLICES,
) -> dict[str, Any]:
    """Memory of whole-volume inference of one case, as :func:`kitsmsan.inference.predict_case` does it.

    On the GPU ``predict_case`` holds the network and one batch of ``batch_size`` windows at a time
    (under ``torch.inference_mode``, so activations are freed layer by layer): that peak is counted
    under ``FakeTensorMode`` and does not depend on the number of slices. On the host it keeps float32
    arrays of the whole volume; they are summed here from its code (``predict_case``'s docstring):
    the HU image, the normalised and padded volume, the ``(3, Z, Y, X)`` probability accumulator and
    the int64 argmax before its uint8 copy.

    Args:
        variant: network name. num_slices_case: Z of the case, default 300. size: Y = X, default 512.
        precision: autocast of the forward, default ``"bf16"`` (predict_case's default on GPUs;
            ``"fp16"`` on a T4 has the same size). base_channels: default the model's.
        batch_size: windows per forward pass, default 4. num_slices: window depth, default 4.

    Returns:
        A ``"memory"`` row with ``kind: "inference"``, ``counted_gib``/``required_gib`` (device)
        and ``host_gib`` (arithmetic).
    """
    amp_dtype = _check_precision(precision)
    overrides = _overrides(base_channels)
    num_slices_case = _check_int("num_slices_case", num_slices_case, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    size = _check_int("size", size, 16)

    def setup():
        model = build_model(variant, **overrides).eval()
        x = torch.rand((batch_size, 1, num_slices, size, size))

        def step():
            with torch.inference_mode():
                autocast = (
                    torch.autocast("cpu", dtype=amp_dtype)
                    if amp_dtype is not None
                    else contextlib.nullcontext()
                )
                with autocast:
                    logits = model(x)
                logits = logits[0] if isinstance(logits, (list, tuple)) else logits
                return torch.softmax(logits.float(), dim=1)

        return step, (model,)

    counted = count_peak_memory(setup, iters=1)
    z = max(num_slices_case, num_slices)
    voxels = z * size * size
    host = {
        "image_hu_float32": 4 * voxels,
        "normalised_volume_float32": 4 * voxels,
        "padded_volume_float32": 4 * voxels,
        "probabilities_float32": 4 * 3 * voxels,
        "argmax_int64": 8 * voxels,
    }
    return {
        "benchmark": "memory",
        "kind": "inference",
        "variant": variant,
        "precision": precision,
        "input": f"{batch_size}x1x{num_slices}x{size}x{size}",
        "case": f"{num_slices_case}x{size}x{size}",
        "base_channels": model_config(variant, **overrides).base_channels,
        "counted_gib": _gib(counted["total"]),
        "required_gib": round(required_gib(counted["total"]), 3),
        "parameters_gib": _gib(counted["parameters"]),
        "activations_gib": _gib(counted["activations"]),
        "host_gib": _gib(sum(host.values())),
        "host_arrays_gib": {k: _gib(v) for k, v in host.items()},
        "counted_bytes": counted["total"],
    }


def cuda_training_peak(
    variant: str,
    *,
    batch_size: int = PAPER_BATCH,
    num_slices: int = PAPER_SLICES,
    size: int = PAPER_SIZE,
    precision: str = "fp32",
    base_channels: int | None = None,
    device: str | torch.device | None = None,
    iters: int = 2,
) -> dict[str, Any] | None:
    """``torch.cuda.max_memory_allocated`` (and ``max_memory_reserved``) of real training steps.

    The same :func:`~kitsmsan.train.step.train_step` as :func:`training_memory`, on a CUDA device, with the grad scaler
    for fp16 and fused Adam as in training. Returns None when CUDA is not available (nothing is run).
    """
    if not torch.cuda.is_available():
        return None
    dev = torch.device(device or "cuda")
    amp_dtype = _check_precision(precision)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    step, tracked = _train_setup(
        variant,
        batch_size,
        num_slices,
        size,
        amp_dtype,
        _overrides(base_channels),
        True,
        None,
        device=dev,
        grad_scaler=True,
    )()
    for _ in range(iters):
        step()
    torch.cuda.synchronize(dev)
    out = {
        "cuda_max_allocated_gib": _gib(torch.cuda.max_memory_allocated(dev) - base),
        "cuda_max_reserved_gib": _gib(torch.cuda.max_memory_reserved(dev)),
        "cuda_device": torch.cuda.get_device_name(dev),
    }
    del step, tracked
    torch.cuda.empty_cache()
    return out


def _gib(n: float) -> float:
    return round(n / GIB, 3)


def required_gib(counted_bytes: float) -> float:
    """GiB to have free on the card for a counted peak: ``count × (1 + MARGIN_FRACTION) + CONTEXT_GIB``."""
    return counted_bytes / GIB * (1 + MARGIN_FRACTION) + CONTEXT_GIB


# ------------------------------------------------------------------------------------ fitting
def amp_precision(gpu: str) -> str:
    """The autocast precision training picks on ``gpu`` (the rule of :mod:`kitsmsan.utils.amp`)."""
    return "bf16" if GPUS[gpu]["capability"] >= 8.0 else "fp16"


def affine_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares ``y = a + b·x``; returns ``(a, b, largest relative residual)``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    resid = max(abs(a + b * x - y) / y for x, y in zip(xs, ys))
    return a, b, resid


def largest_that_fits(intercept: float, slope: float, usable_gib: float, *, step: int = 1) -> int:
    """Largest ``x`` (a multiple of ``step``) with ``required_gib(intercept + slope·x) <= usable_gib``.

    ``intercept``/``slope`` in bytes (from :func:`affine_fit` of counted peaks). 0 if none fits.
    """
    budget = ((usable_gib - CONTEXT_GIB) / (1 + MARGIN_FRACTION)) * GIB
    if budget <= intercept:
        return 0
    return int((budget - intercept) // slope) // step * step


def fit_rows(
    variants: Sequence[str] | None = None,
    *,
    gpus: Sequence[str] | None = None,
    batches: Sequence[int] = (1, 2, 4),
    crops: Sequence[int] = (256, 384, 512),
    base_channels: int | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict[str, Any]]:
    """Does the paper's step fit each GPU, and the largest batch (or crop) that does.

    For each network and precision the peak is counted at ``batches`` (4 × 512 × 512 windows). The
    peak is affine in the batch (activations scale with it; parameters, gradients and Adam states do
    not), so the largest batch is solved from a least-squares line through those counts
    (``fit_residual``: its largest relative miss) and the largest solved batch of all GPUs is then
    counted (``confirmed_gib``, ``confirmed_fits``) to check the extrapolation. Where the paper's
    step does not fit, the largest square in-plane crop at batch 2 is solved the same way from counts
    at ``crops`` (affine in crop²). Precisions per GPU: fp32 and the autocast dtype training picks
    there (:func:`amp_precision`: fp16 on a T4, bf16 elsewhere).

    Returns:
        ``"memory"`` rows (kind ``train``, every count made) followed by ``"fit"`` rows: ``gpu``,
        ``variant``, ``precision``, ``paper_required_gib``, ``usable_gib``, ``fits``, ``max_batch``,
        ``max_crop`` (largest multiple of 16 ≤ 512 at batch 2; 512 where the paper's step fits).
    """
    names = list_models() if variants is None else list(variants)
    gpu_names = list(GPUS) if gpus is None else list(gpus)
    for g in gpu_names:
        if g not in GPUS:
            raise ConfigError(f"gpu {g!r}: expected one of {', '.join(GPUS)}")
    precisions = sorted({p for g in gpu_names for p in ("fp32", amp_precision(g))}, key=PRECISIONS.index)
    rows: list[dict] = []
    cache: dict[tuple, dict] = {}

    def count(v: str, p: str, b: int, s: int) -> dict:
        key = (v, p, b, s)
        if key not in cache:
            cache[key] = training_memory(v, batch_size=b, size=s, precision=p, base_channels=base_channels)
            rows.append(cache[key])
            if on_row:
                on_row(cache[key])
        return cache[key]

    def budget_bytes(usable: float) -> float:
        return ((usable - CONTEXT_GIB) / (1 + MARGIN_FRACTION)) * GIB

    fits: list[dict] = []
    for v in names:
        for p in precisions:
            by_batch = [count(v, p, b, PAPER_SIZE) for b in batches]
            a_b, k_b, res_b = affine_fit(list(batches), [r["counted_bytes"] for r in by_batch])
            paper = count(v, p, PAPER_BATCH, PAPER_SIZE)
            group = []
            for g in gpu_names:
                if p not in ("fp32", amp_precision(g)):
                    continue
                usable = GPUS[g]["usable_gib"]
                row = {
                    "benchmark": "fit",
                    "gpu": g,
                    "variant": v,
                    "precision": p,
                    "paper_required_gib": paper["required_gib"],
                    "usable_gib": usable,
                    "fits": paper["required_gib"] <= usable,
                    "max_batch": largest_that_fits(a_b, k_b, usable),
                    "max_crop": PAPER_SIZE,
                    "fit_residual": _sig(res_b, 2),
                }
                if not row["fits"]:
                    by_crop = [count(v, p, PAPER_BATCH, s) for s in crops]
                    a_c, k_c, _ = affine_fit([s * s for s in crops], [r["counted_bytes"] for r in by_crop])
                    free = budget_bytes(usable) - a_c
                    row["max_crop"] = min(PAPER_SIZE, math.isqrt(max(0, int(free / k_c))) // 16 * 16)
                    if row["max_crop"] >= 16:  # confirm the solved crop by counting it
                        crop_gib = count(v, p, PAPER_BATCH, row["max_crop"])["required_gib"]
                        row.update(confirmed_crop_gib=crop_gib, confirmed_crop_fits=crop_gib <= usable)
                group.append(row)
            top = max((r["max_batch"] for r in group), default=0)
            if top:  # check the furthest extrapolation by counting it
                confirmed = count(v, p, top, PAPER_SIZE)["required_gib"]
                for r in group:
                    if r["max_batch"] == top:
                        r.update(confirmed_gib=confirmed, confirmed_fits=confirmed <= r["usable_gib"])
            for r in group:
                fits.append(r)
                if on_row:
                    on_row(r)
    return rows + fits


# ------------------------------------------------------------------------------------ time
def train_flops_per_iter(
    variants: Sequence[str] | None = None,
    *,
    batch_size: int = PAPER_BATCH,
    size: int = PAPER_SIZE,
    num_slices: int = PAPER_SLICES,
) -> dict[str, int]:
    """Convolution FLOPs of one training iteration (forward + backward) per network, on ``meta``."""
    out = {}
    for name in list_models() if variants is None else variants:
        with torch.device("meta"):
            model = build_model(name)
        out[name] = count_flops(model, (batch_size, 1, num_slices, size, size), backward=True)
    return out


def projected_hours(
    flops_per_iter: float,
    gpu: str,
    *,
    num_iters: int = PAPER_ITERS,
    efficiency: float = EFFICIENCY,
    precision: str = "amp",
) -> float:
    """Estimated hours of ``num_iters`` iterations on ``gpu`` at ``efficiency`` × its datasheet peak.

    ``precision``: ``"amp"`` (the autocast peak, default) or ``"fp32"`` (TF32 / FP32 peak).
    """
    if not 0 < efficiency <= 1:
        raise ConfigError(f"efficiency={efficiency!r}: expected a fraction in (0, 1]")
    peak = GPUS[gpu]["tflops" if precision == "amp" else "tflops_fp32"] * 1e12
    return num_iters * flops_per_iter / (efficiency * peak) / 3600


def gpu_key(device_name: str) -> str | None:
    """The :data:`GPUS` key of a CUDA device name (``"Tesla T4"`` → ``"T4"``), or None."""
    name = device_name.lower()
    if "t4" in name.split() or name.endswith("t4"):
        return "T4"
    if "l4" in name.replace("-", " ").split():
        return "L4"
    if "a100" in name:
        return "A100 80GB" if "80" in name else "A100 40GB"
    if "h100" in name:
        return "H100 80GB"
    return None


def time_rows(
    flops: Mapping[str, int],
    *,
    gpus: Sequence[str] | None = None,
    num_iters: int = PAPER_ITERS,
    efficiency: float = EFFICIENCY,
    measured: Iterable[dict] = (),
) -> list[dict[str, Any]]:
    """Hours per network and for the five-network schedule on each GPU (``"time"`` rows).

    Estimated from ``flops`` (:func:`train_flops_per_iter`) with :func:`projected_hours` at the
    autocast peak. A ``"step"`` row of ``kitsmsan bench step`` in ``measured`` (at the paper's input,
    from a device :func:`gpu_key` recognises) replaces the estimate for that GPU and network: its
    fastest mode's ``it_per_s`` gives the hours, and the row says ``source: measured`` with the
    commit and the device.
    """
    paper_input = f"{PAPER_BATCH}x1x{PAPER_SLICES}x{PAPER_SIZE}x{PAPER_SIZE}"
    best: dict[tuple[str, str], dict] = {}
    for r in measured:
        if r.get("benchmark") != "step" or not r.get("it_per_s") or r.get("input") != paper_input:
            continue
        key = gpu_key(str(r.get("device", "")))
        if key is None:
            continue
        k = (key, r["variant"])
        if k not in best or r["it_per_s"] > best[k]["it_per_s"]:
            best[k] = r
    rows = []
    for g in list(GPUS) if gpus is None else gpus:
        per = {}
        sources = set()
        for v, f in flops.items():
            m = best.get((g, v))
            if m:
                per[v] = {
                    "hours": _sig(num_iters / m["it_per_s"] / 3600),
                    "source": "measured",
                    "mode": m.get("mode"),
                    "device": m.get("device"),
                    "commit": m.get("commit"),
                }
            else:
                per[v] = {
                    "hours": _sig(projected_hours(f, g, num_iters=num_iters, efficiency=efficiency)),
                    "source": "estimate",
                }
            sources.add(per[v]["source"])
        total = sum(p["hours"] for p in per.values())
        rows.append(
            {
                "benchmark": "time",
                "gpu": g,
                "precision": GPUS[g]["amp"],
                "iters_per_network": num_iters,
                "efficiency": efficiency,
                "peak_tflops": GPUS[g]["tflops"],
                **{f"hours_{v}": p["hours"] for v, p in per.items()},
                "hours_schedule": _sig(total),
                "source": "/".join(sorted(sources)),
                "measured": {v: p for v, p in per.items() if p["source"] == "measured"},
            }
        )
    return rows


# ------------------------------------------------------------------------------------ report
def memory_report(
    variants: Sequence[str] | None = None,
    *,
    precisions: Sequence[str] = PRECISIONS,
    gpus: Sequence[str] | None = None,
    fit: bool = True,
    estimates: bool = True,
    inference: bool = True,
    cuda: bool = True,
    base_channels: int | None = None,
    num_iters: int = PAPER_ITERS,
    efficiency: float = EFFICIENCY,
    measured: Iterable[dict] = (),
    on_row: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Everything ``kitsmsan bench memory`` writes (``book/data/memory.json``).

    Rows: the counted training peak of each network × precision at the paper's step (with
    ``torch.cuda.max_memory_allocated`` of a real step beside it when ``cuda`` and a GPU is there),
    the inference peak of a 512 × 512 × 300 case, the fit rows (:func:`fit_rows`) and the time rows
    (:func:`time_rows`, with ``measured`` step rows replacing estimates). ``fit`` and ``estimates``
    (default True) switch the last two off (``kitsmsan bench memory --counts-only``).

    Returns:
        ``{"what", "counted_on", "not_counted", "margin", "efficiency", "gpus", "torch", "commit",
        "date", "results": [...]}``.
    """
    names = list_models() if variants is None else list(variants)
    for p in precisions:
        _check_precision(p)
    results: list[dict] = []
    commit_id = commit()

    def emit(row: dict) -> None:
        # the provenance keys every bench row has (so GPU reports merge with `kitsmsan bench merge`)
        row.update(
            device=row.get("cuda_device") or "none: counted under FakeTensorMode, not measured",
            torch=torch.__version__,
            commit=commit_id,
        )
        results.append(row)
        if on_row:
            on_row(row)

    for v in names:
        for p in precisions:
            row = training_memory(v, precision=p, base_channels=base_channels)
            if cuda:
                real = cuda_training_peak(v, precision=p, base_channels=base_channels)
                if real:
                    row.update(real)
            emit(row)
    if inference:
        for v in names:
            emit(inference_memory(v, base_channels=base_channels))
    if fit:
        for row in fit_rows(names, gpus=gpus, base_channels=base_channels):
            if row["benchmark"] == "fit":
                emit(row)
    flops = train_flops_per_iter(names)
    if estimates:
        for row in time_rows(flops, gpus=gpus, num_iters=num_iters, efficiency=efficiency, measured=measured):
            emit(row)
    return {
        "what": "peak GPU memory of one training step (MSAN paper, §3.1: batch 2 x 1 x 4 x 512 x 512) and "
        "of whole-case inference, counted under FakeTensorMode + MemTracker on the CPU device "
        "(nothing computed); hours projected from counted FLOPs and datasheet peaks",
        "counted_on": "CPU device, torch FakeTensorMode (no GPU)",
        "not_counted": "CUDA context and cuDNN/cuBLAS handles; cuDNN workspace; caching-allocator "
        "rounding and fragmentation; the fp16 GradScaler's scalars",
        "margin": {
            "fraction": MARGIN_FRACTION,
            "context_gib": CONTEXT_GIB,
            "rule": "required_gib = counted_gib x (1 + fraction) + context_gib",
        },
        "efficiency": efficiency,
        "gpus": GPUS,
        "flops_per_iter": {k: int(v) for k, v in flops.items()},
        "torch": torch.__version__,
        "commit": commit_id,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "results": results,
    }


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join("—" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def memory_markdown(
    report: Mapping[str, Any], measured: Iterable[dict] = (), *, colab_iters: int | None = None
) -> dict[str, str]:
    """The book's tables from a :func:`memory_report` (``book/data/memory.json``), as Markdown.

    Args:
        report: the JSON document ``kitsmsan bench memory`` wrote.
        measured: rows of GPU bench reports (``book/data/bench_gpu.json``): their ``"step"`` rows
            replace time estimates (:func:`time_rows`), their ``"memory"`` rows with
            ``cuda_max_allocated_gib`` are shown beside the counts.
        colab_iters: iterations of the ``colab`` preset, for an extra column of hours per network
            (default None: no column).

    Returns:
        ``{"memory", "fit", "time", "inference"}`` → Markdown (a table and a provenance line each).
    """
    results = list(report.get("results", []))
    measured = list(measured)
    prov = (
        f"Counted with torch {report.get('torch')} at commit `{report.get('commit')}` on "
        f"{report.get('counted_on')}, {str(report.get('date', ''))[:10]}."
    )
    margin = report.get("margin", {})
    rule = (
        f"needed = counted × {1 + margin.get('fraction', MARGIN_FRACTION):g} + "
        f"{margin.get('context_gib', CONTEXT_GIB):g} GiB"
    )
    real = {
        (r.get("variant"), r.get("precision")): r
        for r in [*results, *measured]
        if r.get("benchmark") == "memory"
        and r.get("kind") == "train"
        and r.get("cuda_max_allocated_gib")
        and r.get("input") == f"{PAPER_BATCH}x1x{PAPER_SLICES}x{PAPER_SIZE}x{PAPER_SIZE}"
    }
    train = [
        r
        for r in results
        if r.get("benchmark") == "memory"
        and r.get("kind") == "train"
        and r.get("input") == f"{PAPER_BATCH}x1x{PAPER_SLICES}x{PAPER_SIZE}x{PAPER_SIZE}"
    ]
    seen, rows = set(), []
    for r in train:
        key = (r["variant"], r["precision"])
        if key in seen:
            continue
        seen.add(key)
        m = real.get(key, {})
        rows.append(
            (
                r["variant"],
                r["precision"],
                f"{r['counted_gib']:.2f}",
                f"{r['activations_gib']:.2f}",
                f"{r['parameters_gib'] + r['optimizer_gib']:.2f}",
                f"{r['required_gib']:.1f}",
                f"{m['cuda_max_allocated_gib']:.2f} ({m.get('cuda_device')})" if m else "pending",
            )
        )
    out = {
        "memory": _md_table(
            [
                "network",
                "precision",
                "counted peak (GiB)",
                "of which activations",
                "parameters + Adam",
                f"needed ({rule})",
                "measured on a GPU",
            ],
            rows,
        )
        + f"\n{prov} Not counted: {report.get('not_counted')}.\n"
    }

    fits = [r for r in results if r.get("benchmark") == "fit"]
    gpus = list(dict.fromkeys(r["gpu"] for r in fits))
    frows = []
    for v in dict.fromkeys(r["variant"] for r in fits):
        for label, pick in (("fp32", lambda g: "fp32"), ("autocast", amp_precision)):
            cells = []
            for g in gpus:
                r = next(
                    (x for x in fits if x["gpu"] == g and x["variant"] == v and x["precision"] == pick(g)),
                    None,
                )
                if r is None:
                    cells.append(None)
                elif r["fits"]:
                    cells.append(f"yes (up to batch {r['max_batch']})")
                else:
                    options = ([f"batch {r['max_batch']}"] if r["max_batch"] else []) + (
                        [f"crop {r['max_crop']}² at batch 2"] if r["max_crop"] else []
                    )
                    cells.append("**no**" + (": " + ", or ".join(options) if options else ""))
            frows.append((v, label, *cells))
    usable = ", ".join(f"{g} {GPUS[g]['usable_gib']} GiB" for g in gpus if g in GPUS)
    if not fits:
        out["fit"] = "The fit search was not run (`kitsmsan bench memory` without `--counts-only` runs it).\n"
    else:
        out["fit"] = (
            _md_table(["network", "precision", *gpus], frows)
            + f"\nDoes the paper's step (batch 2 × 1 × 4 × 512 × 512, base width 32) fit? "
            f"Autocast is fp16 on the T4 (no bf16 there) and bf16 elsewhere. "
            f"Memory the card offers: "
            f"{usable}. The largest batch is solved from counts at batches 1, 2 and 4 "
            f"and the largest solved batch is counted again to confirm it. {prov}\n"
        )

    flops = report.get("flops_per_iter", {})
    eff = report.get("efficiency", EFFICIENCY)
    trows = []
    for t in time_rows(flops, gpus=[g for g in GPUS], efficiency=eff, measured=measured):
        cells = [f"{t['hours_' + v]:.3g}" + (" (measured)" if v in t["measured"] else "") for v in flops]
        row = [t["gpu"], f"{t['precision']}, {t['peak_tflops']:g}", *cells, f"{t['hours_schedule']:.3g}"]
        if colab_iters:
            slowest = max(t["hours_" + v] for v in flops) * colab_iters / t["iters_per_network"]
            row.append(f"{slowest:.2g}")
        trows.append(row)
    header = ["GPU", "autocast, dense peak TFLOP/s", *[f"{v} (h)" for v in flops], "five networks (h)"]
    if colab_iters:
        header.append(f"`colab` preset, slowest network ({colab_iters:,} it, h)")
    sources = "; ".join(f"{g}: {GPUS[g]['source']}" for g in GPUS)
    out["time"] = (
        _md_table(header, trows)
        + f"\n**Estimates**, not measurements, unless a cell says *measured*: hours of "
        f"{PAPER_ITERS:,} iterations per network from the counted convolution FLOPs of one "
        f"iteration "
        f"(forward + backward, "
        + ", ".join(f"{v} {f / 1e12:.2f}" for v, f in flops.items())
        + f" TFLOP) at an assumed {eff:.0%} of each GPU's dense tensor-core peak. "
        f"Peaks from the vendor datasheets — {sources}. A measured row "
        f"(`scripts/gpu_bench.sh` → `book/data/bench_gpu.json`) replaces the estimate for "
        f"its GPU.\n"
    )

    inf = [r for r in results if r.get("benchmark") == "memory" and r.get("kind") == "inference"]
    out["inference"] = (
        _md_table(
            ["network", "precision", "GPU: counted peak (GiB)", "GPU: needed (GiB)", "host RAM arrays (GiB)"],
            [
                (
                    r["variant"],
                    r["precision"],
                    f"{r['counted_gib']:.2f}",
                    f"{r['required_gib']:.1f}",
                    f"{r['host_gib']:.2f}",
                )
                for r in inf
            ],
        )
        + "\nWhole-case inference of a 512 × 512 × 300 volume as `predict_case` runs it "
        "(4-slice windows every 2 slices, 4 windows per forward pass): the GPU holds the "
        "network and one batch, whatever the case length; the host holds the volume, the "
        "float32 probabilities of 3 classes and the argmax. " + prov + "\n"
    )
    return out


def _sig(x: float | None, digits: int = 3) -> float | None:
    if x is None or not math.isfinite(x) or x == 0:
        return x
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))


__all__ = [
    "CONTEXT_GIB",
    "EFFICIENCY",
    "GPUS",
    "MARGIN_FRACTION",
    "PRECISIONS",
    "affine_fit",
    "amp_precision",
    "count_peak_memory",
    "cuda_training_peak",
    "fit_rows",
    "gpu_key",
    "inference_memory",
    "largest_that_fits",
    "memory_markdown",
    "memory_report",
    "projected_hours",
    "required_gib",
    "time_rows",
    "train_flops_per_iter",
    "training_memory",
]
