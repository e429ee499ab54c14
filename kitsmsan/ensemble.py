"""Ensembles of segmentations: the paper's vote and probability averaging (MSAN paper, §2.2, §3.1).

The paper combines five networks (3D U-Net, MSAN-V1, MSAN-V1 with deep supervision, MSAN-V2,
MSAN-V2 with deep supervision) with "a voting strategy" and says nothing more. Two combination rules
exist in the package, each defined once, here:

* **vote** (:func:`majority_vote`) — combines N label volumes. Its ``rule`` says how:

  - ``rule="nested"`` (default): region-consistent with KiTS19's nested regions (kidney region =
    ``label > 0``, tumour = ``label == 2`` ⊂ kidney region; :mod:`kitsmsan.metrics`). A voxel is in the
    kidney region when a strict majority of the models — at least ``⌈(N + 1) / 2⌉``, i.e. 3 of 5 —
    put it there (label > 0), and tumour when a strict majority say label 2; background elsewhere.
    Tumour ⊂ kidney region holds by construction (a model saying 2 also says > 0). For 5 models and
    the votes (0, 0, 1, 2, 2): 3 of 5 say kidney region, only 2 of 5 say tumour → kidney. Even N:
    a tie (2 of 4, 1 of 2) is not a majority, so the voxel falls to the lower region (2 of 4 say
    tumour, 4 of 4 say kidney region → kidney; 2 of 4 say kidney region → background). In general,
    with regions ``label ≥ k`` for ``k = 1 … C − 1``, the result is the largest ``k`` whose region a
    strict majority votes for.
  - ``rule="plurality"``: the label with the most votes, ties by ``tie_break``: ``"highest"``
    (default; tumour > kidney > background), ``"lowest"`` (background first) or ``"first"`` (the first
    listed model whose label is tied). It can contradict the regions: (0, 0, 1, 2, 2) → tumour
    although 3 of 5 models say kidney region and only 2 say tumour; over all 243 five-model patterns
    it differs from ``"nested"`` on 60. Kept for the ablation that compares the rules.

* **probability averaging** (:func:`average_probabilities`, then :func:`argmax_label`) — mean
  softmax probabilities of N models, then argmax (ties to the lower class). Used by ``kitsmsan predict
  --run A --run B`` (the models are averaged while sliding over the volume) and by ``kitsmsan
  ensemble --method average`` (saved probabilities); never by ``reproduce``.

Memory: counts are uint8 and computed one class (or region) at a time, so voting five 512 × 512 × 300
volumes needs a few extra uint8/bool volumes (75 MB each; measured peak 450 MB, 3 s on one core for
the plurality rule), never an ``(N, Z, Y, X)`` or int64 array.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from kitsmsan.data.kits19 import (
    Case,
    load_label,
    normalize_case_id,
    prediction_filename,
    probs_filename,
    save_prediction,
)
from kitsmsan.errors import ConfigError, DataError
from kitsmsan.metrics import list_predictions
from kitsmsan.postprocess import keep_largest_components
from kitsmsan.utils.io import (
    atomic_write_json,
    claim_output_dir,
    distinct_dirs,
    new_output_dir,
    only_files,
    safe_join,
)

#: the vote rules of :func:`majority_vote`; the first is the default
VOTE_RULES = ("nested", "plurality")
#: how :func:`ensemble_folders` combines folders: the vote, or probability averaging
METHODS = ("vote", "average")
#: tie rules of ``rule="plurality"``
TIE_BREAKS = ("highest", "lowest", "first")


def _check_label_maps(label_maps: Sequence[np.ndarray], num_classes: int) -> list[np.ndarray]:
    if isinstance(label_maps, np.ndarray):
        raise DataError("label_maps: pass a sequence of label volumes (one per model), not a single array")
    maps = [np.asarray(m) for m in label_maps]
    if not maps:
        raise DataError("label_maps: empty; need at least one model's labels")
    if len(maps) > 255:
        raise DataError(f"label_maps: {len(maps)} models; at most 255 (uint8 vote counts)")
    shape = maps[0].shape
    for i, m in enumerate(maps):
        if m.shape != shape:
            raise DataError(f"label_maps[{i}]: shape {m.shape} differs from label_maps[0] {shape}")
        if not (np.issubdtype(m.dtype, np.integer) or m.dtype == bool):
            raise DataError(f"label_maps[{i}]: expected integer labels, got dtype {m.dtype}")
        if m.size and (int(m.min()) < 0 or int(m.max()) >= num_classes):
            raise DataError(
                f"label_maps[{i}]: values outside 0..{num_classes - 1} (min {m.min()}, max {m.max()})"
            )
    return maps


def _count(maps: list[np.ndarray], c: int) -> np.ndarray:
    """uint8 number of models voting for class ``c`` at every voxel."""
    count = np.zeros(maps[0].shape, dtype=np.uint8)
    for m in maps:
        count += m == c  # bool added in place to uint8, no int64 temporary
    return count


def majority_vote(
    label_maps: Sequence[np.ndarray],
    *,
    rule: str = "nested",
    num_classes: int = 3,
    tie_break: str | None = None,
) -> np.ndarray:
    """Per-voxel vote over N models' label volumes (MSAN paper, §2.2 and §3.1).

    Args:
        label_maps: N >= 1 integer arrays of the same shape (``(Z, Y, X)``), values in
            ``0..num_classes-1``; the order matters only for ``rule="plurality", tie_break="first"``.
        rule: ``"nested"`` (default): the largest label ``k`` such that a strict majority of the
            models (at least ``N // 2 + 1`` = ``⌈(N + 1) / 2⌉``) say ``label >= k`` — kidney region
            where 3 of 5 say > 0, tumour where 3 of 5 say 2, background elsewhere; a tie of an even N
            is no majority. ``"plurality"``: the label with the most votes, ties by ``tie_break``.
            See the module docstring.
        num_classes: number of labels (default 3: background, kidney, tumour).
        tie_break: ``rule="plurality"`` only: ``"highest"`` (the default there; tumour > kidney >
            background), ``"lowest"`` or ``"first"`` (the first listed model whose label is among the
            tied classes). Default None; refused with ``rule="nested"``, which has no ties to break.

    Returns:
        uint8 array of the input shape.

    Raises:
        DataError: empty input, shapes differ, non-integer or out-of-range labels.
        ConfigError: unknown ``rule`` or ``tie_break``, or ``tie_break`` with ``rule="nested"``.
    """
    if rule not in VOTE_RULES:
        raise ConfigError(f"rule={rule!r}: expected one of {', '.join(VOTE_RULES)}")
    if rule == "nested" and tie_break is not None:
        raise ConfigError(
            f"tie_break={tie_break!r}: only rule='plurality' has ties to break "
            "(rule='nested' needs a strict majority)"
        )
    tie_break = "highest" if tie_break is None else tie_break
    if tie_break not in TIE_BREAKS:
        raise ConfigError(f"tie_break={tie_break!r}: expected one of {', '.join(TIE_BREAKS)}")
    if int(num_classes) < 1:
        raise ConfigError(f"num_classes={num_classes!r}: expected >= 1")
    maps = _check_label_maps(label_maps, int(num_classes))
    shape = maps[0].shape

    if rule == "nested":
        need = len(maps) // 2 + 1  # strict majority: 3 of 5, 3 of 4, 2 of 2 or 3
        out = np.zeros(shape, dtype=np.uint8)
        for k in range(1, int(num_classes)):  # regions label >= k shrink as k grows
            count = np.zeros(shape, dtype=np.uint8)
            for m in maps:
                count += m >= k
            out[count >= need] = k
        return out

    if tie_break in ("highest", "lowest"):
        # Visit classes in priority order; a later class replaces the current winner only with
        # strictly more votes, so ties stay with the earlier (higher-priority) class.
        order = range(num_classes - 1, -1, -1) if tie_break == "highest" else range(num_classes)
        best_label = np.zeros(shape, dtype=np.uint8)
        best_count = np.zeros(shape, dtype=np.uint8)
        first = True
        for c in order:
            count = _count(maps, c)
            if first:
                best_label[...] = c
                best_count = count
                first = False
                continue
            better = count > best_count
            best_label[better] = c
            np.maximum(best_count, count, out=best_count)
        return best_label

    # tie_break == "first": counts of all classes (num_classes uint8 volumes), then walk the models
    counts = np.stack([_count(maps, c) for c in range(num_classes)])  # (C, *shape) uint8
    top = counts.max(axis=0)
    out = np.zeros(shape, dtype=np.uint8)
    undecided = np.ones(shape, dtype=bool)
    for m in maps:
        m_count = np.take_along_axis(counts, m.astype(np.intp)[None], axis=0)[0]
        take = undecided & (m_count == top)
        out[take] = m[take]
        undecided &= ~take
        if not undecided.any():
            break
    return out


def average_probabilities(prob_maps: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of N models' class probabilities (the alternative to voting in the ablations).

    Args:
        prob_maps: N >= 1 float arrays of the same shape ``(C, Z, Y, X)`` (softmax outputs).

    Returns:
        float32 ``(C, Z, Y, X)``: the voxel-wise mean, accumulated in float32 in place (one extra
        volume of memory).

    Raises:
        DataError: empty input, shapes differ, non-float or non-finite values.
    """
    if isinstance(prob_maps, np.ndarray):
        raise DataError("prob_maps: pass a sequence of probability volumes (one per model)")
    maps = list(prob_maps)
    if not maps:
        raise DataError("prob_maps: empty; need at least one model's probabilities")
    shape = np.shape(maps[0])
    total = np.zeros(shape, dtype=np.float32)
    for i, p in enumerate(maps):
        p = np.asarray(p)
        if p.shape != shape:
            raise DataError(f"prob_maps[{i}]: shape {p.shape} differs from prob_maps[0] {shape}")
        if not np.issubdtype(p.dtype, np.floating):
            raise DataError(f"prob_maps[{i}]: expected float probabilities, got dtype {p.dtype}")
        if not np.isfinite(p).all():
            raise DataError(f"prob_maps[{i}]: contains NaN or infinite values")
        total += p
    total /= np.float32(len(maps))
    return total


def argmax_label(probs: np.ndarray) -> np.ndarray:
    """Labels from probabilities: argmax over axis 0.

    Args:
        probs: ``(C, Z, Y, X)`` class probabilities (C <= 256).

    Returns:
        uint8 ``(Z, Y, X)``; exact ties go to the lowest class (NumPy's argmax).
    """
    probs = np.asarray(probs)
    if probs.ndim < 2:
        raise DataError(f"probs: expected (C, ...) with C classes first, got shape {probs.shape}")
    return np.argmax(probs, axis=0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# The ensembling stage: prediction folders in, one prediction folder out
# --------------------------------------------------------------------------------------------


def load_probs(path: str | os.PathLike) -> np.ndarray:
    """Read a ``probs_XXXXX.npy`` as a read-only memory map; plain float ``(C, Z, Y, X)`` arrays only.

    Raises:
        DataError: unreadable file, or one holding pickled Python objects (refused, never
            unpickled: ``allow_pickle=False``), naming the file.
    """
    try:
        probs = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(
            f"{path}: not a readable probability array (a .npy of floats written by "
            f"'kitsmsan predict --save-probs'; pickled objects are refused): {exc}"
        ) from None
    if not isinstance(probs, np.ndarray) or probs.dtype.kind != "f" or probs.ndim != 4:
        raise DataError(
            f"{path}: expected a float (3, Z, Y, X) array, got "
            f"{getattr(probs, 'dtype', type(probs).__name__)} {getattr(probs, 'shape', '')}"
        )
    if not np.isfinite(probs).all():  # named here, not as a list position later
        raise DataError(f"{path}: holds NaN or infinite probabilities")
    return probs


def ensemble_folders(
    pred_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    method: str = "vote",
    rule: str = "nested",
    tie_break: str | None = None,
    cases: Sequence[int | str] | None = None,
    postprocess: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> list[str]:
    """Combine the prediction folders of N models into one folder (MSAN paper, §2.2, §3.1).

    ``method="vote"`` reads each folder's ``prediction_XXXXX.nii.gz`` and applies
    :func:`majority_vote` (``rule``, ``tie_break``); ``method="average"`` reads the
    ``probs_XXXXX.npy`` that ``kitsmsan predict --save-probs`` wrote and applies
    :func:`average_probabilities` then :func:`argmax_label`. Each output file carries the header
    and affine of the first folder's prediction; folders whose shapes or affines disagree are refused.
    Writes ``out_dir/prediction_XXXXX.nii.gz`` per case and ``out_dir/ensemble.json`` (inputs, method,
    rule, cases, post-processing).

    Args:
        pred_dirs: N >= 1 prediction folders, one per model.
        out_dir: output folder (created; must differ from the inputs).
        method: ``"vote"`` (default, the paper's) or ``"average"``.
        rule: vote rule, ``"nested"`` (default) or ``"plurality"``; see :func:`majority_vote`.
        tie_break: ``rule="plurality"`` only; see :func:`majority_vote`. Default None.
        cases: case ids or numbers; default None = every prediction in the first folder.
        postprocess: keep the K largest kidney-region components of the result
            (:func:`kitsmsan.postprocess.keep_largest_components`); default 0 = off.
        overwrite: write into a folder that is not a prediction folder (default False: refused;
            its files are kept, never deleted — :func:`kitsmsan.utils.io.claim_output_dir`).
        log: called with one line per case (default ``print``; None = silent).

    Returns:
        The case ids written, in order.

    Raises:
        ConfigError: bad ``method``/``rule``/``tie_break``/``postprocess``, or ``out_dir`` is an input.
        DataError: a missing folder or file (all named), mismatched shapes/affines, unreadable files.
    """
    if method not in METHODS:
        raise ConfigError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    if method == "vote":
        majority_vote([np.zeros(1, np.uint8)], rule=rule, tie_break=tie_break)  # check rule/tie_break now
    if isinstance(postprocess, bool) or not isinstance(postprocess, int) or postprocess < 0:
        raise ConfigError(f"postprocess={postprocess!r}: expected 0 (off) or K >= 1")
    dirs = distinct_dirs(pred_dirs)  # one folder given twice (pA ./pA/) counts once: refused
    if not dirs:
        raise DataError("pred_dirs: empty; need at least one prediction folder")
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"{d}: prediction folder does not exist")
    out_dir = Path(out_dir)
    if any(out_dir.resolve() == d.resolve() for d in dirs):
        raise ConfigError(f"out_dir {out_dir}: must differ from the input folders")
    ids = list_predictions(dirs[0]) if cases is None else [normalize_case_id(c) for c in cases]
    if not ids:
        raise DataError(f"{dirs[0]}: no prediction_XXXXX.nii.gz files")
    needed = [prediction_filename] + ([probs_filename] if method == "average" else [])
    missing = [str(d / f(c)) for c in ids for d in dirs for f in needed if not (d / f(c)).is_file()]
    if missing:
        hint = " (average needs 'kitsmsan predict --save-probs')" if method == "average" else ""
        raise DataError(f"{len(missing)} input files missing{hint}: {', '.join(missing)}")

    recognize = only_files("prediction_*.nii.gz", "ensemble.json")
    claim_output_dir(
        out_dir, "predictions", command="ensemble", overwrite=overwrite, recognize=recognize, create=False
    )
    with new_output_dir(
        out_dir, "predictions", command="ensemble", overwrite=overwrite, recognize=recognize
    ):  # a failure before any file is written leaves no folder
        for cid in ids:
            _combine_case(
                cid, dirs, out_dir, method=method, rule=rule, tie_break=tie_break, postprocess=postprocess
            )
            if log is not None:
                log(f"{cid}: {method} of {len(dirs)} -> {prediction_filename(cid)}")
    try:
        atomic_write_json(
            out_dir / "ensemble.json",
            {
                "inputs": [str(d) for d in dirs],
                "method": method,
                "rule": rule if method == "vote" else None,
                "tie_break": (tie_break or "highest") if method == "vote" and rule == "plurality" else None,
                "cases": ids,
                "postprocess": postprocess,
            },
        )
    except OSError as exc:
        raise DataError(
            f"{out_dir / 'ensemble.json'}: cannot write ({exc.strerror or exc}); "
            "the combined predictions themselves are complete"
        ) from exc
    return ids


def _combine_case(
    cid: str,
    dirs: list[Path],
    out_dir: Path,
    *,
    method: str,
    rule: str,
    tie_break: str | None,
    postprocess: int,
) -> None:
    """Vote (or average) one case over ``dirs`` and write it to ``out_dir``."""
    first = dirs[0] / prediction_filename(cid)
    labels, affines = [], []
    for d in dirs:
        lab, _, aff = load_label(d / prediction_filename(cid))
        labels.append(lab)
        affines.append(aff)
    for d, lab, aff in zip(dirs, labels, affines):
        if lab.shape != labels[0].shape or not np.allclose(aff, affines[0], atol=1e-4):
            raise DataError(f"{d / prediction_filename(cid)}: shape/affine differs from {first}")
    if method == "vote":
        pred = majority_vote(labels, rule=rule, tie_break=tie_break)
    else:
        probs = [load_probs(d / probs_filename(cid)) for d in dirs]
        for d, pr in zip(dirs, probs):
            if pr.shape[1:] != labels[0].shape:
                raise DataError(
                    f"{d / probs_filename(cid)}: shape {pr.shape} does not match "
                    f"the prediction {labels[0].shape}"
                )
        pred = argmax_label(average_probabilities([np.asarray(pr, np.float32) for pr in probs]))
    if postprocess:
        pred = keep_largest_components(pred, postprocess)
    img = nib.load(str(first))
    reference = Case(
        cid,
        None,
        labels[0],
        tuple(float(s) for s in img.header.get_zooms()[:3]),
        affines[0],
        first.parent,
        img.header,
    )
    target = safe_join(out_dir, prediction_filename(cid))
    try:
        save_prediction(pred, reference, target)
    except OSError as exc:  # disk full, no permission: name the file, no traceback
        raise DataError(
            f"{target}: cannot write ({exc.strerror or exc}); the files written "
            f"before it are complete, this one was not written"
        ) from exc
