"""``kitsmsan predict``: label whole KiTS19 volumes with trained models (MSAN paper, §3.1).

Parses the arguments and calls :func:`kitsmsan.predict.predict_folder`, which describes the output
folder.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment test cases with trained model(s)",
        description="Segment KiTS19 cases with one trained run (or the probability average of "
        "several) by sliding 4-slice windows over z, and write prediction_XXXXX.nii.gz files "
        "aligned with the source imaging.",
    )
    p.add_argument(
        "--run",
        nargs="+",
        required=True,
        metavar="RUN",
        help="run folder(s) or checkpoint file(s); several runs are averaged "
        "(probabilities) — for the paper's vote, predict each run into its own folder "
        "and use 'kitsmsan ensemble'",
    )
    p.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="which checkpoint of a run folder (default: best — chosen on the validation cases, "
        "which come from the training range — falling back to last)",
    )
    p.add_argument("--data", required=True, metavar="ROOT", help="KiTS19 data folder (case_XXXXX/)")
    p.add_argument(
        "--cases",
        default=None,
        help="case numbers, e.g. '180-189' (default: every case with imaging in ROOT)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--stride", type=int, default=2, help="z step between 4-slice windows (default 2)")
    p.add_argument("--num-slices", type=int, default=4, help="window depth (default 4, paper §3.1)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", default="auto", help="auto (default: on for CUDA), on, off, bf16, fp16")
    p.add_argument(
        "--postprocess",
        type=int,
        default=0,
        metavar="K",
        help="keep the K largest kidney-region components (default 0 = off: raw "
        "predictions, post-processed at evaluation time; 2 = one per kidney, the "
        "pipeline's choice; 1 = the paper's literal step)",
    )
    p.add_argument(
        "--save-probs",
        action="store_true",
        help="also write probs_XXXXX.npy (float16, 3 x Z x Y x X; ~470 MB for 512x512x300)",
    )
    p.add_argument("--progress", action="store_true", help="show a progress bar per case")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that is not this command's output (its files are kept, never deleted)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kitsmsan.data.kits19 import parse_case_range
    from kitsmsan.predict import predict_folder

    cases = None if args.cases is None else parse_case_range(args.cases)
    predict_folder(
        args.run,
        args.data,
        args.out,
        cases=cases,
        checkpoint=args.checkpoint,
        num_slices=args.num_slices,
        stride=args.stride,
        batch_size=args.batch_size,
        device=args.device,
        amp=args.amp,
        postprocess=args.postprocess,
        save_probs=args.save_probs,
        overwrite=args.overwrite,
        progress=args.progress,
    )
    return 0
