"""``kitsmsan predict``: label whole KiTS19 volumes with trained models (MSAN paper, §3.1).

Writes ``OUT/prediction_XXXXX.nii.gz`` (uint8, the source case's header and affine), optionally
``OUT/probs_XXXXX.npy`` (float16 ``(3, Z, Y, X)``, for ``kitsmsan ensemble --method average``), and
``OUT/predict.json`` (runs, checkpoints, settings, cases, seconds per case).
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
    p.add_argument("--run", nargs="+", required=True, metavar="RUN",
                   help="run folder(s) or checkpoint file(s); several runs are averaged "
                   "(probabilities) — for the paper's vote, predict each run into its own folder "
                   "and use 'kitsmsan ensemble'")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="which checkpoint of a run folder (default: best, falling back to last)")
    p.add_argument("--data", required=True, metavar="ROOT", help="KiTS19 data folder (case_XXXXX/)")
    p.add_argument("--cases", default=None,
                   help="case numbers, e.g. '180-189' (default: every case with imaging in ROOT)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--stride", type=int, default=2, help="z step between 4-slice windows (default 2)")
    p.add_argument("--num-slices", type=int, default=4, help="window depth (default 4, paper §3.1)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", default="auto", help="auto (default: on for CUDA), on, off, bf16, fp16")
    p.add_argument("--postprocess", type=int, default=0, metavar="K",
                   help="keep the K largest kidney-region components (default 0 = off: raw "
                   "predictions, post-processed at evaluation time; 2 = one per kidney, the "
                   "pipeline's choice; 1 = the paper's literal step)")
    p.add_argument("--save-probs", action="store_true",
                   help="also write probs_XXXXX.npy (float16, 3 x Z x Y x X; ~470 MB for 512x512x300)")
    p.add_argument("--progress", action="store_true", help="show a progress bar per case")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a folder that is not this command's output (its files are kept, never deleted)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kitsmsan.data.dataset import parse_case_range
    from kitsmsan.data.kits19 import case_id, list_cases
    from kitsmsan.errors import ConfigError, DataError
    from kitsmsan.inference import load_model, resolve_device
    from kitsmsan.utils.io import atomic_write_json, claim_output_dir, new_output_dir, only_files

    if args.postprocess < 0:
        raise ConfigError(f"--postprocess {args.postprocess}: expected 0 (off) or K >= 1")
    data_root, out_dir = Path(args.data), Path(args.out)
    available = list_cases(data_root)
    ids = available if args.cases is None else [case_id(n) for n in parse_case_range(args.cases)]
    missing = [c for c in ids if c not in available]
    if missing:
        raise DataError(f"{data_root}: no imaging for {', '.join(missing)}")
    recognize = only_files("prediction_*.nii.gz", "probs_*.npy", "predict.json")
    claim_output_dir(out_dir, "predictions", command="predict", overwrite=args.overwrite, recognize=recognize,
                     create=False)  # refused before the models are loaded

    import torch

    device = resolve_device([torch.nn.Identity()], args.device)
    models = [load_model(r, device, checkpoint=args.checkpoint) for r in args.run]
    timings = {}
    with new_output_dir(out_dir, "predictions", command="predict", overwrite=args.overwrite,
                        recognize=recognize):  # a failure before any file is written leaves no folder
        _predict_cases(args, ids, models, device, data_root, out_dir, timings)
    try:
        atomic_write_json(out_dir / "predict.json", {
            "runs": [str(r) for r in args.run], "checkpoint": args.checkpoint, "data": str(data_root),
            "cases": ids, "num_slices": args.num_slices, "stride": args.stride,
            "batch_size": args.batch_size, "device": str(device), "amp": args.amp,
            "postprocess": args.postprocess, "save_probs": args.save_probs, "seconds": timings,
        })
    except OSError as exc:
        raise DataError(f"{out_dir / 'predict.json'}: cannot write ({exc.strerror or exc}); "
                        "the predictions themselves are complete") from exc
    return 0


def _predict_cases(args, ids, models, device, data_root, out_dir, timings) -> None:
    """Segment each case of ``ids`` and write its prediction (and probabilities) atomically.

    A case that fails (bad imaging) raises; the cases written before it stay valid.
    """
    import time

    import numpy as np

    from kitsmsan.data.kits19 import load_case, save_prediction
    from kitsmsan.errors import DataError
    from kitsmsan.inference import predict_case
    from kitsmsan.metrics import prediction_filename
    from kitsmsan.utils.io import atomic_write, safe_join

    if args.postprocess:
        from kitsmsan.postprocess import keep_largest_components
    for cid in ids:
        t0 = time.perf_counter()
        case = load_case(data_root / cid, load_label=False)
        probs = predict_case(models, case.image, num_slices=args.num_slices, stride=args.stride,
                             batch_size=args.batch_size, device=device, amp=args.amp,
                             return_probs=True, progress=args.progress)
        pred = np.argmax(probs, axis=0).astype(np.uint8)
        if args.postprocess:
            pred = keep_largest_components(pred, args.postprocess)
        target = safe_join(out_dir, prediction_filename(cid))
        try:
            save_prediction(pred, case, target)
            if args.save_probs:
                target = safe_join(out_dir, f"probs_{cid.split('_')[1]}.npy")
                with atomic_write(target) as fh:
                    np.save(fh, probs.astype(np.float16))
        except OSError as exc:  # disk full, no permission: name the file, no traceback
            raise DataError(f"{target}: cannot write ({exc.strerror or exc}); the files written "
                            f"before it are complete, this one was not written") from exc
        timings[cid] = round(time.perf_counter() - t0, 3)
        print(f"{cid}: {case.image.shape} -> {prediction_filename(cid)} ({timings[cid]:.1f} s)")
