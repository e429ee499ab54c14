"""``kitsmsan bench``: speed benchmarks (data cache, training step, inference, smoke run).

Examples::

    kitsmsan bench all --json book/data/bench_cpu.json          # CPU defaults, minutes
    kitsmsan bench data --size 128 --slices 40 --windows 200      # a quick data run
    kitsmsan bench step --device cuda --json step.json            # the paper's size on a GPU
    kitsmsan bench step --variants unet3d --modes fp32,amp --iters 2
    kitsmsan bench smoke                                          # times reproduce --preset smoke
    kitsmsan bench merge --inputs a.json b.json --json all.json   # one report from several

Size options apply to the benchmarks that have them; ``None`` means the benchmark's per-device
default (see :mod:`kitsmsan.bench`). With ``--json`` the report is rewritten after every row, so a
run stopped half-way keeps what it measured.
"""

from __future__ import annotations

import argparse

CHOICES = ("all", "data", "step", "inference", "smoke", "merge")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 0,1,2") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` parser."""
    p = subparsers.add_parser(
        "bench", help="speed benchmarks (data, step, inference, smoke, all)",
        description="Measure the pipeline's speed on this machine and print a table (issue #6). "
        "'all' runs data, step, inference and smoke (unless --skip-smoke).")
    p.add_argument("which", choices=CHOICES, help="which benchmark; 'merge' joins --inputs reports")
    p.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON (book/data/bench_*.json)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    g = p.add_argument_group("sizes (default: per device, see kitsmsan.bench)")
    g.add_argument("--size", type=int, default=None, help="in-plane size H = W (data default 512)")
    g.add_argument("--slices", type=int, default=None,
                   help="slices of the data / inference test case (default 300; inference on CPU 32)")
    g.add_argument("--base-channels", type=int, default=None, help="network width (step / inference)")
    g.add_argument("--batch-size", type=int, default=2, help="windows per step / loader batch (default 2)")
    g.add_argument("--iters", type=int, default=None, help="timed step iterations (default cuda 20, cpu 3)")
    g.add_argument("--warmup", type=int, default=None, help="untimed step iterations (default cuda 5, cpu 1)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads for step / inference")
    s = p.add_argument_group("step")
    s.add_argument("--variants", default=None, help="comma-separated networks (default: all five)")
    s.add_argument("--modes", default=None, help="comma-separated of fp32,cl,amp,amp+cl,amp+cl+compile (default: cuda "
                   "fp32,amp,amp+cl,amp+cl+compile; cpu fp32,cl,amp,amp+cl)")
    s.add_argument("--compile", action="store_true", help="on CPU, add the torch.compile mode")
    s.add_argument("--compile-variants", default=None, help="networks that get the compile mode (default: all)")
    s.add_argument("--isolate", default=None, action=argparse.BooleanOptionalAction,
                   help="measure each network/mode in a fresh process (default: on for CPU, off for CUDA)")
    d = p.add_argument_group("data")
    d.add_argument("--windows", type=int, default=2000, help="cache windows timed (default 2000)")
    d.add_argument("--nifti-windows", type=int, default=5, help=".nii.gz windows timed (default 5)")
    d.add_argument("--no-nifti", action="store_true", help="skip the .nii.gz path")
    d.add_argument("--workers", type=_int_list, default=[0, 1, 2], help="DataLoader workers (default 0,1,2)")
    d.add_argument("--loader-batches", type=int, default=50, help="batches timed per worker count (default 50)")
    d.add_argument("--label-dtype", default="uint8", choices=("int64", "int16", "uint8"),
                   help="label dtype of the loader rows (default uint8, what training uses)")
    d.add_argument("--source", default="phantom", choices=("phantom", "synthetic"),
                   help="content of the test case (default phantom)")
    m = p.add_argument_group("smoke / merge")
    m.add_argument("--skip-smoke", action="store_true", help="'all' without the smoke run (it takes minutes)")
    m.add_argument("--smoke-out", default=None, help="keep the reproduction in this new folder")
    m.add_argument("--smoke-timeout", type=float, default=3600.0, help="seconds (default 3600)")
    m.add_argument("--inputs", nargs="+", default=[], metavar="JSON", help="reports to merge")
    p.add_argument("--note", default=None, help="a sentence on the run's conditions, kept in the JSON header")
    p.add_argument("--wide", action="store_true", help="print every column (the JSON always has them)")
    p.set_defaults(func=run)


