"""Plotting helpers for the book: slices with label overlays, HU histograms, training curves,
per-case Dice, attention maps and an offline-playable slice animation.

Every function returns a :class:`matplotlib.figure.Figure` (or an animation) and never calls
``plt.show()``: the notebooks display what they get, the tests inspect it with the Agg backend.
Nothing here computes a result of the paper; the numbers come from :mod:`kitsmsan.metrics`,
:mod:`kitsmsan.data.stats` and the run folders of :mod:`kitsmsan.train`.

Conventions (as everywhere in the package):

* volumes are ``(Z, Y, X)`` arrays with axis 0 axial (KiTS19 layout), images in Hounsfield units,
  labels uint8 in ``{0, 1, 2}`` (:data:`kitsmsan.data.kits19.BACKGROUND`, ``KIDNEY``, ``TUMOR``);
* a display window is ``(low, high)`` in HU; the default is the paper's clipping window
  :data:`kitsmsan.data.preprocess.HU_WINDOW` = (-200, 500) (MSAN paper, §2.1);
* a 2D slice is ``image[z]``, shown with rows downwards (anterior at the top for KiTS19's IPL
  orientation, see the data-exploration notebook).
"""

from __future__ import annotations

import inspect
import math
import os
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib import animation
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from kitsmsan.data.kits19 import BACKGROUND, KIDNEY, TUMOR
from kitsmsan.data.preprocess import HU_WINDOW, normalize
from kitsmsan.errors import DataError
from kitsmsan.utils.metrics_log import ITERATION_KEY, read_metrics

#: RGB colour of each foreground label in overlays (kidney green, tumour orange-red)
LABEL_COLORS: dict[int, tuple[float, float, float]] = {
    KIDNEY: (0.20, 0.80, 0.30),
    TUMOR: (1.00, 0.30, 0.10),
}

#: colour of each scored region in Dice plots
REGION_COLORS = {"kidney": "tab:green", "tumor": "tab:red", "composite": "tab:blue"}

#: outline colours of the ground truth drawn over a prediction (:func:`overlay` with ``contour``)
CONTOUR_COLORS = {"kidney region": "white", "tumor": "yellow"}

#: font sizes (points) of every plot helper: at the figure sizes used here and the book's 1280 px
#: layout no text is drawn smaller than 10 pt
FONT_TITLE = 12
FONT_LABEL = 11
FONT_TICK = 10
FONT_LEGEND = 10

#: width (inches, at the book's 100 dpi) of the book's text column at 1280 px: a wider figure is
#: scaled down to it, and its 10 pt text with it, so figures meant to be read are drawn this wide
BOOK_COLUMN_IN = 6.88


def display_points(fig, fontsize: float) -> float:
    """The size (points) at which text of ``fontsize`` shows once ``fig`` is scaled to the column.

    Args:
        fig: a Figure; its width is compared with :data:`BOOK_COLUMN_IN`.
        fontsize: the text's size in points.

    Returns:
        ``fontsize * min(1, BOOK_COLUMN_IN / figure width)``.
    """
    return float(fontsize) * min(1.0, BOOK_COLUMN_IN / fig.get_figwidth())


# --------------------------------------------------------------------------------------------
# small pure helpers (also used by kitsmsan.widgets)
# --------------------------------------------------------------------------------------------


def _pyplot():
    """Import pyplot lazily (so importing kitsmsan.viz never picks a GUI backend by itself)."""
    import matplotlib.pyplot as plt  # lazy: importing pyplot can select a GUI backend

    return plt


def _check_volume(array: Any, name: str, ndim: int = 3) -> np.ndarray:
    """``array`` as a numpy array with ``ndim`` dimensions, else :class:`DataError` naming it."""
    if array is None:
        raise DataError(f"{name}: expected a {ndim}D array, got None")
    arr = np.asarray(array)
    if arr.ndim != ndim:
        raise DataError(f"{name}: expected a {ndim}D array, got shape {arr.shape}")
    if arr.size == 0:
        raise DataError(f"{name}: empty array of shape {arr.shape}")
    return arr


def _check_same_shape(ref: np.ndarray, other: np.ndarray, name: str, ref_name: str = "image") -> None:
    if other.shape != ref.shape:
        raise DataError(f"{name}: shape {other.shape} differs from {ref_name} shape {ref.shape}")


def window_from_level(level: float, width: float) -> tuple[float, float]:
    """Convert a radiologist's window level/width to ``(low, high)`` HU.

    The paper's clipping window (-200, 500) is level 150, width 700.

    Args:
        level: window centre in HU.
        width: window width in HU, > 0.

    Returns:
        ``(level - width / 2, level + width / 2)``.

    Raises:
        DataError: if ``width`` is not positive.
    """
    if not width > 0:
        raise DataError(f"window width {width!r}: must be > 0")
    return (float(level) - float(width) / 2.0, float(level) + float(width) / 2.0)


def label_rgba(
    label2d: np.ndarray, *, alpha: float = 0.45, colors: Mapping[int, Sequence[float]] = LABEL_COLORS
) -> np.ndarray:
    """RGBA overlay of a 2D label map: each foreground label in its colour, background transparent.

    Args:
        label2d: ``(H, W)`` integer labels in {0, 1, 2}.
        alpha: opacity of labelled pixels, in [0, 1]. Default 0.45.
        colors: label → RGB in [0, 1]. Default :data:`LABEL_COLORS`.

    Returns:
        float32 ``(H, W, 4)`` array.
    """
    label2d = _check_volume(label2d, "label2d", 2)
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"alpha={alpha!r}: must be in [0, 1]")
    out = np.zeros(label2d.shape + (4,), dtype=np.float32)
    for value, rgb in colors.items():
        mask = label2d == value
        out[mask, :3] = rgb
        out[mask, 3] = alpha
    return out


