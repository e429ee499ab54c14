"""``kitsmsan ensemble``: combine several models' predictions (MSAN paper, §2.2 and §3.1).

``--method vote`` (the paper's) reads ``prediction_XXXXX.nii.gz`` label files from each folder and takes
a per-voxel majority vote (:func:`kitsmsan.ensemble.majority_vote`). ``--method average`` needs the
probabilities, so each folder must have been written by ``kitsmsan predict --save-probs``
(``probs_XXXXX.npy``); it averages them and takes the argmax. Output files carry the header and
affine of the first folder's prediction, which ``kitsmsan predict`` copied from the source imaging;
folders whose affines disagree are refused.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ensemble",
        help="vote (or average) several models' predictions",
        description="Combine prediction folders of several models into one: per-voxel majority "
        "vote of the label files (the paper's ensemble) or the mean of saved probabilities.",
    )
    p.add_argument("--pred", nargs="+", required=True, metavar="DIR",
                   help="prediction folders, one per model (order matters only for --tie-break first)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--method", choices=("vote", "average"), default="vote",
                   help="vote (default; from prediction_XXXXX.nii.gz) or average (from probs_XXXXX.npy "
                   "written by 'kitsmsan predict --save-probs')")
    p.add_argument("--tie-break", choices=("highest", "lowest", "first"), default="highest",
                   help="vote ties: highest label (default: tumour > kidney > background), lowest, or "
                   "the first listed model's label")
    p.add_argument("--cases", default=None,
                   help="case numbers, e.g. '180-189' (default: the predictions in the first folder)")
    p.add_argument("--postprocess", type=int, default=0, metavar="K",
                   help="keep the K largest kidney-region components of the result (default 0 = off)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a folder that is not this command's output (its files are kept, never deleted)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kitsmsan.data.dataset import parse_case_range
    from kitsmsan.data.kits19 import case_id
    from kitsmsan.errors import ConfigError, DataError
    from kitsmsan.metrics import list_predictions, prediction_filename
    from kitsmsan.utils.io import atomic_write_json, claim_output_dir, distinct_dirs, new_output_dir, only_files

    if args.postprocess < 0:
        raise ConfigError(f"--postprocess {args.postprocess}: expected 0 (off) or K >= 1")
    dirs = distinct_dirs(args.pred)  # one folder given twice (pA ./pA/) is refused
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"{d}: prediction folder does not exist")
    out_dir = Path(args.out)
    if any(out_dir.resolve() == d.resolve() for d in dirs):
        raise ConfigError(f"--out {out_dir}: must differ from the input folders")
    recognize = only_files("prediction_*.nii.gz", "ensemble.json")
    claim_output_dir(out_dir, "predictions", command="ensemble", overwrite=args.overwrite, recognize=recognize,
                     create=False)
    if args.cases is None:
        ids = list_predictions(dirs[0])
    else:
        ids = [case_id(n) for n in parse_case_range(args.cases)]
    if not ids:
        raise DataError(f"{dirs[0]}: no prediction_XXXXX.nii.gz files")

    def probs_name(cid: str) -> str:
        return f"probs_{cid.split('_')[1]}.npy"

    needed = [prediction_filename] + ([probs_name] if args.method == "average" else [])
    missing = [str(d / f(c)) for c in ids for d in dirs for f in needed if not (d / f(c)).is_file()]
    if missing:
        hint = " (average needs 'kitsmsan predict --save-probs')" if args.method == "average" else ""
        raise DataError(f"{len(missing)} input files missing{hint}: {', '.join(missing)}")

    with new_output_dir(out_dir, "predictions", command="ensemble", overwrite=args.overwrite,
                        recognize=recognize):  # a failure before any file is written leaves no folder
        _combine(args, ids, dirs, out_dir, probs_name)
    try:
        atomic_write_json(out_dir / "ensemble.json", {
            "inputs": [str(d) for d in dirs], "method": args.method, "tie_break": args.tie_break,
            "cases": ids, "postprocess": args.postprocess,
        })
    except OSError as exc:
        raise DataError(f"{out_dir / 'ensemble.json'}: cannot write ({exc.strerror or exc}); "
                        "the combined predictions themselves are complete") from exc
    return 0


def _load_probs(path):
    """Read a ``probs_XXXXX.npy`` as a read-only memory map; plain float arrays only.

    Raises:
        DataError: unreadable file, or one holding pickled Python objects (refused, never
            unpickled: ``allow_pickle=False``), naming the file.
    """
    import numpy as np

    from kitsmsan.errors import DataError

    try:
        probs = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable probability array (a .npy of floats written by "
                        f"'kitsmsan predict --save-probs'; pickled objects are refused): {exc}") from None
    if not isinstance(probs, np.ndarray) or probs.dtype.kind != "f" or probs.ndim != 4:
        raise DataError(f"{path}: expected a float (3, Z, Y, X) array, got "
                        f"{getattr(probs, 'dtype', type(probs).__name__)} {getattr(probs, 'shape', '')}")
    if not np.isfinite(probs).all():  # named here, not as a list position later
        raise DataError(f"{path}: holds NaN or infinite probabilities")
    return probs


def _combine(args, ids, dirs, out_dir, probs_name) -> None:
    """Vote (or average) each case of ``ids`` over ``dirs`` and write it to ``out_dir``."""
    import nibabel as nib
    import numpy as np

    from kitsmsan.data.kits19 import Case, load_label, save_prediction
    from kitsmsan.ensemble import argmax_label, average_probabilities, majority_vote
    from kitsmsan.errors import DataError
    from kitsmsan.metrics import prediction_filename
    from kitsmsan.utils.io import safe_join

    if args.postprocess:
        from kitsmsan.postprocess import keep_largest_components
    for cid in ids:
        first = dirs[0] / prediction_filename(cid)
        labels, affines = [], []
        for d in dirs:
            lab, _, aff = load_label(d / prediction_filename(cid))
            labels.append(lab)
            affines.append(aff)
        for d, lab, aff in zip(dirs, labels, affines):
            if lab.shape != labels[0].shape or not np.allclose(aff, affines[0], atol=1e-4):
                raise DataError(f"{d / prediction_filename(cid)}: shape/affine differs from {first}")
        if args.method == "vote":
            pred = majority_vote(labels, tie_break=args.tie_break)
        else:
            probs = [_load_probs(d / probs_name(cid)) for d in dirs]
            for d, pr in zip(dirs, probs):
                if pr.shape[1:] != labels[0].shape:
                    raise DataError(f"{d / probs_name(cid)}: shape {pr.shape} does not match "
                                    f"the prediction {labels[0].shape}")
            pred = argmax_label(average_probabilities([np.asarray(pr, np.float32) for pr in probs]))
        if args.postprocess:
            pred = keep_largest_components(pred, args.postprocess)
        img = nib.load(str(first))
        reference = Case(cid, None, labels[0], tuple(float(s) for s in img.header.get_zooms()[:3]),
                         affines[0], first.parent, img.header)
        target = safe_join(out_dir, prediction_filename(cid))
        try:
            save_prediction(pred, reference, target)
        except OSError as exc:  # disk full, no permission: name the file, no traceback
            raise DataError(f"{target}: cannot write ({exc.strerror or exc}); the files written "
                            f"before it are complete, this one was not written") from exc
        print(f"{cid}: {args.method} of {len(dirs)} -> {prediction_filename(cid)}")
