"""``kitsmsan bench``: speed benchmarks (data cache, training step, inference, smoke run).

Examples::

    kitsmsan bench all --json book/data/bench_cpu.json          # CPU defaults, minutes
    kitsmsan bench data --size 128 --slices 40 --windows 200      # a quick data run
    kitsmsan bench step --device cuda --json step.json            # the paper's size on a GPU
    kitsmsan bench step --variants unet3d --modes fp32,amp --iters 2
    kitsmsan bench smoke                                          # times reproduce --preset smoke
    kitsmsan bench merge --inputs a.json b.json --json all.json   # one report from several
    kitsmsan bench memory --json book/data/memory.json            # will it fit / how long (counted)

Size options apply to the benchmarks that have them; ``None`` means the benchmark's per-device
default (see :mod:`kitsmsan.bench`). With ``--json`` the report is rewritten after every row, so a
run stopped half-way keeps what it measured.
"""

from __future__ import annotations

import argparse

CHOICES = ("all", "data", "step", "inference", "smoke", "merge", "memory")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 0,1,2") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` parser."""
    p = subparsers.add_parser(
        "bench",
        help="speed benchmarks (data, step, inference, smoke, all)",
        description="Measure the pipeline's speed on this machine and print a table. "
        "'all' runs data, step, inference and smoke (unless --skip-smoke).",
    )
    p.add_argument("which", choices=CHOICES, help="which benchmark; 'merge' joins --inputs reports")
    p.add_argument(
        "--json", default=None, metavar="OUT", help="write the report as JSON (book/data/bench_*.json)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    g = p.add_argument_group("sizes (default: per device, see kitsmsan.bench)")
    g.add_argument("--size", type=int, default=None, help="in-plane size H = W (data default 512)")
    g.add_argument(
        "--slices",
        type=int,
        default=None,
        help="slices of the data / inference test case (default 300; inference on CPU 32)",
    )
    g.add_argument("--base-channels", type=int, default=None, help="network width (step / inference)")
    g.add_argument("--batch-size", type=int, default=2, help="windows per step / loader batch (default 2)")
    g.add_argument("--iters", type=int, default=None, help="timed step iterations (default cuda 20, cpu 3)")
    g.add_argument("--warmup", type=int, default=None, help="untimed step iterations (default cuda 5, cpu 1)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads for step / inference")
    s = p.add_argument_group("step")
    s.add_argument("--variants", default=None, help="comma-separated networks (default: all five)")
    s.add_argument(
        "--modes",
        default=None,
        help="comma-separated of fp32,cl,amp,amp+cl,amp+cl+compile (default: cuda "
        "fp32,amp,amp+cl,amp+cl+compile; cpu fp32,cl,amp,amp+cl)",
    )
    s.add_argument("--compile", action="store_true", help="on CPU, add the torch.compile mode")
    s.add_argument(
        "--compile-variants", default=None, help="networks that get the compile mode (default: all)"
    )
    s.add_argument(
        "--isolate",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="measure each network/mode in a fresh process (default: on for CPU, off for CUDA)",
    )
    d = p.add_argument_group("data")
    d.add_argument("--windows", type=int, default=2000, help="cache windows timed (default 2000)")
    d.add_argument("--nifti-windows", type=int, default=5, help=".nii.gz windows timed (default 5)")
    d.add_argument("--no-nifti", action="store_true", help="skip the .nii.gz path")
    d.add_argument("--workers", type=_int_list, default=[0, 1, 2], help="DataLoader workers (default 0,1,2)")
    d.add_argument(
        "--loader-batches", type=int, default=50, help="batches timed per worker count (default 50)"
    )
    d.add_argument(
        "--label-dtype",
        default="uint8",
        choices=("int64", "int16", "uint8"),
        help="label dtype of the loader rows (default uint8, what training uses)",
    )
    d.add_argument(
        "--source",
        default="phantom",
        choices=("phantom", "synthetic"),
        help="content of the test case (default phantom)",
    )
    m = p.add_argument_group("smoke / merge")
    m.add_argument("--skip-smoke", action="store_true", help="'all' without the smoke run (it takes minutes)")
    m.add_argument("--smoke-out", default=None, help="keep the reproduction in this new folder")
    m.add_argument("--smoke-timeout", type=float, default=3600.0, help="seconds (default 3600)")
    m.add_argument("--inputs", nargs="+", default=[], metavar="JSON", help="reports to merge")
    mem = p.add_argument_group("memory (counted without a GPU; see kitsmsan.bench.memory)")
    mem.add_argument(
        "--precisions", default="fp32,bf16,fp16", help="comma-separated (default fp32,bf16,fp16)"
    )
    mem.add_argument(
        "--counts-only",
        action="store_true",
        help="only the memory rows: no per-GPU fit search (minutes) and no time estimates",
    )
    mem.add_argument(
        "--measured",
        nargs="*",
        default=None,
        metavar="JSON",
        help="bench reports whose GPU step rows replace the time estimates "
        "(default: book/data/bench_gpu.json if it exists)",
    )
    p.add_argument("--note", default=None, help="a sentence on the run's conditions, kept in the JSON header")
    p.add_argument("--wide", action="store_true", help="print every column (the JSON always has them)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a --json file this command did not write (the old one is kept beside it)",
    )
    p.set_defaults(func=run)


def _kwargs(name: str, args: argparse.Namespace) -> dict:
    if name == "data":
        kw = dict(
            num_windows=args.windows,
            num_nifti_windows=args.nifti_windows,
            workers=args.workers,
            loader_batches=args.loader_batches,
            batch_size=args.batch_size,
            label_dtype=args.label_dtype,
            source=args.source,
            nifti=not args.no_nifti,
            device=args.device,
        )
        if args.size is not None:
            kw["size"] = args.size
        if args.slices is not None:
            kw["num_slices"] = args.slices
        return kw
    if name == "step":
        from kitsmsan.bench import resolve_device

        isolate = resolve_device(args.device).type == "cpu" if args.isolate is None else args.isolate
        return dict(
            variants=args.variants,
            modes=args.modes,
            compile=args.compile,
            compile_variants=args.compile_variants,
            size=args.size,
            batch_size=args.batch_size,
            base_channels=args.base_channels,
            iters=args.iters,
            warmup=args.warmup,
            device=args.device,
            threads=args.threads,
            measure=time_step_isolated if isolate else None,
        )
    if name == "inference":
        return dict(
            size=args.size,
            num_slices=args.slices,
            base_channels=args.base_channels,
            device=args.device,
            threads=args.threads,
        )
    return dict(run=not args.skip_smoke, out=args.smoke_out, timeout_s=args.smoke_timeout)


def _is_report(path) -> bool:
    """A JSON report ``kitsmsan bench`` wrote: ``results`` with ``device`` (timings) or ``counted_on`` (memory)."""
    import json

    try:
        doc = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "results" in doc and bool({"device", "counted_on"} & set(doc))


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark(s), print a table, optionally write the JSON report; returns 0."""
    from kitsmsan.bench import (
        BENCHMARKS,
        PROVENANCE_KEYS,
        benchmark,
        format_table,
        make_report,
        merge_reports,
    )
    from kitsmsan.errors import ConfigError
    from kitsmsan.utils.io import atomic_write_json, claim_output_file

    if args.json:  # the output-folder rule for the report file
        claim_output_file(args.json, command="bench", overwrite=args.overwrite, recognize=_is_report)
    if args.which == "merge":
        if not args.inputs or not args.json:
            raise ConfigError("bench merge: give --inputs A.json B.json ... and --json OUT")
        report = merge_reports(args.inputs, args.device, args.note)
        atomic_write_json(args.json, report)
        print(format_table(report["results"], skip=PROVENANCE_KEYS + (() if args.wide else NARROW_SKIP)))
        return 0
    if args.inputs:
        raise ConfigError("--inputs: only for 'bench merge'")
    if args.which == "memory":
        return _run_memory(args)
    names = list(BENCHMARKS) if args.which == "all" else [args.which]
    rows: list[dict] = []

    def save(_row: dict | None = None) -> None:
        if args.json:
            atomic_write_json(args.json, make_report(rows, args.device, args.note))

    for name in names:
        before = len(rows)
        new = benchmark(name)(verbose=False, on_row=lambda r: (rows.append(r), save()), **_kwargs(name, args))
        # functions emit through on_row; rows they return without emitting are added here
        rows.extend([r for r in new if not any(r is x for x in rows[before:])])
    report = make_report(rows, args.device, args.note)
    if args.json:
        atomic_write_json(args.json, report)
    head = {k: report[k] for k in PROVENANCE_KEYS}
    print(f"device: {head['device']} | torch {head['torch']} | commit {head['commit']} | {report['date']}")
    print(format_table(report["results"], skip=PROVENANCE_KEYS + (() if args.wide else NARROW_SKIP)))
    return 0


def _run_memory(args: argparse.Namespace) -> int:
    """``kitsmsan bench memory``: :func:`kitsmsan.bench.memory.memory_report`, printed and saved."""
    import json
    from pathlib import Path

    from kitsmsan.bench import format_table
    from kitsmsan.bench.memory import memory_report
    from kitsmsan.errors import ConfigError
    from kitsmsan.utils.io import atomic_write_json

    paths = (
        args.measured
        if args.measured is not None
        else [p for p in [Path("book/data/bench_gpu.json")] if p.is_file()]
    )
    measured: list[dict] = []
    for path in paths:
        try:
            measured += json.loads(Path(path).read_text(encoding="utf-8")).get("results", [])
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{path}: not a readable bench report ({exc})") from None
    variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    report = memory_report(
        variants,
        precisions=precisions,
        fit=not args.counts_only,
        estimates=not args.counts_only,
        base_channels=args.base_channels,
        measured=measured,
        on_row=lambda r: print(
            f"  counted {r.get('kind', r['benchmark'])} "
            f"{r.get('variant', r.get('gpu'))} "
            f"{r.get('precision', '')}",
            flush=True,
        ),
    )
    if args.json:
        atomic_write_json(args.json, report)
    print(f"torch {report['torch']} | commit {report['commit']} | {report['counted_on']}")
    print(
        f"margin: {report['margin']['rule']} (fraction {report['margin']['fraction']}, "
        f"context {report['margin']['context_gib']} GiB); not counted: {report['not_counted']}"
    )
    skip = ("counted_bytes", "host_arrays_gib", "measured", "buffers_gib", "gradients_gib")
    print(format_table(report["results"], skip=skip))
    return 0


#: columns the terminal table leaves out unless ``--wide`` (they stay in the JSON)
NARROW_SKIP = (
    "params",
    "isolated",
    "s_per_it",
    "warmup_s",
    "run_iters",
    "mem_measure",
    "threads",
    "loss_finite",
    "warmup",
    "iters",
    "deep_supervision",
    "precision",
    "channels_last",
    "compile",
    "tflop_per_s",
    "load_avg",
    "write_nifti_s",
    "label_dtype",
    "pin_memory",
    "batches",
    "cudnn_benchmark",
    "tf32_conv",
    "tf32_matmul",
    "command",
    "cpu_cores",
    "torch_threads",
)


# ---------------------------------------------------------------------------- isolated measurements
#: oneDNN's instruction-set cap used when its default (AMX) bf16 kernels crash the process
ONEDNN_FALLBACK_ISA = "AVX512_CORE_BF16"


def time_step_isolated(variant: str, mode: str, dev, *, timeout_s: float = 1800.0, **kwargs) -> dict:
    """:func:`kitsmsan.bench.step.time_step` in a fresh Python process, so that a crash in a native
    kernel becomes an error row instead of ending the benchmark, and each measurement starts from a
    clean heap (the ``measure`` of :func:`kitsmsan.bench.step.bench_step`; on CPU by default).

    Seen here (torch 2.13.0+cpu, a Xeon with AMX): the oneDNN AMX kernel of the bf16 ``Conv3d``
    backward segfaults from 96 × 96 planes up. A crashed CPU measurement is therefore retried once
    with ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` (no AMX); the result then says so in ``onednn_isa``.

    Raises:
        RuntimeError: the measurement failed (twice, for a crash on CPU), with the reason.
    """
    import os

    import torch

    payload = {
        "variant": variant,
        "mode": mode,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        **kwargs,
    }
    try:
        return run_child(payload, timeout_s)
    except RuntimeError as exc:
        if dev.type != "cpu" or "crashed" not in str(exc) or os.environ.get("ONEDNN_MAX_CPU_ISA"):
            raise
        first = str(exc)
    try:
        res = run_child(payload, timeout_s, env={"ONEDNN_MAX_CPU_ISA": ONEDNN_FALLBACK_ISA})
    except RuntimeError as exc:
        raise RuntimeError(f"{first}; again with ONEDNN_MAX_CPU_ISA={ONEDNN_FALLBACK_ISA}: {exc}") from None
    crash = first.split("(", 1)[1].split(")", 1)[0] if "(" in first else "crash"
    res["onednn_isa"] = f"{ONEDNN_FALLBACK_ISA} (default: {crash})"
    return res


def run_child(
    payload: dict, timeout_s: float, env: dict[str, str] | None = None, argv: list[str] | None = None
) -> dict:
    """Run ``python -m kitsmsan.commands.bench`` (or ``argv``) with ``payload`` as JSON on stdin; its
    last stdout line is the JSON result.

    ``env`` adds environment variables for the child (default None: inherit unchanged).

    Raises:
        RuntimeError: the child crashed (a signal: e.g. a segfault inside a native kernel), failed,
            timed out or printed no result, with the reason.
    """
    import json
    import os
    import signal
    import subprocess
    import sys

    argv = argv or [sys.executable, "-m", "kitsmsan.commands.bench"]
    try:
        proc = subprocess.run(
            argv,
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, **env} if env else None,
        )
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


def _child_main() -> None:
    """An isolated step measurement: JSON arguments on stdin, the JSON result on the last stdout line."""
    import json
    import sys

    import torch

    from kitsmsan.bench import resolve_device
    from kitsmsan.bench.step import time_step

    kw = json.loads(sys.stdin.read())
    torch.set_num_threads(kw.pop("threads"))
    dev = resolve_device(kw.pop("device"))
    res = time_step(kw.pop("variant"), kw.pop("mode"), dev, **kw)
    print("\n" + json.dumps(res), flush=True)


if __name__ == "__main__":
    _child_main()
