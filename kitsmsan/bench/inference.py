"""The inference benchmark: seconds to label one whole case, one network and the five-network vote."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from kitsmsan.bench.budget import build_model_default_base
from kitsmsan.bench.common import (
    PAPER_CASE_SLICES,
    PAPER_SIZE,
    PAPER_SLICES,
    _check_int,
    _emit,
    _sig,
    _variants,
    provenance,
)
from kitsmsan.bench.data import _make_case
from kitsmsan.inference import predict_case, predict_ensemble_vote, window_starts
from kitsmsan.models import build_model
from kitsmsan.postprocess import keep_largest_components
from kitsmsan.utils.amp import resolve_amp
from kitsmsan.utils.device import resolve_device
from kitsmsan.utils.torch_state import torch_settings

#: per-device defaults of :func:`bench_inference`
INFERENCE_DEFAULTS = {
    "cuda": dict(size=PAPER_SIZE, num_slices=PAPER_CASE_SLICES, base_channels=None),
    "cpu": dict(size=128, num_slices=32, base_channels=8),
}


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
    rows: list[dict] = []
    with torch_settings(
        threads=threads and _check_int("threads", threads, 1),
        cudnn_benchmark=True if dev.type == "cuda" else None,
    ):
        image, _, _ = _make_case((num_slices, size, size), seed, "synthetic")
        torch.manual_seed(seed)
        models = {v: build_model(v, **overrides).to(dev).eval() for v in dict.fromkeys([single, *names])}
        kwargs = dict(stride=stride, batch_size=batch_size, device=dev, amp=amp)
        for m in models.values():  # warm-up: cuDNN autotuning, the allocator
            warm_pred = predict_case(m, image[: min(num_slices, PAPER_SLICES + stride)], **kwargs)
        keep_largest_components(warm_pred)  # first call imports scipy.ndimage
        windows = len(window_starts(max(num_slices, PAPER_SLICES), PAPER_SLICES, stride))
        amp_dtype = resolve_amp(amp, dev)
        common = {
            "case": f"{num_slices}x{size}x{size}",
            "base_channels": base_channels or build_model_default_base(single),
            "stride": stride,
            "batch_size": batch_size,
            "windows": windows,
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
        }
        t0 = time.perf_counter()
        pred = predict_case(models[single], image, **kwargs)
        one_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        keep_largest_components(pred)
        post_s = time.perf_counter() - t0
        _emit(
            rows,
            {
                "benchmark": "inference",
                "models": 1,
                "variants": single,
                **common,
                "seconds_per_case": _sig(one_s),
                "windows_per_s": _sig(windows / one_s),
                "postprocess_s": _sig(post_s),
                "threads": torch.get_num_threads(),
                **prov,
            },
            on_row,
            verbose,
        )
        t0 = time.perf_counter()
        predict_ensemble_vote([models[v] for v in names], image, **kwargs)
        vote_s = time.perf_counter() - t0
        _emit(
            rows,
            {
                "benchmark": "inference",
                "models": len(names),
                "variants": ",".join(names),
                **common,
                "seconds_per_case": _sig(vote_s),
                "windows_per_s": _sig(windows * len(names) / vote_s),
                "vs_single": _sig(vote_s / one_s),
                "threads": torch.get_num_threads(),
                **prov,
            },
            on_row,
            verbose,
        )
    return rows
