"""``kitsmsan prepare``: convert KiTS19 cases into the memory-mappable training cache.

Example::

    kitsmsan prepare --data kits19/data --cache cache/ --cases 0-179
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` parser."""
    p = subparsers.add_parser(
        "prepare",
        help="convert KiTS19 cases into the uncompressed training cache (incremental, atomic)",
        description="Clip each case to the HU window (-200, 500), store image int16 + label uint8 "
        "as memory-mappable .npy with an index of kidney/tumour slices. Up-to-date cases are skipped.",
    )
    p.add_argument("--data", required=True, metavar="ROOT", help="KiTS19 data folder (case_XXXXX/...)")
    p.add_argument("--cache", required=True, metavar="DIR", help="output cache folder")
    p.add_argument(
        "--cases",
        default=None,
        metavar="RANGE",
        help="case range like 0-179,185 (default: every case with imaging)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that is not a kitsmsan cache (its files are kept, never deleted)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``prepare``; returns 0 (errors raise :class:`kitsmsan.errors.DataError`)."""
    from kitsmsan.data.kits19 import parse_case_range
    from kitsmsan.data.preprocess import prepare_cache

    case_ids = None if args.cases is None else parse_case_range(args.cases)
    index = prepare_cache(
        args.data, args.cache, case_ids=case_ids, progress=not args.no_progress, overwrite=args.overwrite
    )
    n_slices = sum(m["shape"][0] for m in index["cases"].values())
    print(f"cache {args.cache}: {len(index['cases'])} cases, {n_slices} slices")
    return 0