def compose_rgb(
    image2d: np.ndarray,
    label2d: np.ndarray | None = None,
    *,
    window: tuple[float, float] = HU_WINDOW,
    alpha: float = 0.45,
    heat: np.ndarray | None = None,
    heat_alpha: float = 0.5,
    heat_range: tuple[float, float] = (0.0, 1.0),
    cmap: str = "magma",
    colors: Mapping[int, Sequence[float]] = LABEL_COLORS,
) -> np.ndarray:
    """One display frame: a windowed CT slice with a label overlay and/or a heat map blended on top.

    This is the pixel recipe shared by :func:`overlay`, :func:`slice_animation` and the slice viewer
    of :mod:`kitsmsan.widgets`, so all three show the same colours.

    Args:
        image2d: ``(H, W)`` slice in HU.
        label2d: optional ``(H, W)`` labels drawn with :func:`label_rgba`.
        window: display window ``(low, high)`` in HU. Default (-200, 500), the paper's window (§2.1).
        alpha: label opacity. Default 0.45.
        heat: optional ``(H, W)`` float map (an attention weight, a disagreement count) blended with
            colour map ``cmap``; values are scaled from ``heat_range`` to [0, 1].
        heat_alpha: maximum heat opacity, reached at the top of ``heat_range``. Default 0.5.
        heat_range: ``(low, high)`` of the heat values. Default (0, 1).
        cmap: matplotlib colour map of the heat. Default ``"magma"``.
        colors: label colours. Default :data:`LABEL_COLORS`.

    Returns:
        uint8 ``(H, W, 3)`` RGB image.
    """
    image2d = _check_volume(image2d, "image2d", 2)
    grey = normalize(image2d, window)  # (H, W) in [0, 1]
    rgb = np.repeat(grey[..., None], 3, axis=-1)  # (H, W, 3)
    if heat is not None:
        heat = _check_volume(heat, "heat", 2)
        _check_same_shape(image2d, heat, "heat", "image2d")
        lo, hi = heat_range
        if not hi > lo:
            raise DataError(f"heat_range={heat_range!r}: high must be above low")
        h = np.clip((np.asarray(heat, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)
        colour = matplotlib.colormaps[cmap](h)[..., :3].astype(np.float32)  # (H, W, 3)
        a = (heat_alpha * h)[..., None]
        rgb = (1 - a) * rgb + a * colour
    if label2d is not None:
        label2d = _check_volume(label2d, "label2d", 2)
        _check_same_shape(image2d, label2d, "label2d", "image2d")
        over = label_rgba(label2d, alpha=alpha, colors=colors)
        a = over[..., 3:4]
        rgb = (1 - a) * rgb + a * over[..., :3]
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def pick_slices(
    label: np.ndarray | None, num: int = 5, *, depth: int | None = None, prefer: int | None = None
) -> list[int]:
    """``num`` axial slice indices spread evenly over the labelled extent (or the whole volume).

    Args:
        label: ``(Z, Y, X)`` labels; slices holding foreground define the extent. ``None``: use
            ``depth``.
        num: how many slices. Default 5.
        depth: number of slices when ``label`` is None.
        prefer: a label value (e.g. :data:`~kitsmsan.data.kits19.TUMOR`): when some slices hold it,
            the slices are spread over those slices only, so every one shows it (with ``num == 1``:
            the slice where it has the most voxels). Default None: the whole foreground extent.

    Returns:
        Sorted, distinct slice indices (fewer than ``num`` when the extent is shorter); for
        ``num == 1`` the middle slice of the extent.
    """
    if num < 1:
        raise DataError(f"num={num!r}: must be >= 1")
    if label is not None and prefer is not None:
        label = _check_volume(label, "label")
        area = (label == prefer).sum(axis=(1, 2))
        held = np.flatnonzero(area)
        if held.size:
            if num == 1:
                return [int(np.argmax(area))]
            picks = np.linspace(0, held.size - 1, min(num, held.size)).round().astype(int)
            return sorted({int(held[i]) for i in picks})
    if label is not None:
        label = _check_volume(label, "label")
        fg = np.flatnonzero(np.any(label > 0, axis=(1, 2)))
        lo, hi = (int(fg[0]), int(fg[-1])) if fg.size else (0, label.shape[0] - 1)
    elif depth is not None and depth >= 1:
        lo, hi = 0, int(depth) - 1
    else:
        raise DataError("pick_slices: give a label volume or a positive depth")
    if num == 1:
        return [(lo + hi) // 2]  # the middle of the extent
    return sorted({int(round(v)) for v in np.linspace(lo, hi, num)})


def disagreement_max(n_models: int) -> int:
    """The largest value :func:`disagreement_map` can take for ``n_models`` maps: the top of its scale.

    Three labels (background, kidney, tumour) are voted on, so the most common label of a voxel
    has at least ``ceil(n / 3)`` votes and at most ``n - ceil(n / 3)`` models disagree with it
    (3 for the paper's five models; a scale running to ``n - 1`` would never be reached).

    Args:
        n_models: number of models voting (>= 1).

    Returns:
        ``max(1, n - ceil(n / 3))`` (at least 1, so a colour scale never has zero width).
    """
    if n_models < 1:
        raise DataError(f"n_models={n_models!r}: must be >= 1")
    return max(1, n_models - math.ceil(n_models / 3))


def disagreement_map(preds: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> np.ndarray:
    """How many models disagree with the voxel-wise most common label.

    0 where all models agree; at most :func:`disagreement_max` of ``len(preds)``. With the paper's five models a value of
    2 means a 3-to-2 vote, the voxels where the ensemble (MSAN paper, §3.1) was closest to going
    the other way.

    Args:
        preds: label maps of equal shape (a sequence, or a mapping name → map).

    Returns:
        uint8 array of the common shape.

    Raises:
        DataError: no maps, or maps of different shapes.
    """
    maps = list(preds.values()) if isinstance(preds, Mapping) else list(preds)
    if not maps:
        raise DataError("disagreement_map: preds is empty")
    ref = np.asarray(maps[0])
    for i, m in enumerate(maps[1:], 1):
        _check_same_shape(ref, np.asarray(m), f"preds[{i}]", "preds[0]")
    stack = np.stack([np.asarray(m) for m in maps])  # (M, ...)
    counts = np.stack([(stack == v).sum(axis=0) for v in (BACKGROUND, KIDNEY, TUMOR)])
    return (len(maps) - counts.max(axis=0)).astype(np.uint8)


def label_key_handles(
    *,
    filled: bool = True,
    contour: bool | np.ndarray = False,
    heat: tuple[str, str] | None = None,
    colors: Mapping[int, Sequence[float]] = LABEL_COLORS,
    what: str = "",
) -> list:
    """Legend handles that say what the colours of an overlay mean.

    Args:
        filled: the filled labels (kidney, tumour). Default True.
        contour: the ground-truth outlines (kidney region white, tumour yellow): True for both,
            or the drawn ground truth (any shape) to list only the outlines it contains (no
            tumour entry for a slice without tumour). Default False.
        heat: ``(colour map, meaning)`` of a heat layer, e.g. ``("inferno", "models disagreeing")``.
        colors: label colours. Default :data:`LABEL_COLORS`.
        what: prefix of the filled entries, e.g. ``"prediction: "``.

    Returns:
        A list of matplotlib artists for ``legend(handles=...)``.
    """
    handles: list = []
    if filled:
        handles += [
            Patch(facecolor=colors[KIDNEY], label=f"{what}kidney"),
            Patch(facecolor=colors[TUMOR], label=f"{what}tumour"),
        ]
    if isinstance(contour, np.ndarray):
        kidney_drawn, tumour_drawn = bool((contour > 0).any()), bool((contour == TUMOR).any())
    else:
        kidney_drawn = tumour_drawn = bool(contour)
    if kidney_drawn:
        handles.append(
            Line2D(
                [],
                [],
                color=CONTOUR_COLORS["kidney region"],
                lw=2.5,
                label="ground truth: kidney region (outline)",
            )
        )
    if tumour_drawn:
        handles.append(
            Line2D([], [], color=CONTOUR_COLORS["tumor"], lw=2.5, label="ground truth: tumour (outline)")
        )
    if heat is not None:
        cmap, meaning = heat
        handles += [Patch(facecolor=matplotlib.colormaps[cmap](0.85), label=f"{meaning} (brighter = more)")]
    return handles


def add_label_key(fig, handles: Sequence, *, ncol: int | None = None):
    """Put a colour key under a figure's panels (dark background, so the white outline shows).

    Returns:
        The :class:`matplotlib.legend.Legend`, or None when ``handles`` is empty.
    """
    if not handles:
        return None
    legend = fig.legend(
        handles=list(handles),
        loc="outside lower center",
        ncol=ncol or (2 if len(handles) > 3 else len(handles)),
        fontsize=FONT_LEGEND,
        frameon=True,
        facecolor="0.25",
        edgecolor="0.25",
        labelcolor="white",
    )
    return legend


# --------------------------------------------------------------------------------------------
# slices
# --------------------------------------------------------------------------------------------


def overlay(
    ax,
    image2d: np.ndarray,
    label2d: np.ndarray | None = None,
    *,
    window: tuple[float, float] = HU_WINDOW,
    alpha: float = 0.45,
    contour: np.ndarray | None = None,
    title: str | None = None,
):
    """Draw a windowed slice with a filled label overlay (and an optional contour) on ``ax``.

    Args:
        ax: a matplotlib Axes.
        image2d: ``(H, W)`` slice in HU.
        label2d: optional ``(H, W)`` labels, drawn filled.
        window: display window in HU. Default (-200, 500) (§2.1).
        alpha: fill opacity. Default 0.45.
        contour: optional ``(H, W)`` labels drawn as outlines (e.g. the ground truth under a
            prediction): kidney region (label > 0) white, tumour (label == 2) yellow.
        title: axes title.

    Returns:
        ``ax``.
    """
    ax.imshow(compose_rgb(image2d, label2d, window=window, alpha=alpha), interpolation="nearest")
    if contour is not None:
        contour = _check_volume(contour, "contour", 2)
        _check_same_shape(np.asarray(image2d), contour, "contour", "image2d")
        for mask, colour in (
            (contour > 0, CONTOUR_COLORS["kidney region"]),
            (contour == TUMOR, CONTOUR_COLORS["tumor"]),
        ):
            if mask.any() and not mask.all():
                ax.contour(mask.astype(np.float32), levels=[0.5], colors=colour, linewidths=0.8)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=FONT_LABEL)
    return ax


def show_slices(
    image: np.ndarray,
    label: np.ndarray | None = None,
    preds: Mapping[str, np.ndarray] | None = None,
    *,
    slices: Sequence[int] | None = None,
    num_slices: int = 5,
    window: tuple[float, float] = HU_WINDOW,
    alpha: float = 0.45,
    size: float = 2.2,
    title: str | None = None,
):
    """Small multiples: a row per layer (image + ground truth, then each prediction), a column per slice.

    With ``preds`` each prediction is drawn filled with the ground truth outlined on top, so errors
    show as colour outside (false positives) or outlines without colour (misses).

    Args:
        image: ``(Z, Y, X)`` volume in HU.
        label: optional ``(Z, Y, X)`` ground truth.
        preds: optional name → ``(Z, Y, X)`` predicted labels, one row each.
        slices: axial indices to show; default :func:`pick_slices` over the slices that hold tumour
            (over the labelled extent when there is no tumour), so every panel shows it.
        num_slices: number of slices when ``slices`` is None. Default 5.
        window: display window in HU. Default (-200, 500).
        alpha: overlay opacity. Default 0.45.
        size: inches per panel. Default 2.2.
        title: figure title.

    Returns:
        The Figure, with ``(1 + len(preds)) x len(slices)`` image axes and a colour key below them
        (``fig.legends[0]``).
    """
    plt = _pyplot()
    image = _check_volume(image, "image")
    if label is not None:
        label = _check_volume(label, "label")
        _check_same_shape(image, label, "label")
    preds = dict(preds or {})
    for name, p in preds.items():
        preds[name] = _check_volume(p, f"preds[{name!r}]")
        _check_same_shape(image, preds[name], f"preds[{name!r}]")
    if slices is None:
        slices = pick_slices(label, num_slices, depth=image.shape[0], prefer=TUMOR)
    slices = [int(z) for z in slices]
    for z in slices:
        if not 0 <= z < image.shape[0]:
            raise DataError(f"slices: index {z} outside 0..{image.shape[0] - 1}")
    rows = [("ground truth" if label is not None else "image", label, None)]
    rows += [(name, p, label) for name, p in preds.items()]
    fig, axes = plt.subplots(
        len(rows),
        len(slices),
        figsize=(size * len(slices), size * len(rows)),
        squeeze=False,
        constrained_layout=True,
    )
    for r, (name, lab, gt) in enumerate(rows):
        for c, z in enumerate(slices):
            overlay(
                axes[r, c],
                image[z],
                None if lab is None else lab[z],
                window=window,
                alpha=alpha,
                contour=None if gt is None else gt[z],
                title=f"{name}, z={z}" if r == 0 or c == 0 else f"z={z}",
            )
    add_label_key(
        fig,
        label_key_handles(
            filled=label is not None or bool(preds),
            contour=np.asarray(label)[list(slices)] if preds and label is not None else False,
            what="filled: " if preds else "",
        ),
    )
    if title:
        fig.suptitle(title, fontsize=FONT_TITLE)
    return fig


def plot_attention(
    image2d: np.ndarray,
    weights: np.ndarray,
    *,
    label2d: np.ndarray | None = None,
    window: tuple[float, float] = HU_WINDOW,
    title: str | None = None,
    cmap: str = "magma",
):
    """The multi-scale attention weights of one slice beside the slice itself (MSAN paper, §2.2).

    The weights are the sigmoid outputs of the attention layer (values in [0, 1]); a 3D weight
    tensor ``(C, H, W)`` is averaged over channels. Weights at a lower resolution than the slice
    are upsampled by pixel repetition (nearest neighbour) to the slice size.

    Args:
        image2d: ``(H, W)`` slice in HU.
        weights: ``(h, w)`` or ``(C, h, w)`` attention weights, ``H`` a multiple of ``h`` and
            ``W`` of ``w``.
        label2d: optional ``(H, W)`` ground truth outlined on both panels.
        window: display window. Default (-200, 500).
        title: figure title.
        cmap: colour map of the weights. Default ``"magma"``.

    Returns:
        The Figure with three axes: slice, weights, weights over the slice (plus a colour bar).
    """
    plt = _pyplot()
    image2d = _check_volume(image2d, "image2d", 2)
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim == 3:
        w = w.mean(axis=0)  # (C, h, w) -> (h, w)
    w = _check_volume(w, "weights", 2)
    w = upsample_nearest(w, image2d.shape)
    fig, axes = plt.subplots(1, 3, figsize=(9.5, 3.4), constrained_layout=True)
    overlay(axes[0], image2d, None, window=window, contour=label2d, title="CT slice")
    im = axes[1].imshow(w, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    axes[1].set_axis_off()
    axes[1].set_title("attention weights (sigmoid)", fontsize=FONT_LABEL)
    if label2d is not None:
        axes[1].contour(
            (np.asarray(label2d) > 0).astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.8
        )
    axes[2].imshow(compose_rgb(image2d, None, window=window, heat=w, cmap=cmap, heat_alpha=0.7))
    axes[2].set_axis_off()
    axes[2].set_title("weights over the slice", fontsize=FONT_LABEL)
    bar = fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02)
    bar.set_label("weight w", fontsize=FONT_LABEL)
    bar.ax.tick_params(labelsize=FONT_TICK)
    if label2d is not None:
        drawn = np.asarray(label2d)
        add_label_key(
            fig,
            [
                *label_key_handles(filled=False, contour=drawn),  # only the outlines this slice has
                *(
                    [Line2D([], [], color="cyan", lw=2.5, label="kidney region (outline, middle panel)")]
                    if (drawn > 0).any()
                    else []
                ),
            ],
        )
    if title:
        fig.suptitle(title, fontsize=FONT_TITLE)
    return fig


def upsample_nearest(array2d: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Repeat pixels of a ``(h, w)`` map to ``shape = (H, W)`` (integer factors only).

    Raises:
        DataError: when ``H`` is not a multiple of ``h`` or ``W`` of ``w``.
    """
    array2d = np.asarray(array2d)
    (h, w), (H, W) = array2d.shape, tuple(shape)
    if (h, w) == (H, W):
        return array2d
    if H % h or W % w:
        raise DataError(f"weights shape {(h, w)}: does not divide the slice shape {(H, W)}")
    return np.repeat(np.repeat(array2d, H // h, axis=0), W // w, axis=1)


def show_orthogonal(
    image: np.ndarray,
    label: np.ndarray | None = None,
    *,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    center: tuple[int, int, int] | None = None,
    window: tuple[float, float] = HU_WINDOW,
    alpha: float = 0.45,
    size: float = 3.2,
):
    """Axial, coronal and sagittal planes through one voxel, drawn at their true aspect ratio.

    KiTS19 arrays are ``(Z, Y, X)`` with axis 0 axial (orientation IPL: z runs inferiorly, y
    posteriorly, x to the patient's left), so the axial plane is ``image[z]``, the coronal plane
    ``image[:, y]`` and the sagittal plane ``image[:, :, x]``. Slices are usually thicker than the
    in-plane pixels, so the reformatted planes are stretched by ``spacing[0] / spacing[1]``.

    Args:
        image: ``(Z, Y, X)`` in HU.
        label: optional ``(Z, Y, X)`` labels overlaid.
        spacing: ``(z, y, x)`` voxel size in mm (``Case.spacing``). Default (1, 1, 1).
        center: ``(z, y, x)`` voxel the planes pass through; default the tumour voxel nearest to the
            tumour's centre (so all three planes cut the tumour), else the centre of the foreground,
            else of the volume.
        window: display window. Default (-200, 500).
        alpha: overlay opacity. Default 0.45.
        size: inches per panel. Default 3.2.

    Returns:
        The Figure with three axes titled axial, coronal, sagittal.
    """
    plt = _pyplot()
    image = _check_volume(image, "image")
    if label is not None:
        label = _check_volume(label, "label")
        _check_same_shape(image, label, "label")
    dz, dy, dx = (float(v) for v in spacing)
    if min(dz, dy, dx) <= 0:
        raise DataError(f"spacing={spacing!r}: every voxel size must be > 0")
    if center is None:
        if label is not None and (label == TUMOR).any():
            voxels = np.argwhere(label == TUMOR)
            nearest = np.argmin(((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1))
            center = tuple(int(c) for c in voxels[nearest])
        elif label is not None and (label > 0).any():
            center = tuple(int(round(c)) for c in np.argwhere(label > 0).mean(axis=0))
        else:
            center = tuple(s // 2 for s in image.shape)
    z, y, x = (int(c) for c in center)
    for c, n, name in ((z, image.shape[0], "z"), (y, image.shape[1], "y"), (x, image.shape[2], "x")):
        if not 0 <= c < n:
            raise DataError(f"center: {name}={c} outside 0..{n - 1}")
    planes = [
        (f"axial (z={z})", image[z], None if label is None else label[z], dy / dx),
        (f"coronal (y={y})", image[:, y], None if label is None else label[:, y], dz / dx),
        (f"sagittal (x={x})", image[:, :, x], None if label is None else label[:, :, x], dz / dy),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(3 * size, size), constrained_layout=True)
    for ax, (title, img2d, lab2d, aspect) in zip(axes, planes):
        ax.imshow(
            compose_rgb(img2d, lab2d, window=window, alpha=alpha), aspect=aspect, interpolation="nearest"
        )
        ax.set_title(title, fontsize=FONT_LABEL)
        ax.set_axis_off()
    if label is not None:
        add_label_key(fig, label_key_handles())
    return fig


def plot_maps(
    maps: Mapping[str, np.ndarray],
    *,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    ncols: int = 4,
    size: float = 2.4,
    colorbar: bool = True,
    title: str | None = None,
    colorbar_label: str | None = None,
    categories: Mapping[int, str] | None = None,
):
    """Small multiples of 2D maps (attention weights per level, receptive fields, auxiliary outputs).

    Args:
        maps: panel title → ``(H, W)`` array (panels may differ in size).
        cmap: colour map. Default ``"viridis"``.
        vmin, vmax: shared colour limits; default each panel's own range.
        ncols: panels per row. Default 4.
        size: inches per panel. Default 2.4.
        colorbar: one colour bar per panel. Default True.
        title: figure title.
        colorbar_label: what the colour means (e.g. ``"models disagreeing"``), written on every
            colour bar. Default None.
        categories: value → name of maps that hold labels (e.g. ``{0: "background", 1: "kidney",
            2: "tumour"}``): a key under the panels shows each value's colour (needs ``vmin`` and
            ``vmax``). Default None.

    Returns:
        The Figure (hidden axes fill the last row).
    """
    plt = _pyplot()
    if not maps:
        raise DataError("plot_maps: maps is empty")
    arrays = {k: _check_volume(np.asarray(v, dtype=np.float32), f"maps[{k!r}]", 2) for k, v in maps.items()}
    ncols = min(ncols, len(arrays))
    nrows = math.ceil(len(arrays) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False, constrained_layout=True
    )
    for ax, (name, arr) in zip(axes.flat, arrays.items()):
        im = ax.imshow(arr, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(name, fontsize=FONT_LABEL)
        ax.set_axis_off()
        if colorbar:
            bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            bar.ax.tick_params(labelsize=FONT_TICK)
            if colorbar_label:
                bar.set_label(colorbar_label, fontsize=FONT_TICK)
    for ax in list(axes.flat)[len(arrays) :]:
        ax.set_visible(False)
    if categories:
        if vmin is None or vmax is None or vmax <= vmin:
            plt.close(fig)
            raise DataError("plot_maps: categories need vmin < vmax (the colour of each value)")
        colours = matplotlib.colormaps[cmap]
        fig.legend(
            handles=[
                Patch(facecolor=colours((v - vmin) / (vmax - vmin)), edgecolor="0.3", label=f"{v}: {name}")
                for v, name in categories.items()
            ],
            loc="outside lower center",
            ncol=min(len(categories), 4),
            fontsize=FONT_LEGEND,
        )
    if title:
        fig.suptitle(title, fontsize=FONT_TITLE)
    return fig


def source_markdown(obj: Any) -> str:
    """The source of a package object as a fenced Python block (shown in the book, never copied).

    Args:
        obj: a function, class or method (anything :func:`inspect.getsource` accepts).

    Returns:
        Markdown text: a header line naming ``module.qualname`` and the source in a code fence.
    """
    try:
        src = inspect.getsource(obj)
    except (TypeError, OSError) as exc:
        raise DataError(f"source_markdown: no source for {obj!r} ({exc})") from None
    name = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"
    return f"`{name}`\n\n```python\n{textwrap.dedent(src).rstrip()}\n```\n"


def show_source(obj: Any):
    """:func:`source_markdown` as an IPython Markdown object, for the last line of a notebook cell."""
    from IPython.display import Markdown  # lazy: IPython is there in notebooks only, not a dependency

    return Markdown(source_markdown(obj))


# --------------------------------------------------------------------------------------------
# data statistics
# --------------------------------------------------------------------------------------------


def plot_hu_histograms(
    edges: np.ndarray | Mapping[str, np.ndarray],
    counts: Mapping[str, np.ndarray] | None = None,
    *,
    window: tuple[float, float] = HU_WINDOW,
    density: bool = True,
    title: str | None = None,
):
    """HU histograms per label with the paper's clipping window shaded (MSAN paper, §2.1).

    The shaded band is the window kept by :func:`kitsmsan.data.preprocess.clip_hu`; the legend
    gives, per label, the share of voxels inside it, which is the paper's argument for (-200, 500).

    Args:
        edges: bin edges ``(n + 1,)`` in HU, or the whole dict returned by
            :func:`kitsmsan.data.stats.hu_histograms` (``{"edges": ..., "background": ...,
            "kidney": ..., "tumor": ...}``), in which case ``counts`` is omitted.
        counts: label name → ``(n,)`` voxel counts.
        window: the window to shade. Default (-200, 500).
        density: normalise each curve to unit area (labels differ in size by orders of
            magnitude). Default True.
        title: axes title.

    Returns:
        The Figure (one axes).
    """
    plt = _pyplot()
    if isinstance(edges, Mapping):
        if counts is not None:
            raise DataError("plot_hu_histograms: give a histogram dict or (edges, counts), not both")
        counts = {k: v for k, v in edges.items() if k != "edges"}
        edges = edges.get("edges")
        if edges is None:
            raise DataError("plot_hu_histograms: the histogram dict has no 'edges'")
    if counts is None:
        raise DataError("plot_hu_histograms: counts is missing")
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2:
        raise DataError(f"edges: expected a 1D array of at least 2 bin edges, got shape {edges.shape}")
    centres = 0.5 * (edges[1:] + edges[:-1])
    widths = np.diff(edges)
    fig, ax = plt.subplots(figsize=(7, 3.6), constrained_layout=True)
    ax.axvspan(window[0], window[1], color="0.9", zorder=0, label=f"window [{window[0]:g}, {window[1]:g}] HU")
    palette = {"background": "0.4", "kidney": "tab:green", "tumor": "tab:red"}
    for name, c in counts.items():
        c = np.asarray(c, dtype=np.float64)
        if c.shape != centres.shape:
            raise DataError(f"counts[{name!r}]: shape {c.shape} does not match {centres.size} bins")
        total = c.sum()
        if total == 0:
            continue
        inside = c[(centres >= window[0]) & (centres <= window[1])].sum() / total
        y = c / (total * widths) if density else c
        ax.plot(centres, y, color=palette.get(name), label=f"{name} ({100 * inside:.0f}% inside)")
    ax.set_xlabel("intensity (HU)", fontsize=FONT_LABEL)
    ax.set_ylabel("density (1/HU)" if density else "voxels", fontsize=FONT_LABEL)
    ax.tick_params(labelsize=FONT_TICK)
    ax.legend(fontsize=FONT_LEGEND)
    if title:
        ax.set_title(title, fontsize=FONT_TITLE)
    return fig


def plot_distributions(
    frames: Mapping[str, Any],
    columns: Sequence[str],
    *,
    labels: Mapping[str, str] | None = None,
    bins: int = 20,
    ncols: int = 2,
    title: str | None = None,
):
    """Histograms of per-case statistics, one panel per column, one colour per source.

    Used to put the phantoms beside the real KiTS19 statistics: each source is
    normalised to unit area so a 190-case table and a 6-case table can share a panel.

    Args:
        frames: source name (e.g. ``"KiTS19 labels"``, ``"phantoms"``) → pandas DataFrame with
            the columns to plot; None values are skipped.
        columns: column names to plot.
        labels: column → axis label. Default: the column name.
        bins: histogram bins. Default 20.
        ncols: panels per row. Default 2 (each panel 4.2 × 3.3 in, so the text stays readable when the
            figure is scaled to the page column).
        title: figure title.

    Returns:
        The Figure.
    """
    plt = _pyplot()
    frames = {k: v for k, v in frames.items() if v is not None}
    if not frames:
        raise DataError("plot_distributions: no tables given")
    if not columns:
        raise DataError("plot_distributions: no columns given")
    for name, df in frames.items():
        missing = [c for c in columns if c not in df.columns]
        if missing and len(frames) == 1:
            raise DataError(f"plot_distributions: table {name!r} has no column {missing[0]!r}")
    ncols = min(ncols, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False, constrained_layout=True
    )
    for ax, col in zip(axes.flat, columns):
        values = {n: np.asarray(df[col], dtype=np.float64) for n, df in frames.items() if col in df.columns}
        values = {n: v[np.isfinite(v)] for n, v in values.items()}
        finite = [v for v in values.values() if v.size]
        if not finite:
            ax.set_visible(False)
            continue
        lo = min(float(v.min()) for v in finite)
        hi = max(float(v.max()) for v in finite)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        for n, v in values.items():
            if v.size:
                ax.hist(v, bins=edges, density=True, alpha=0.55, label=f"{n} (n={v.size})")
        ax.set_xlabel((labels or {}).get(col, col), fontsize=FONT_LABEL)
        ax.set_ylabel("share of cases (density)", fontsize=FONT_TICK)
        ax.tick_params(labelsize=FONT_TICK)
    for ax in list(axes.flat)[len(columns) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=FONT_LEGEND)
    if title:
        fig.suptitle(title, fontsize=FONT_TITLE)
    return fig


# --------------------------------------------------------------------------------------------
# training curves
# --------------------------------------------------------------------------------------------


def _step_of(row: Mapping[str, Any]) -> float | None:
    """The iteration of a metrics row (:data:`kitsmsan.utils.metrics_log.ITERATION_KEY`), or None."""
    value = row.get(ITERATION_KEY)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _series(rows: Iterable[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for row in rows:
        x, y = _step_of(row), row.get(key)
        if x is not None and isinstance(y, (int, float)) and not isinstance(y, bool) and math.isfinite(y):
            xs.append(x)
            ys.append(float(y))
    return np.asarray(xs), np.asarray(ys)


def _as_runs(metrics: Any) -> dict[str, list[dict[str, Any]]]:
    """Normalise the accepted inputs of :func:`plot_training_curves` to name → rows."""
    if isinstance(metrics, (str, os.PathLike)):
        return {
            Path(metrics).name if Path(metrics).is_dir() else Path(metrics).parent.name: read_metrics(metrics)
        }
    if isinstance(metrics, Mapping):
        return {
            str(k): (read_metrics(v) if isinstance(v, (str, os.PathLike)) else list(v))
            for k, v in metrics.items()
        }
    return {"run": list(metrics)}


def plot_training_curves(
    metrics: Any,
    *,
    loss_keys: Sequence[str] | None = None,
    val_keys: Sequence[str] | None = None,
    smooth: int = 1,
    title: str | None = None,
):
    """Training loss and validation Dice against iterations, from ``metrics.jsonl`` rows.

    Rows need an ``iteration`` counter (as training writes them). By default the loss
    panel shows every numeric key whose name contains ``loss``, and the validation panel every
    key that starts with ``val_`` or ``dice`` (e.g. ``val_kidney``, ``val_tumor``); rows without
    a key are skipped for that curve, so training and validation rows may alternate.

    Args:
        metrics: a run folder or ``metrics.jsonl`` path, a list of row dicts, or a mapping
            run name → either (one colour per run; with several runs one key under the panels
            names each run's colour and each key's line style).
        loss_keys: keys for the left panel. Default: auto-detected as above.
        val_keys: keys for the right panel. Default: auto-detected as above.
        smooth: moving-average window (rows) for the loss curves. Default 1 (none).
        title: figure title.

    Returns:
        The Figure with two axes (loss, validation Dice).

    Raises:
        DataError: no row has an iteration counter and a loss.
    """
    plt = _pyplot()
    runs = _as_runs(metrics)
    if smooth < 1:
        raise DataError(f"smooth={smooth!r}: must be >= 1")
    multi = len(runs) > 1
    # several runs: one colour per run and one line style per key, keyed once under the panels
    # (a legend entry per run x key covers the plots and squeezes them)
    fig, (ax_l, ax_v) = plt.subplots(1, 2, figsize=(10, 4.6 if multi else 3.6), layout="constrained")
    styles = ["-", "--", ":", "-."]
    any_loss = any_val = False
    run_handles: list = []
    style_handles: dict[str, Line2D] = {}
    for r, (name, rows) in enumerate(runs.items()):
        keys = sorted(
            {
                k
                for row in rows
                for k, v in row.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        )
        lk = list(loss_keys) if loss_keys is not None else [k for k in keys if "loss" in k]
        vk = (
            list(val_keys)
            if val_keys is not None
            else [k for k in keys if k.startswith("val_") or k.startswith("dice")]
        )
        colour = f"C{r % 10}"
        drawn = False
        for panel, ax, panel_keys in (("loss", ax_l, lk), ("val", ax_v, vk)):
            for i, k in enumerate(panel_keys):
                x, y = _series(rows, k)
                if not x.size:
                    continue
                if panel == "loss" and smooth > 1 and y.size >= smooth:
                    y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
                    x = x[smooth - 1 :]
                if k not in style_handles:  # one line style per key over both panels, keyed once
                    ls = styles[len(style_handles) % len(styles)]
                    style_handles[k] = Line2D([], [], ls=ls, color="0.3", label=k)
                style = style_handles[k].get_linestyle()
                ax.plot(
                    x,
                    y,
                    style,
                    marker="o" if panel == "val" else None,
                    ms=3,
                    color=colour if multi else f"C{i}",
                    label=k,
                )
                drawn = True
                any_loss = any_loss or panel == "loss"
                any_val = any_val or panel == "val"
        if drawn:
            run_handles.append(Patch(facecolor=colour, label=name))
    if not any_loss:
        plt.close(fig)
        raise DataError("plot_training_curves: no row has an iteration counter and a loss value")
    ax_l.set_xlabel("iteration", fontsize=FONT_LABEL)
    ax_l.set_ylabel("Dice loss (1 - Dice)", fontsize=FONT_LABEL)
    ax_v.set_xlabel("iteration", fontsize=FONT_LABEL)
    ax_v.set_ylabel("validation Dice", fontsize=FONT_LABEL)
    ax_v.set_ylim(0, 1)
    for ax in (ax_l, ax_v):
        ax.tick_params(labelsize=FONT_TICK)
    if multi:
        handles = [*run_handles, *style_handles.values()]
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=min(len(handles), 5),
            fontsize=FONT_LEGEND,
        )
    else:
        ax_l.legend(fontsize=FONT_LEGEND)
        if any_val:
            ax_v.legend(fontsize=FONT_LEGEND)
    if not any_val:
        ax_v.text(
            0.5,
            0.5,
            "no validation rows yet",
            ha="center",
            va="center",
            transform=ax_v.transAxes,
            fontsize=FONT_LABEL,
        )
    if title:
        fig.suptitle(title, fontsize=FONT_TITLE)
    return fig


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


def plot_dice_per_case(
    table,
    *,
    group: str | None = "model",
    regions: Sequence[str] = ("kidney", "tumor"),
    title: str | None = None,
):
    """Per-case Dice as dots, one panel per region, one column of dots per group (model).

    Args:
        table: a per-case DataFrame (:func:`kitsmsan.metrics.dice_table`) with ``case_id`` and the
            region columns; optional ``group`` column.
        group: column naming the model; None (or absent) plots a single group. Default ``"model"``.
        regions: score columns to plot. Default ``("kidney", "tumor")``.
        title: figure title.

    Returns:
        The Figure with ``len(regions)`` axes, one above the other at :data:`BOOK_COLUMN_IN`
        wide; cases are joined across groups by thin lines so a hard case can be followed from
        model to model. NaN scores (both masks empty) are skipped.
    """
    plt = _pyplot()
    for col in ("case_id", *regions):
        if col not in table.columns:
            raise DataError(f"plot_dice_per_case: table has no column {col!r}")
    if group is not None and group in table.columns:
        names = list(dict.fromkeys(table[group].tolist()))
    else:
        group, names = None, ["all"]
    cases = list(dict.fromkeys(table["case_id"].tolist()))
    # one row per region at the column's width, so the 10 pt text is not scaled below 10 pt
    fig, axes = plt.subplots(
        len(regions),
        1,
        figsize=(BOOK_COLUMN_IN, 2.6 * len(regions) + 1.0),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    axes = axes.T  # (1, regions): one panel per region, top to bottom
    for ax, region in zip(axes[0], regions):
        for ci, case in enumerate(cases):
            rows = table[table["case_id"] == case]
            xs, ys = [], []
            for gi, name in enumerate(names):
                sub = rows if group is None else rows[rows[group] == name]
                if len(sub) and np.isfinite(float(sub[region].iloc[0])):
                    xs.append(gi)
                    ys.append(float(sub[region].iloc[0]))
            ax.plot(xs, ys, "-", color="0.8", lw=0.7, zorder=1)
            ax.scatter(xs, ys, s=18, color=f"C{ci % 10}", zorder=2, label=str(case))
        means = []
        for name in names:
            sub = table if group is None else table[table[group] == name]
            v = np.asarray(sub[region], dtype=np.float64)
            means.append(np.nanmean(v) if np.isfinite(v).any() else np.nan)
        ax.scatter(range(len(names)), means, marker="_", s=400, color="k", zorder=3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=FONT_TICK)
        ax.tick_params(axis="x", labelbottom=ax is axes[0, -1])  # the names under the last panel
        ax.tick_params(axis="y", labelsize=FONT_TICK)
        ax.set_ylabel("Dice", fontsize=FONT_LABEL)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{region} Dice (bar = mean)", fontsize=FONT_LABEL)
    if len(cases) <= 12:
        fig.legend(
            *axes[0, -1].get_legend_handles_labels(),
            title="case",
            fontsize=FONT_LEGEND,
            title_fontsize=FONT_LEGEND,
            loc="outside right center",
        )
    if title:
        fig.suptitle(title, fontsize=FONT_TITLE)
    return fig


def plot_grouped_bars(
    values: Mapping[str, Mapping[str, float]],
    *,
    errors: Mapping[str, Mapping[str, float]] | None = None,
    ylabel: str = "Dice",
    ylim: tuple[float, float] | None = (0.0, 1.0),
    title: str | None = None,
):
    """Grouped bars: one group per outer key, one bar per inner key (e.g. setting → region → Dice).

    Args:
        values: group → (bar name → value); NaN values are drawn as missing bars.
        errors: optional matching standard deviations (error bars).
        ylabel: y-axis label. Default ``"Dice"``.
        ylim: y limits, None for automatic. Default (0, 1).
        title: axes title.

    Returns:
        The Figure (one axes, the legend under it); each bar is annotated with its value, with
        headroom above the highest bar so the labels stay under the title; group names wrap to
        the width of their group.
    """
    plt = _pyplot()
    if not values:
        raise DataError("plot_grouped_bars: values is empty")
    groups = list(values)
    bars = list(dict.fromkeys(k for g in groups for k in values[g]))
    width = 0.8 / max(1, len(bars))
    # each group gets room for its bars' value labels (about 0.4 in per bar) and its wrapped name;
    # the legend goes under the axes so the bars keep the width
    group_in = max(1.3, 0.45 * len(bars) + 0.2)
    legend_rows = math.ceil(len(bars) / 3)
    fig, ax = plt.subplots(
        figsize=(max(4.0, group_in * len(groups) + 1.0), 3.6 + 0.3 * legend_rows), layout="constrained"
    )
    bar_in = group_in * width
    value_rotation = 90 if bar_in < 0.34 else 0  # a value label wider than its bar stands upright
    for b, bar in enumerate(bars):
        xs = np.arange(len(groups)) + (b - (len(bars) - 1) / 2) * width
        ys = [float(values[g].get(bar, np.nan)) for g in groups]
        err = None
        if errors is not None:
            err = [float(errors.get(g, {}).get(bar, 0.0)) for g in groups]
        rects = ax.bar(
            xs,
            ys,
            width,
            yerr=err,
            capsize=3,
            label=bar,
            color=REGION_COLORS.get(bar, f"C{b % 10}"),
            alpha=0.85,
        )
        for rect, y in zip(rects, ys):
            if np.isfinite(y):
                ax.annotate(
                    f"{y:.2f}",
                    (rect.get_x() + rect.get_width() / 2, y),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    rotation=value_rotation,
                    fontsize=FONT_TICK,
                )
    ax.set_xticks(range(len(groups)))
    wrap = max(8, int(group_in * 72 / (0.62 * FONT_TICK)) - 1)  # characters that fit under a group
    ax.set_xticklabels([textwrap.fill(str(g), wrap) for g in groups], fontsize=FONT_TICK)
    ax.tick_params(axis="y", labelsize=FONT_TICK)
    ax.set_ylabel(ylabel, fontsize=FONT_LABEL)
    if ylim is not None:
        ax.set_ylim(*ylim)
    low, high = ax.get_ylim()
    ticks = [t for t in ax.get_yticks() if low - 1e-9 <= t <= high + 1e-9]
    headroom = (0.3 if value_rotation else 0.14) * (high - low)  # the value labels stay under the title
    ax.set_ylim(low, high + headroom)
    ax.set_yticks(ticks)
    fig.legend(
        *ax.get_legend_handles_labels(),
        fontsize=FONT_LEGEND,
        loc="outside lower center",
        ncol=min(3, len(bars)),
        frameon=False,
    )
    if title:  # wrapped to the figure's width, so a narrow chart keeps its whole title
        chars = max(20, int(fig.get_figwidth() * 72 / (0.58 * FONT_TITLE)))
        ax.set_title(textwrap.fill(title, chars), fontsize=FONT_TITLE)
    return fig


# --------------------------------------------------------------------------------------------
# animation (the static, offline-playable fallback of the slice viewer)
# --------------------------------------------------------------------------------------------


def slice_animation(
    image: np.ndarray,
    label: np.ndarray | None = None,
    preds: Mapping[str, np.ndarray] | None = None,
    *,
    window: tuple[float, float] = HU_WINDOW,
    alpha: float = 0.45,
    slices: Sequence[int] | None = None,
    max_frames: int = 48,
    interval: int = 150,
    size: float = 2.4,
    ncols: int = 4,
):
    """An axial fly-through: one panel per layer (ground truth, each prediction), one frame per slice.

    ``anim.to_jshtml()`` (see :func:`animation_html`) gives self-contained HTML with play/step
    buttons that works in the static book without a kernel or a network.

    Args:
        image: ``(Z, Y, X)`` in HU.
        label: optional ground truth.
        preds: optional name → predicted labels, one panel each.
        window: display window. Default (-200, 500).
        alpha: overlay opacity. Default 0.45.
        slices: frames' slice indices; default every slice, thinned evenly to ``max_frames``; the
            thinned list always holds the slice with the most tumour, and the animation starts there
            (and loops through the rest), so its first frame shows the tumour.
        max_frames: most frames when ``slices`` is None. Default 48.
        interval: milliseconds between frames. Default 150.
        size: inches per panel. Default 2.4.
        ncols: panels per row; more layers wrap onto further rows, so seven layers at the book's
            column width stay readable (about 170 px each rather than 65). Default 4.

    Returns:
        A :class:`matplotlib.animation.FuncAnimation` (its figure is closed so it is not also
        shown as a still image); ``anim.kitsmsan_slices`` is the slice of each frame. The figure
        carries a colour key (kidney, tumour).
    """
    plt = _pyplot()
    image = _check_volume(image, "image")
    layers = [
        (
            "image" if label is None else "ground truth",
            None if label is None else _check_volume(label, "label"),
        )
    ]
    for name, p in (preds or {}).items():
        layers.append((name, _check_volume(p, f"preds[{name!r}]")))
    for name, lab in layers:
        if lab is not None:
            _check_same_shape(image, lab, name)
    if slices is None:
        depth = image.shape[0]
        slices = np.unique(np.linspace(0, depth - 1, min(depth, max_frames)).round().astype(int)).tolist()
        if label is not None and (label == TUMOR).any():
            best = pick_slices(label, 1, prefer=TUMOR)[0]
            nearest = int(np.argmin([abs(z - best) for z in slices]))
            slices[nearest] = best  # the thinned list keeps the richest tumour slice
            slices = sorted(set(slices))
            start = slices.index(best)
            slices = slices[start:] + slices[:start]
    if not slices:
        raise DataError("slice_animation: no slices to show")
    if ncols < 1:
        raise DataError(f"ncols={ncols!r}: must be >= 1")
    ncols = min(ncols, len(layers))
    nrows = math.ceil(len(layers) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(size * ncols, (size + 0.3) * nrows + 0.4),
        squeeze=False,
        constrained_layout=True,
    )
    for ax in list(axes.flat)[len(layers) :]:
        ax.set_visible(False)
    artists = []
    for ax, (name, lab) in zip(axes.flat, layers):
        z = slices[0]
        artists.append(
            ax.imshow(
                compose_rgb(image[z], None if lab is None else lab[z], window=window, alpha=alpha),
                interpolation="nearest",
            )
        )
        ax.set_axis_off()
        ax.set_title(name, fontsize=FONT_LABEL)
    caption = fig.suptitle(f"slice {slices[0]}", fontsize=FONT_LABEL)
    if any(lab is not None for _, lab in layers):
        add_label_key(fig, label_key_handles())

    def draw(frame: int):
        z = slices[frame]
        for art, (_, lab) in zip(artists, layers):
            art.set_data(compose_rgb(image[z], None if lab is None else lab[z], window=window, alpha=alpha))
        caption.set_text(f"slice {z}")
        return [*artists, caption]

    anim = animation.FuncAnimation(fig, draw, frames=len(slices), interval=interval, blit=False)
    anim.kitsmsan_slices = list(slices)
    plt.close(fig)
    return anim


def animation_html(anim, *, default_mode: str = "loop") -> str:
    """Self-contained JavaScript player of an animation (``to_jshtml``), playable offline.

    Args:
        anim: a matplotlib animation, e.g. from :func:`slice_animation`.
        default_mode: ``"loop"``, ``"once"`` or ``"reflect"``. Default ``"loop"``.

    Returns:
        HTML text (frames embedded as base64 PNGs).
    """
    if default_mode not in ("loop", "once", "reflect"):
        raise DataError(f"default_mode={default_mode!r}: must be 'loop', 'once' or 'reflect'")
    return anim.to_jshtml(default_mode=default_mode)
