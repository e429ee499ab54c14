"""``kitsmsan bench``: speed benchmarks (issue #2 data cache; issue #6 step, inference, smoke).

Example::

    kitsmsan bench data --json bench-data.json
"""

from __future__ import annotations

import argparse

CHOICES = ("data", "step", "inference", "smoke", "all")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` parser."""
    p = subparsers.add_parser("bench", help="speed benchmarks (data, step, inference, smoke, all)")
    p.add_argument("which", choices=CHOICES, help="which benchmark; 'all' runs every implemented one")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark(s), print a table, optionally write JSON; returns 0."""
    from kitsmsan.bench import BENCHMARKS, format_table
    from kitsmsan.errors import ConfigError
    from kitsmsan.utils.io import atomic_write_json

    names = list(BENCHMARKS) if args.which == "all" else [args.which]
    results, skipped = [], []
    for name in names:
        try:
            results.append(BENCHMARKS[name](verbose=False))
        except ConfigError as exc:
            if args.which != "all" or "not implemented" not in str(exc):
                raise
            skipped.append(name)
    print(format_table(results))
    for name in skipped:
        print(f"bench {name}: not implemented yet (skipped)")
    if args.json:
        atomic_write_json(args.json, results)
    return 0
