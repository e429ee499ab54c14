"""The training-step benchmark (MSAN paper, §3.1): iterations per second of each network and mode."""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from kitsmsan.bench.budget import build_model_default_base, schedule_budget, schedule_row
from kitsmsan.bench.common import (
    PAPER_BATCH,
    PAPER_ITERS,
    PAPER_SIZE,
    PAPER_SLICES,
    _check_int,
    _emit,
    _pick,
    _sig,
    _variants,
    provenance,
)
from kitsmsan.errors import ConfigError
from kitsmsan.models import build_model, count_train_flops, model_config
from kitsmsan.train.config import TrainConfig
from kitsmsan.train.step import build_loss, build_optimizer, train_step
from kitsmsan.utils.amp import mixed_precision_dtype
from kitsmsan.utils.device import resolve_device
from kitsmsan.utils.torch_state import torch_settings

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
        modes = (
            ["fp32", "amp", "amp+cl", "amp+cl+compile"]
            if dev_type == "cuda"
            else ["fp32", "cl", "amp", "amp+cl"]
        )
        if dev_type == "cpu" and compile:
            modes.append("amp+cl+compile")
    else:
        modes = _pick("modes", modes, STEP_MODES)
    if "fp32" not in modes:
        modes.insert(0, "fp32")  # every ratio needs its baseline, measured in the same call
    return sorted(dict.fromkeys(modes), key=STEP_MODES.index)


def _timed(
    step: Callable[[], torch.Tensor], n: int, dev: torch.device
) -> tuple[float, float, torch.Tensor | None]:
    """Run ``step`` ``n`` times: (wall seconds, CPU seconds of this process, the last loss). On CUDA the
    clock is read after ``torch.cuda.synchronize``."""
    loss = None
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        loss = step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0, time.process_time() - c0, loss


def time_step(
    variant: str,
    mode: str,
    dev: torch.device,
    *,
    batch_size: int,
    num_slices: int,
    size: int,
    overrides: dict,
    iters: int,
    warmup: int,
    seed: int,
) -> dict[str, Any]:
    """Measure one (network, mode): seconds per iteration, warm-up seconds, peak memory.

    Each iteration is :func:`kitsmsan.train.step.train_step` with the loss and the optimizer that
    :class:`~kitsmsan.train.loop.Trainer` builds for the paper preset (:func:`~kitsmsan.train.step.build_loss`,
    :func:`~kitsmsan.train.step.build_optimizer`), on random ``(batch_size, 1, num_slices, size, size)``
    images and labels already on the device (the content does not change the cost).
    """
    amp_dtype = mixed_precision_dtype(dev) if mode.startswith("amp") else None
    channels_last = "cl" in mode.split("+")
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    cuda = dev.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        mem0 = torch.cuda.memory_allocated(dev)
    else:
        rss_reset, rss0 = _reset_peak_rss(), _proc_status_kb("VmRSS")
    torch.manual_seed(seed)
    config = TrainConfig.from_preset("paper", variant=variant)
    net = build_model(variant, **overrides).to(dev, memory_format=fmt).train()
    loss_fn, opt = build_loss(config, net), build_optimizer(config, net, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16)
    model = torch.compile(net) if mode.endswith("compile") else net
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((batch_size, 1, num_slices, size, size), generator=gen).to(dev, memory_format=fmt)
    y = torch.randint(0, 3, (batch_size, num_slices, size, size), generator=gen).to(dev)

    step = functools.partial(train_step, model, loss_fn, opt, scaler, x, y, amp_dtype=amp_dtype)
    warm_s, _, _ = _timed(step, warmup, dev)
    elapsed, cpu, loss = _timed(step, iters, dev)
    if cuda:
        peak_mb, how = (torch.cuda.max_memory_allocated(dev) - mem0) / 2**20, "cuda max_memory_allocated"
    else:
        hwm = _proc_status_kb("VmHWM")
        peak_mb = (hwm - rss0) / 1024 if (rss_reset and hwm is not None and rss0 is not None) else None
        how = "peak RSS - RSS before" if peak_mb is not None else "unavailable"
    result = {
        "s_per_it": elapsed / iters,
        "cpu_s_per_it": cpu / iters,
        "warmup_s": warm_s,
        "peak_mem_mb": peak_mb,
        "mem_measure": how,
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "channels_last": channels_last,
        "compile": mode.endswith("compile"),
        "params": sum(p.numel() for p in net.parameters()),
        "loss_finite": bool(torch.isfinite(loss).item()),
    }
    del step, model, net, opt, x, y
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


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
    measure: Callable[..., dict[str, Any]] | None = None,
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
    error, a crash of a measuring process) gives a row with ``error`` instead of timings; the others
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
        measure: the function that measures one (network, mode), called as :func:`time_step`;
            default None: :func:`time_step` in this process. ``kitsmsan bench step`` passes one
            that runs it in a fresh process on CPU (torch 2.13's oneDNN bf16 Conv3d backward crashes
            the process on some CPUs from 96 × 96 planes up: isolated, that is an ``error`` row).
        seed: seed of the weights and the random batch, default 0.
        budget: end with the :func:`~kitsmsan.bench.budget.schedule_budget` row (counted, about 10 s on a CPU), default True.
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
        convolution FLOPs, forward + backward, times ``it_per_s``; see :func:`~kitsmsan.bench.budget.schedule_budget`);
        then one ``"schedule"`` row (:func:`~kitsmsan.bench.budget.schedule_row`) and, with ``budget``, one ``"budget"`` row.

    Raises:
        ConfigError: unknown variant or mode, bad sizes, unavailable device.
    """
    dev = resolve_device(device)
    defaults = STEP_DEFAULTS[dev.type]
    size = _check_int("size", defaults["size"] if size is None else size, 16)
    if size % 16:
        raise ConfigError(f"size={size}: must be a multiple of 16 (four 2x poolings)")
    base_channels = (
        defaults["base_channels"] if base_channels is None else _check_int("base_channels", base_channels, 1)
    )
    shape = dict(
        batch_size=_check_int("batch_size", batch_size, 1),
        num_slices=_check_int("num_slices", num_slices, 1),
        size=size,
        overrides={} if base_channels is None else {"base_channels": base_channels},
        iters=_check_int("iters", defaults["iters"] if iters is None else iters, 1),
        warmup=_check_int("warmup", defaults["warmup"] if warmup is None else warmup, 0),
        seed=seed,
    )
    num_iters = _check_int("num_iters", num_iters, 1)
    names = _variants(variants)
    plan = _step_plan(
        names,
        _step_modes(modes, dev.type, compile),
        names if compile_variants is None else _variants(compile_variants),
    )
    rows: list[dict] = []
    fp32: dict[str, dict] = {}
    with torch_settings(
        threads=threads and _check_int("threads", threads, 1),
        cudnn_benchmark=True if dev.type == "cuda" else None,
    ):
        for variant, mode in plan:
            row = _step_row(
                variant,
                mode,
                dev,
                shape,
                measure or time_step,
                fp32,
                num_iters,
                isolated=measure is not None,
                base_channels=base_channels,
            )
            _emit(rows, row, on_row, verbose)
    sched = schedule_row(rows, num_iters=num_iters)
    if sched is not None:
        _emit(rows, sched, on_row, verbose)
    if budget:
        _emit(rows, schedule_budget(num_iters=num_iters), on_row, verbose)
    return rows


def _step_plan(names: list[str], modes: list[str], compile_names: list[str]) -> list[tuple[str, str]]:
    """(network, mode) pairs in measuring order: the eager modes of every network first, the compile
    modes last, so that a time limit that stops the run during compilation still leaves every eager row."""
    plan = [(v, m) for v in names for m in modes if not m.endswith("compile")]
    return plan + [(v, m) for v in compile_names if v in names for m in modes if m.endswith("compile")]


@functools.cache
def _train_flops(variant: str, overrides: tuple, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one training step (forward + backward), counted on the ``meta`` device."""
    with torch.device("meta"):
        return count_train_flops(build_model(variant, **dict(overrides)), input_shape)


