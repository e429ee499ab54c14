"""``kitsmsan reproduce``: the paper's whole pipeline and its Table 1 analogue in one command.

Examples::

    kitsmsan reproduce --preset smoke                      # CPU, minutes, phantoms
    kitsmsan reproduce --preset smoke --labels kits19/data # phantoms shaped like the real anatomy
    kitsmsan reproduce --preset paper --data kits19/data --out repro/   # GPU; re-run to resume
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``reproduce`` parser."""
    p = subparsers.add_parser(
        "reproduce",
        help="data -> cache -> train the five networks -> predict -> post-process -> vote -> Table 1",
        description="Reproduce the paper's pipeline (MSAN paper, Table 1). --preset smoke runs on CPU "
        "phantoms in minutes (label-conditioned on the real KiTS19 segmentations when --labels or "
        "KITSMSAN_LABELS is given); --preset paper --data KITS19_ROOT is the full GPU run. Re-running "
        "skips finished runs and resumes unfinished ones. Writes OUT/table1.{md,csv,json}.",
    )
    p.add_argument("--preset", default="smoke", choices=("smoke", "paper"), help="default: smoke")
    p.add_argument("--out", default="reproduce", metavar="DIR", help="output folder (default: reproduce)")
    p.add_argument("--data", metavar="ROOT", help="KiTS19-layout data folder (required for --preset paper)")
    p.add_argument(
        "--labels",
        metavar="DIR",
        help="KiTS19 segmentations for label-conditioned phantoms (default: $KITSMSAN_LABELS)",
    )
    p.add_argument(
        "--variants",
        default=None,
        metavar="LIST",
        help="comma-separated subset of unet3d,msan_v1,msan_v1_ds,msan_v2,msan_v2_ds (default: all)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="training setting for every run, e.g. --set num_iters=50 (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that is not a reproduction (its files are kept, never deleted)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``reproduce`` and print the table; returns 0."""
    from kitsmsan.reproduce import reproduce
    from kitsmsan.train.config import parse_overrides

    variants = (
        None if args.variants is None else tuple(v.strip() for v in args.variants.split(",") if v.strip())
    )
    paths = reproduce(
        args.preset,
        args.out,
        data=args.data,
        labels=args.labels,
        variants=variants,
        overrides=parse_overrides(args.overrides),
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print(paths["table_md"].read_text(encoding="utf-8"))
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0
