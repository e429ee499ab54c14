"""``kitsmsan evaluate``: KiTS19 Dice per case and the paper's Table 1 summary (MSAN paper, Table 1).

Scores a folder of ``prediction_XXXXX.nii.gz`` against the ground truth twice — as predicted and after
keeping the K largest kidney-region components (default K = 2, one component per kidney, the
pipeline's choice — the paper's literal K = 1 deletes a whole kidney in 187 of 190 real KiTS19 cases;
``--postprocess 1`` gives the literal reading, ``--postprocess 0`` skips the second pass) — and
writes ``per_case.csv``, ``summary.csv``, ``summary.json`` and ``summary.md`` to ``--out``.

Missing predictions: when ``--cases`` lists a case that has no prediction file the command stops with
an error naming every missing file and writes nothing (exit code 2), because a mean over fewer cases
would look like a Table 1 number but is not one. ``--allow-missing`` instead writes the tables with a
``status = missing`` row per absent case (excluded from the means, counted in ``n_missing`` and listed
in the summary) and still exits with code 1.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="Dice per case and Table 1 summary",
        description="Compute the official KiTS19 kidney and tumour Dice of a prediction folder, per "
        "case and averaged as in the paper's Table 1, with and without the connected-component "
        "post-processing.",
    )
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of prediction_XXXXX.nii.gz")
    p.add_argument(
        "--data", required=True, metavar="ROOT", help="KiTS19 data folder with case_XXXXX/segmentation.nii.gz"
    )
    p.add_argument(
        "--cases",
        default=None,
        help="case numbers, e.g. '180-189' (default: every prediction file in --pred)",
    )
    p.add_argument(
        "--postprocess",
        type=int,
        default=2,
        metavar="K",
        help="also score after keeping the K largest kidney-region components "
        "(default 2, one per kidney; 1 = the paper's literal step, which deletes the smaller "
        "kidney; 0 = raw predictions only)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the tables")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="write the tables even if predictions are missing (they are listed; exit 1)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that is not this command's output (its files are kept, never deleted)",
    )
    p.set_defaults(func=run)


def _check_grids(pred_dir, data_root, case_ids) -> None:
    """Each prediction present must lie on its ground truth's grid (headers only)."""
    from kitsmsan.data.kits19 import SEGMENTATION_FILE, check_prediction_grid, normalize_case_id
    from kitsmsan.metrics import list_predictions, prediction_filename

    ids = list_predictions(pred_dir) if case_ids is None else [normalize_case_id(c) for c in case_ids]
    for cid in ids:
        pred, seg = pred_dir / prediction_filename(cid), data_root / cid / SEGMENTATION_FILE
        if pred.is_file() and seg.is_file():
            check_prediction_grid(pred, seg)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    import pandas as pd

    from kitsmsan.data.kits19 import parse_case_range
    from kitsmsan.errors import ConfigError
    from kitsmsan.metrics import evaluate_folder, summarize, table1_markdown, write_results
    from kitsmsan.utils.io import claim_output_dir, new_output_dir, only_files
    from kitsmsan.utils.provenance import git_commit

    if args.postprocess < 0:
        raise ConfigError(f"--postprocess {args.postprocess}: expected 0 (off) or K >= 1")
    case_ids = None if args.cases is None else parse_case_range(args.cases)
    claim = dict(
        command="evaluate",
        overwrite=args.overwrite,
        recognize=only_files("per_case.csv", "summary.csv", "summary.json", "summary.md"),
    )
    claim_output_dir(args.out, "evaluation", create=False, **claim)  # refused before scoring
    _check_grids(Path(args.pred), Path(args.data), case_ids)  # same grid as the ground truth, or refused
    passes = [0] + ([args.postprocess] if args.postprocess else [])
    tables = [
        evaluate_folder(args.pred, args.data, case_ids, postprocess=k, allow_missing=args.allow_missing)
        for k in passes
    ]
    per_case = pd.concat(tables, ignore_index=True)
    summary = summarize(per_case, by="postprocess")
    summary.index = pd.Index(
        ["none" if k == 0 else f"largest {k} component{'s' if k > 1 else ''}" for k in summary.index],
        name="post-processing",
    )
    provenance = {
        "predictions": str(Path(args.pred)),
        "data": str(Path(args.data)),
        "cases": int(tables[0].shape[0]),
        "commit": git_commit(),
    }
    with new_output_dir(args.out, "evaluation", **claim):  # a failed write leaves no new folder
        paths = write_results(args.out, per_case, summary, provenance=provenance)
    print(table1_markdown(summary), end="")
    missing = per_case.loc[per_case["status"] != "ok", "case_id"].drop_duplicates().tolist()
    print(f"wrote {paths['per_case'].parent}/(per_case.csv, summary.csv, summary.json, summary.md)")
    if missing:
        print(
            f"kitsmsan evaluate: {len(missing)} predictions missing, excluded from the means: "
            f"{', '.join(missing)}",
            file=sys.stderr,
        )
        return 1
    return 0