def _step_row(
    variant: str,
    mode: str,
    dev: torch.device,
    shape: dict,
    measure: Callable[..., dict],
    fp32: dict[str, dict],
    num_iters: int,
    *,
    isolated: bool,
    base_channels: int | None,
) -> dict:
    """Measure one (network, mode) with ``measure`` and turn the result into a ``"step"`` row.

    ``fp32`` collects the fp32 results per network (the baselines of the speed-ups). A failure (out of
    memory, a compiler error, a crashed process) gives a row with ``error``."""
    b, n, s = shape["batch_size"], shape["num_slices"], shape["size"]
    row: dict[str, Any] = {
        "benchmark": "step",
        "variant": variant,
        "mode": mode,
        "input": f"{b}x1x{n}x{s}x{s}",
        "base_channels": base_channels or build_model_default_base(variant),
        "deep_supervision": model_config(variant, **shape["overrides"]).deep_supervision,
        "warmup": shape["warmup"],
        "iters": shape["iters"],
        "isolated": isolated,
    }
    prov = provenance(str(dev))
    try:
        res = measure(variant, mode, dev, **shape)
    except Exception as exc:  # noqa: BLE001 - OOM, compiler failure: record it, run the rest
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        return {**row, "error": f"{type(exc).__name__}: {msg}", **prov}
    rate = 1.0 / res["s_per_it"]
    if mode == "fp32":
        fp32[variant] = res
    base = fp32.get(variant)
    flops = _train_flops(variant, tuple(sorted(shape["overrides"].items())), (b, 1, n, s, s))
    row.update(
        precision=res["precision"],
        channels_last=res["channels_last"],
        compile=res["compile"],
        params=res["params"],
        warmup_s=_sig(res["warmup_s"]),
        it_per_s=_sig(rate),
        s_per_it=_sig(res["s_per_it"]),
        cpu_s_per_it=_sig(res["cpu_s_per_it"]),
        speedup_vs_fp32=_sig(base["s_per_it"] / res["s_per_it"]) if base else None,
        peak_mem_mb=_sig(res["peak_mem_mb"]),
        mem_measure=res["mem_measure"],
        hours_per_run=_sig(num_iters / rate / 3600),
        run_iters=num_iters,
        tflop_per_s=_sig(flops * rate / 1e12),
        loss_finite=res["loss_finite"],
        threads=torch.get_num_threads(),
    )
    if dev.type == "cpu" and base and res["cpu_s_per_it"] > 0:
        # CPU seconds, not wall: on a shared machine the ratio that other load distorts least
        row["cpu_time_speedup_vs_fp32"] = _sig(base["cpu_s_per_it"] / res["cpu_s_per_it"])
    if res.get("onednn_isa"):
        row["onednn_isa"] = res["onednn_isa"]
    if dev.type == "cuda":
        row.update(
            cudnn_benchmark=True,
            tf32_conv=torch.backends.cudnn.allow_tf32,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    return {**row, **prov}