def _kwargs(name: str, args: argparse.Namespace) -> dict:
    if name == "data":
        kw = dict(num_windows=args.windows, num_nifti_windows=args.nifti_windows, workers=args.workers,
                  loader_batches=args.loader_batches, batch_size=args.batch_size,
                  label_dtype=args.label_dtype, source=args.source, nifti=not args.no_nifti, device=args.device)
        if args.size is not None:
            kw["size"] = args.size
        if args.slices is not None:
            kw["num_slices"] = args.slices
        return kw
    if name == "step":
        return dict(variants=args.variants, modes=args.modes, compile=args.compile,
                    compile_variants=args.compile_variants, size=args.size, batch_size=args.batch_size,
                    base_channels=args.base_channels, iters=args.iters, warmup=args.warmup,
                    device=args.device, threads=args.threads, isolate=args.isolate)
    if name == "inference":
        return dict(size=args.size, num_slices=args.slices, base_channels=args.base_channels,
                    device=args.device, threads=args.threads)
    return dict(run=not args.skip_smoke, out=args.smoke_out, timeout_s=args.smoke_timeout)


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark(s), print a table, optionally write the JSON report; returns 0."""
    from kitsmsan.bench import BENCHMARKS, PROVENANCE_KEYS, format_table, make_report, merge_reports
    from kitsmsan.errors import ConfigError
    from kitsmsan.utils.io import atomic_write_json

    if args.which == "merge":
        if not args.inputs or not args.json:
            raise ConfigError("bench merge: give --inputs A.json B.json ... and --json OUT")
        report = merge_reports(args.inputs, args.device, args.note)
        atomic_write_json(args.json, report)
        print(format_table(report["results"], skip=PROVENANCE_KEYS + (() if args.wide else NARROW_SKIP)))
        return 0
    if args.inputs:
        raise ConfigError("--inputs: only for 'bench merge'")
    names = [n for n in BENCHMARKS if n != "merge"] if args.which == "all" else [args.which]
    rows: list[dict] = []

    def save(_row: dict | None = None) -> None:
        if args.json:
            atomic_write_json(args.json, make_report(rows, args.device, args.note))

    for name in names:
        before = len(rows)
        new = BENCHMARKS[name](verbose=False, on_row=lambda r: (rows.append(r), save()), **_kwargs(name, args))
        # functions emit through on_row; rows they return without emitting are added here
        rows += [r for r in new if not any(r is x for x in rows[before:])]
    report = make_report(rows, args.device, args.note)
    if args.json:
        atomic_write_json(args.json, report)
    head = {k: report[k] for k in PROVENANCE_KEYS}
    print(f"device: {head['device']} | torch {head['torch']} | commit {head['commit']} | {report['date']}")
    print(format_table(report["results"], skip=PROVENANCE_KEYS + (() if args.wide else NARROW_SKIP)))
    return 0


#: columns the terminal table leaves out unless ``--wide`` (they stay in the JSON)
NARROW_SKIP = ("params", "isolated", "s_per_it", "warmup_s", "run_iters", "mem_measure", "threads",
               "loss_finite", "warmup", "iters", "deep_supervision", "precision", "channels_last", "compile",
               "tflop_per_s", "load_avg", "write_nifti_s", "label_dtype", "pin_memory", "batches",
               "cudnn_benchmark", "tf32_conv", "tf32_matmul", "command", "cpu_cores", "torch_threads")
