"""The prediction stage: trained runs in, a folder of ``prediction_XXXXX.nii.gz`` out (MSAN paper, §3.1).

:func:`predict_folder` is what ``kitsmsan predict`` and :func:`kitsmsan.reproduce.reproduce` call.
With one run it writes that network's raw labels (argmax of its sliding-window probabilities,
:func:`kitsmsan.inference.predict_case`). With several runs it writes their **probability average**
(the combination rule :func:`kitsmsan.ensemble.average_probabilities` describes; the averaging happens
window by window inside :func:`~kitsmsan.inference.predict_case`). The paper's **vote** is a separate
stage, :func:`kitsmsan.ensemble.ensemble_folders`, over one prediction folder per network.

Output folder::

    prediction_XXXXX.nii.gz   uint8 labels with the source case's header and affine
    probs_XXXXX.npy           float16 (3, Z, Y, X) probabilities, with save_probs=True
    predict.json              runs, checkpoint, settings, cases, seconds per case
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from kitsmsan.data.kits19 import (
    list_cases,
    load_case,
    normalize_case_id,
    prediction_filename,
    probs_filename,
    save_prediction,
)
from kitsmsan.errors import ConfigError, DataError
from kitsmsan.inference import load_model, predict_case
from kitsmsan.postprocess import keep_largest_components
from kitsmsan.utils.device import resolve_device
from kitsmsan.utils.io import (
    atomic_write,
    atomic_write_json,
    claim_output_dir,
    new_output_dir,
    only_files,
    safe_join,
)

#: which checkpoint of a run folder :func:`predict_folder` reads by default
DEFAULT_CHECKPOINT = "best"


def predict_folder(
    runs: Sequence[str | os.PathLike | torch.nn.Module],
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    cases: Sequence[int | str] | None = None,
    checkpoint: str = DEFAULT_CHECKPOINT,
    num_slices: int = 4,
    stride: int = 2,
    batch_size: int = 4,
    device: str | torch.device = "auto",
    amp: str | bool | None = "auto",
    postprocess: int = 0,
    save_probs: bool = False,
    skip_existing: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Segment the cases of ``data_root`` with one run (or the probability average of several).

    Args:
        runs: run folders or checkpoint files (or already built modules); several are averaged
            (probabilities), never voted.
        data_root: KiTS19-layout folder (``case_XXXXX/imaging.nii.gz``).
        out_dir: output folder (created).
        cases: case ids or numbers; default None = every case with imaging in ``data_root``.
        checkpoint: ``"best"`` (default; highest validation Dice on the *validation* cases, which
            come from the training range — falls back to ``"last"`` for a run without validation)
            or ``"last"``.
        num_slices: window depth (default 4, §3.1). stride: z step (default 2).
        batch_size: windows per forward (default 4). device: default ``"auto"``.
        amp: see :func:`kitsmsan.utils.amp.resolve_amp` (default ``"auto"``: on for CUDA).
        postprocess: keep the K largest kidney-region components; default 0 = raw predictions
            (the pipeline post-processes at evaluation time).
        save_probs: also write ``probs_XXXXX.npy`` (float16). Default False.
        skip_existing: keep a case whose prediction file exists (and load no model when every case
            exists); default False. Used by the resumable :func:`~kitsmsan.reproduce.reproduce`.
        overwrite: write into a folder that is not a prediction folder (default False: refused;
            its files are kept, never deleted — :func:`kitsmsan.utils.io.claim_output_dir`).
        progress: progress bar per case (default False). log: one line per case (default ``print``).

    Returns:
        The ``predict.json`` record (also written to ``out_dir``).

    Raises:
        ConfigError: bad ``postprocess``, ``checkpoint`` or device.
        OutputFolderError: ``out_dir`` is not a prediction folder (and ``overwrite`` is off).
        DataError: a case without imaging, unreadable imaging, a file that cannot be written (named).
        CheckpointError: a bad checkpoint.
    """
    if isinstance(postprocess, bool) or not isinstance(postprocess, int) or postprocess < 0:
        raise ConfigError(f"postprocess={postprocess!r}: expected 0 (off) or K >= 1")
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"checkpoint={checkpoint!r}: expected 'best' or 'last'")
    runs = list(runs)
    if not runs:
        raise ConfigError("runs: empty; need at least one run folder or checkpoint")
    data_root, out_dir = Path(data_root), Path(out_dir)
    available = list_cases(data_root)
    ids = available if cases is None else [normalize_case_id(c) for c in cases]
    missing = [c for c in ids if c not in available]
    if missing:
        raise DataError(f"{data_root}: no imaging for {', '.join(missing)}")
    recognize = only_files("prediction_*.nii.gz", "probs_*.npy", "predict.json")
    claim_output_dir(
        out_dir, "predictions", command="predict", overwrite=overwrite, recognize=recognize, create=False
    )  # refused before any model is loaded
    todo = [c for c in ids if not (skip_existing and (out_dir / prediction_filename(c)).is_file())]

    dev = resolve_device(device)
    models = (
        [r if isinstance(r, torch.nn.Module) else load_model(r, dev, checkpoint=checkpoint) for r in runs]
        if todo
        else []
    )
    timings: dict[str, float] = {}
    with new_output_dir(
        out_dir, "predictions", command="predict", overwrite=overwrite, recognize=recognize
    ):  # a failure before any file is written leaves no folder
        for cid in todo:
            t0 = time.perf_counter()
            case = load_case(data_root / cid, load_label=False)
            probs = predict_case(
                models,
                case.image,
                num_slices=num_slices,
                stride=stride,
                batch_size=batch_size,
                device=dev,
                amp=amp,
                return_probs=True,
                progress=progress,
            )
            pred = np.argmax(probs, axis=0).astype(np.uint8)
            if postprocess:
                pred = keep_largest_components(pred, postprocess)
            target = safe_join(out_dir, prediction_filename(cid))
            try:
                save_prediction(pred, case, target)
                if save_probs:
                    target = safe_join(out_dir, probs_filename(cid))
                    with atomic_write(target) as fh:
                        np.save(fh, probs.astype(np.float16))
            except OSError as exc:  # disk full, no permission: name the file, no traceback
                raise DataError(
                    f"{target}: cannot write ({exc.strerror or exc}); the files written "
                    f"before it are complete, this one was not written"
                ) from exc
            timings[cid] = round(time.perf_counter() - t0, 3)
            if log is not None:
                log(f"{cid}: {case.image.shape} -> {prediction_filename(cid)} ({timings[cid]:.1f} s)")
    record = {
        "runs": [_name(r) for r in runs],
        "combination": "probability average" if len(runs) > 1 else "single model",
        "checkpoint": checkpoint,
        "data": str(data_root),
        "cases": ids,
        "num_slices": num_slices,
        "stride": stride,
        "batch_size": batch_size,
        "device": str(dev),
        "amp": str(amp),
        "postprocess": postprocess,
        "save_probs": save_probs,
        "seconds": timings,
    }
    try:
        atomic_write_json(out_dir / "predict.json", record)
    except OSError as exc:
        raise DataError(
            f"{out_dir / 'predict.json'}: cannot write ({exc.strerror or exc}); "
            "the predictions themselves are complete"
        ) from exc
    return record


def _name(run) -> str:
    return type(run).__name__ if isinstance(run, torch.nn.Module) else str(run)
