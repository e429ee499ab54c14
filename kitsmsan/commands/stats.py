"""``kitsmsan stats``: per-case statistics or the post-processing ceiling of a data folder.

Examples::

    kitsmsan stats --data ../shared/kits19-labels --labels-only --csv kits19_label_stats.csv
    kitsmsan stats --data ../shared/kits19-labels --ceiling --csv postprocess_ceiling.csv

See :mod:`kitsmsan.data.stats`. ``--ceiling`` reads labels only and reports what keeping the
largest connected component (k = 1, MSAN paper §3.1) or the two largest (k = 2) costs a perfect
prediction. Tables derived from real KiTS19 labels carry the KiTS19 attribution (CC BY-NC-SA 4.0)
as a ``#`` comment line.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``stats`` parser."""
    p = subparsers.add_parser(
        "stats",
        help="per-case label statistics, or the post-processing Dice ceiling",
        description="Statistics of a KiTS19-layout folder (real labels, phantoms or imaging).",
    )
    p.add_argument("--data", required=True, metavar="ROOT", help="KiTS19 data folder")
    p.add_argument(
        "--labels-only", action="store_true", help="read segmentations only (cases without imaging included)"
    )
    p.add_argument(
        "--ceiling",
        action="store_true",
        help="report the Dice that keep_largest_components k=1 / k=2 costs the ground truth",
    )
    p.add_argument("--csv", default=None, metavar="OUT", help="write the per-case table as CSV")
    p.add_argument("--cases-range", default=None, metavar="RANGE", help="e.g. 0-189 (default all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output file this command did not write (the old one is kept beside it)",
    )
    p.set_defaults(func=run)


def _source_comment(root) -> str:
    """The attribution line: synthetic phantoms, or KiTS19-derived data."""
    import json
    from pathlib import Path

    meta = Path(root) / "phantoms.json"
    if meta.is_file():
        try:
            kind = json.loads(meta.read_text()).get("kind")
        except (OSError, ValueError):
            kind = None
        if kind == "pure":
            return "Synthetic KiTS-like phantoms (kitsmsan.data.phantom); no KiTS19 data"
    from kitsmsan.data.stats import KITS19_ATTRIBUTION

    return KITS19_ATTRIBUTION


def run(args: argparse.Namespace) -> int:
    """Compute the table, print a summary, optionally write CSV. Returns 0."""
    from kitsmsan.data import stats
    from kitsmsan.utils.io import claim_output_file

    def ours(path) -> bool:  # a table this command wrote starts with its comment line
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline().startswith("# kitsmsan stats:")

    if args.csv:
        claim_output_file(args.csv, command="stats", overwrite=args.overwrite, recognize=ours, create=False)
    ids = None
    if args.cases_range is not None:
        from kitsmsan.data.kits19 import parse_case_range

        ids = parse_case_range(args.cases_range)
    progress = not args.no_progress
    if args.ceiling:
        table = stats.ceiling_table(args.data, case_ids=ids, progress=progress)
        summary = stats.ceiling_summary(table)
        print(f"post-processing ceiling over {summary['cases']} cases (perfect prediction):")
        for k in (1, 2):
            print(
                f"  k={k}: kidney {summary[f'kidney_dice_k{k}']:.4f}  tumor "
                f"{summary[f'tumor_dice_k{k}']:.4f}  composite {summary[f'composite_k{k}']:.4f}  "
                f"whole kidney deleted in {summary[f'kidney_deleted_k{k}']} cases"
            )
        what = "keep_largest_components ceiling (Dice of keep_largest_components(gt, k) vs gt)"
    else:
        table = stats.dataset_statistics(
            args.data, labels_only=args.labels_only, case_ids=ids, progress=progress
        )
        print(f"statistics of {len(table)} cases (medians):")
        for key, value in stats.summarize_statistics(table).items():
            print(f"  {key}: {value:.4g}")
        what = "per-case label statistics (volumes in ml, 26-connected components)"
    if args.csv:
        claim_output_file(args.csv, command="stats", overwrite=args.overwrite, recognize=ours)
        try:
            stats.write_table(
                table, args.csv, comment=[f"kitsmsan stats: {what}", _source_comment(args.data)]
            )
        except OSError as exc:  # disk full, no permission: name the file, no traceback
            from kitsmsan.errors import DataError

            raise DataError(
                f"{args.csv}: cannot write ({exc.strerror or exc}); the file was not written"
            ) from exc
        print(f"wrote {args.csv}")
    return 0
