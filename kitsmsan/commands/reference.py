"""``kitsmsan reference``: the CPU reference run the book's results pages compare on.

Examples::

    kitsmsan download --root kits19/data --labels-only --cases 0-59,160-189
    kitsmsan reference --labels kits19/data                     # about an hour on 2 CPU cores
    kitsmsan reference --labels kits19/data --check             # is the committed record current?
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``reference`` parser."""
    p = subparsers.add_parser(
        "reference",
        help="the CPU reference run: five networks x three seeds on real-anatomy phantoms",
        description="Train the five networks with seeds 0, 1, 2 (preset cpu-reference) on phantoms "
        "shaped by the real KiTS19 segmentations, two single-thread runs at a time; predict, vote per "
        "seed and score the 30 test cases. Writes the result files (no checkpoints) to --record. "
        "Re-running skips finished runs and resumes unfinished ones.",
    )
    p.add_argument(
        "--labels",
        metavar="DIR",
        help="KiTS19 segmentations, e.g. from 'kitsmsan download --labels-only' (default: $KITSMSAN_LABELS)",
    )
    p.add_argument(
        "--out",
        default="runs/reference",
        metavar="DIR",
        help="working folder: data, cache, runs, predictions (default: runs/reference)",
    )
    p.add_argument(
        "--record",
        default="book/data/reference",
        metavar="DIR",
        help="where the result files go (default: book/data/reference, the book's copy)",
    )
    p.add_argument("--jobs", type=int, default=2, help="runs trained at a time, one thread each (default 2)")
    p.add_argument(
        "--check",
        action="store_true",
        help="train nothing: compare the record in --record with what the preset gives today",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into folders that are not this command's (their files are kept, never deleted)",
    )
    p.add_argument("--no-progress", action="store_true", help="no line per finished run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run (or check) the reference; returns 0, or 1 when ``--check`` finds a stale record."""
    from kitsmsan.reference import check_record, load_reference, run_reference

    if args.check:
        problems = check_record(args.record)
        for line in problems:
            print(f"{args.record}: {line}")
        if not problems:
            print(f"{args.record}: current ({load_reference(args.record).describe()})")
        return 1 if problems else 0
    paths = run_reference(
        args.out,
        labels=args.labels,
        record=args.record,
        jobs=args.jobs,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0
