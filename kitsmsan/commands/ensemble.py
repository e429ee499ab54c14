"""``kitsmsan ensemble``: combine several models' prediction folders (MSAN paper, §2.2 and §3.1).

Parses the arguments and calls :func:`kitsmsan.ensemble.ensemble_folders`, where the two combination
rules (the vote and probability averaging) are described.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ensemble",
        help="vote (or average) several models' predictions",
        description="Combine prediction folders of several models into one: per-voxel vote of the "
        "label files (the paper's ensemble) or the mean of saved probabilities.",
    )
    p.add_argument(
        "--pred",
        nargs="+",
        required=True,
        metavar="DIR",
        help="prediction folders, one per model (order matters only for --tie-break first)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--method",
        choices=("vote", "average"),
        default="vote",
        help="vote (default; from prediction_XXXXX.nii.gz) or average (from probs_XXXXX.npy "
        "written by 'kitsmsan predict --save-probs')",
    )
    p.add_argument(
        "--rule",
        choices=("nested", "plurality"),
        default="nested",
        help="vote rule: nested (default; kidney region where a strict majority says label > 0, "
        "tumour where a strict majority says 2) or plurality (most votes, ties by --tie-break)",
    )
    p.add_argument(
        "--tie-break",
        choices=("highest", "lowest", "first"),
        default=None,
        help="--rule plurality only: ties to the highest label (default: tumour > kidney > "
        "background), the lowest, or the first listed model's label",
    )
    p.add_argument(
        "--cases",
        default=None,
        help="case numbers, e.g. '180-189' (default: the predictions in the first folder)",
    )
    p.add_argument(
        "--postprocess",
        type=int,
        default=0,
        metavar="K",
        help="keep the K largest kidney-region components of the result (default 0 = off)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that is not this command's output (its files are kept, never deleted)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kitsmsan.data.kits19 import parse_case_range
    from kitsmsan.ensemble import ensemble_folders

    cases = None if args.cases is None else parse_case_range(args.cases)
    ensemble_folders(
        args.pred,
        args.out,
        method=args.method,
        rule=args.rule,
        tie_break=args.tie_break,
        cases=cases,
        postprocess=args.postprocess,
        overwrite=args.overwrite,
    )
    return 0
