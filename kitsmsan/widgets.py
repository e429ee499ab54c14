"""An ipywidgets slice viewer: case, slice, window/level, overlays of the ground truth, each model,
the ensemble, the models' disagreement and the multi-scale attention weights (notebook 6).

Two rendering modes, chosen by ``precompute``:

* **precomputed** (the default for small volumes): every (case, layer, slice) frame is rendered once
  to a PNG and held in nested :class:`ipywidgets.Stack` widgets. The case dropdown, the layer
  buttons, the slice slider and its play button are connected to the stacks with
  :func:`ipywidgets.jslink`, which runs in the browser, so in the *static* book (saved widget state,
  no kernel) every control on the page works. Window/level and opacity would need a kernel to
  re-render, so this mode does not show them; the frames must fit in :data:`STATIC_BUDGET_BYTES`.
* **live** (large volumes, e.g. real 512 × 512 × 300 cases on Colab): one image re-rendered by the
  kernel on every change, nothing stored in advance.

``ipywidgets`` is imported lazily, so ``import kitsmsan.widgets`` works without it; building a
viewer without it raises :class:`ImportError` naming the package to install.

All pixels come from :func:`kitsmsan.viz.compose_rgb`, so the viewer, the figures and the animation
show the same colours.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import image as mpimg

from kitsmsan.data.kits19 import TUMOR
from kitsmsan.data.preprocess import HU_WINDOW, normalize
from kitsmsan.errors import DataError
from kitsmsan.inference import window_starts
from kitsmsan.viz import LABEL_COLORS, compose_rgb, disagreement_map, disagreement_max, window_from_level

#: layer names that are not models
IMAGE_LAYER = "image"
GT_LAYER = "ground truth"
DISAGREEMENT_LAYER = "disagreement"
ATTENTION_LAYER = "attention"
#: name under which an ensemble prediction is expected in ``preds`` (excluded from disagreement)
ENSEMBLE_NAME = "ensemble"

#: colour maps of the heat layers (also named in the colour key)
DISAGREEMENT_CMAP = "inferno"
ATTENTION_CMAP = "magma"

#: above this many rendered pixels (layers × slices × H × W) ``precompute="auto"`` picks live mode
AUTO_PRECOMPUTE_PIXELS = 20_000_000


def _ipywidgets():
    """Import ipywidgets, or fail with the install command."""
    try:  # lazy: ipywidgets is an optional extra (kitsmsan[widgets]); the static viewer works without it
        import ipywidgets
    except ImportError as exc:  # pragma: no cover - exercised only without ipywidgets
        raise ImportError(
            "kitsmsan.widgets needs ipywidgets: pip install 'kitsmsan[widgets]' (or pip install ipywidgets)"
        ) from exc
    return ipywidgets


@dataclass
class ViewerCase:
    """The arrays of one case shown by :class:`SliceViewer`.

    Attributes:
        image: ``(Z, Y, X)`` CT in HU.
        label: optional ``(Z, Y, X)`` ground truth in {0, 1, 2}.
        preds: model name → ``(Z, Y, X)`` predicted labels (an ``"ensemble"`` entry is shown as a
            layer but left out of the disagreement count). Default empty.
        attention: optional ``(Z, Y, X)`` attention weights in [0, 1] (e.g. the channel mean of the
            multi-scale attention layer's sigmoid output, upsampled to the image).
    """

    image: np.ndarray
    label: np.ndarray | None = None
    preds: dict[str, np.ndarray] = field(default_factory=dict)
    attention: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image)
        if self.image.ndim != 3 or self.image.size == 0:
            raise DataError(f"image: expected a non-empty (Z, Y, X) volume, got shape {self.image.shape}")
        if self.label is not None:
            self.label = self._same("label", self.label)
        self.preds = {str(k): self._same(f"preds[{k!r}]", v) for k, v in dict(self.preds).items()}
        if self.attention is not None:
            self.attention = self._same("attention", self.attention)

    def _same(self, name: str, array: Any) -> np.ndarray:
        array = np.asarray(array)
        if array.shape != self.image.shape:
            raise DataError(f"{name}: shape {array.shape} differs from image shape {self.image.shape}")
        return array

    @property
    def model_preds(self) -> dict[str, np.ndarray]:
        """The predictions of individual models (everything but the ensemble)."""
        return {k: v for k, v in self.preds.items() if k != ENSEMBLE_NAME}

    def layers(self) -> list[str]:
        """Layer names in display order: image, ground truth, models, ensemble, disagreement, attention."""
        names = [IMAGE_LAYER]
        if self.label is not None:
            names.append(GT_LAYER)
        names += list(self.model_preds)
        if ENSEMBLE_NAME in self.preds:
            names.append(ENSEMBLE_NAME)
        if len(self.model_preds) >= 2:
            names.append(DISAGREEMENT_LAYER)
        if self.attention is not None:
            names.append(ATTENTION_LAYER)
        return names


def render_frame(
    case: ViewerCase,
    layer: str,
    z: int,
    *,
    window: tuple[float, float] = HU_WINDOW,
    alpha: float = 0.45,
    disagreement: np.ndarray | None = None,
) -> np.ndarray:
    """One viewer frame as RGB pixels.

    Args:
        case: the case.
        layer: one of ``case.layers()``.
        z: axial slice index.
        window: display window ``(low, high)`` in HU. Default (-200, 500) (MSAN paper, §2.1).
        alpha: overlay opacity. Default 0.45.
        disagreement: the case's :func:`kitsmsan.viz.disagreement_map`, if already computed.

    Returns:
        uint8 ``(Y, X, 3)``.

    Raises:
        DataError: unknown layer or slice out of range.
    """
    if layer not in case.layers():
        raise DataError(f"layer {layer!r}: not one of {case.layers()}")
    if not 0 <= z < case.image.shape[0]:
        raise DataError(f"slice {z}: outside 0..{case.image.shape[0] - 1}")
    image = case.image[z]
    if layer == IMAGE_LAYER:
        return compose_rgb(image, window=window)
    if layer == GT_LAYER:
        return compose_rgb(image, case.label[z], window=window, alpha=alpha)
    if layer == DISAGREEMENT_LAYER:
        if disagreement is None:
            disagreement = disagreement_map(case.model_preds)
        top = disagreement_max(len(case.model_preds))
        return compose_rgb(
            image,
            window=window,
            heat=disagreement[z].astype(np.float32),
            heat_range=(0.0, float(top)),
            heat_alpha=0.85,
            cmap=DISAGREEMENT_CMAP,
        )
    if layer == ATTENTION_LAYER:
        return compose_rgb(image, window=window, heat=case.attention[z], heat_alpha=0.7, cmap=ATTENTION_CMAP)
    return compose_rgb(image, case.preds[layer][z], window=window, alpha=alpha)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode a uint8 ``(H, W, 3)`` image as PNG bytes."""
    buf = io.BytesIO()
    mpimg.imsave(buf, np.ascontiguousarray(rgb), format="png")
    return buf.getvalue()


def _thin(depth: int, max_slices: int) -> list[int]:
    """At most ``max_slices`` evenly spread slice indices of ``range(depth)``."""
    if depth <= max_slices:
        return list(range(depth))
    return np.unique(np.linspace(0, depth - 1, max_slices).round().astype(int)).tolist()


#: what a pre-rendered viewer may add to a page, in bytes of PNG frames (the widget state stores them
#: base64-encoded, about 4/3 of this); :class:`SliceViewer` refuses to pre-render more
STATIC_BUDGET_BYTES = 12_000_000


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(255 * float(v)):02x}" for v in rgb[:3])


def key_html(case: ViewerCase) -> str:
    """The viewer's colour key (HTML): the label colours, and the scales of the heat layers present.

    The disagreement scale runs from 0 (every model agrees with the majority) to
    :func:`kitsmsan.viz.disagreement_max` of the ``N`` models (3 for five), with the
    colour map and range :func:`render_frame` uses; the attention scale from 0 to 1.
    """

    def swatch(colour: str, text: str) -> str:
        return (
            f'<span style="display:inline-block;width:14px;height:14px;background:{colour};'
            f'vertical-align:middle;margin:0 4px 0 10px;border:1px solid #555"></span>{text}'
        )

    def scale(cmap: str, low: str, high: str, what: str) -> str:
        stops = ", ".join(_hex(matplotlib.colormaps[cmap](v)) for v in np.linspace(0.0, 1.0, 6))
        return (
            f'<span style="margin-left:10px">{what}: {low} '
            f'<span style="display:inline-block;width:120px;height:12px;vertical-align:middle;'
            f'background:linear-gradient(to right, {stops});border:1px solid #555"></span> {high}</span>'
        )

    parts = []
    layers = case.layers()
    if GT_LAYER in layers or case.preds:
        kidney, tumor = (_hex(LABEL_COLORS[k]) for k in sorted(LABEL_COLORS))
        parts.append(
            swatch(kidney, "kidney")
            + swatch(tumor, "tumour")
            + '<span style="margin-left:6px">(ground truth, or the chosen model\'s prediction)</span>'
        )
    if DISAGREEMENT_LAYER in layers:
        top = disagreement_max(len(case.model_preds))
        parts.append(
            scale(DISAGREEMENT_CMAP, "0 (all agree)", f"{top} models against the majority", "disagreement")
        )
    if ATTENTION_LAYER in layers:
        parts.append(scale(ATTENTION_CMAP, "0", "1", "attention weight"))
    items = "".join(f'<div style="white-space:nowrap">{part}</div>' for part in parts)
    return f'<div class="kitsmsan-viewer-key" style="font-size:14px;line-height:1.8">{items}</div>'


def _start_slice(case: ViewerCase, zs: list[int]) -> int:
    """The slice the viewer opens on: the one with the most tumour, else the middle labelled slice."""
    label = case.label
    if label is not None and (label == TUMOR).any():
        target = int(np.argmax((label == TUMOR).sum(axis=(1, 2))))
    elif label is not None and (label > 0).any():
        fg = np.flatnonzero(np.any(label > 0, axis=(1, 2)))
        target = int(fg[len(fg) // 2])
    else:
        return zs[len(zs) // 2]
    return min(zs, key=lambda z: abs(z - target))


def _slices_of(case: ViewerCase, max_slices: int) -> list[int]:
    """At most ``max_slices`` evenly thinned slices, always including the slice with the most tumour."""
    zs = _thin(case.image.shape[0], max_slices)
    if case.label is not None and (case.label == TUMOR).any():
        best = int(np.argmax((case.label == TUMOR).sum(axis=(1, 2))))
        if best not in zs:
            zs[min(range(len(zs)), key=lambda i: abs(zs[i] - best))] = best
            zs = sorted(set(zs))
    return zs


class _Panel:
    """The controls and frames of one case in the pre-rendered viewer."""

    def __init__(self, zs: list[int], layers: list[str], start: int, widgets: Any) -> None:
        self.zs, self.layers = zs, layers
        opening = GT_LAYER if GT_LAYER in layers else layers[0]  # the tumour slice, with its labels
        self.layer_tb = widgets.ToggleButtons(
            options=layers, value=opening, description="layer", style={"button_width": "auto"}
        )
        self.slider = widgets.SelectionSlider(
            options=[str(z) for z in zs], value=str(start), description="slice", continuous_update=True
        )
        self.play = widgets.Play(
            min=0, max=len(zs) - 1, value=zs.index(start), step=1, interval=200, description="play"
        )
        self.images: dict[str, list[Any]] = {}
        self.links: list[Any] = []


class SliceViewer:
    """Interactive viewer of one or more cases (notebook 6).

    Two modes (see the module docstring):

    * pre-rendered (``precompute=True``): controls case (dropdown), layer (toggle buttons: image,
      ground truth, each model, ensemble, disagreement, attention) and slice (slider with a play
      button), all linked in the browser, so every one of them works on a static page without a
      kernel. The window and the overlay opacity are fixed (``window``, ``alpha``): they would need
      a kernel to re-render, so they are not offered. The frames must fit in ``budget_bytes``.
    * live (``precompute=False``): the same controls plus window level and width and overlay
      opacity; every change is re-rendered by the kernel (Jupyter, Colab).

    A colour key (kidney, tumour, the disagreement and attention scales) sits under the image; the
    viewer opens each case on the slice with the most tumour. Display it by leaving it as the last
    expression of a cell (it has a ``_repr_mimebundle_``) or with ``display(viewer.widget)``.

    Args:
        cases: case id → :class:`ViewerCase` (or a mapping with its fields).
        window: display window ``(low, high)`` in HU (initial value in live mode). Default (-200, 500).
        alpha: overlay opacity (initial value in live mode). Default 0.45.
        precompute: ``True``, ``False`` or ``"auto"`` (default): pre-render when every case needs at
            most :data:`AUTO_PRECOMPUTE_PIXELS` rendered pixels.
        max_slices: in pre-rendered mode, at most this many slices per case (evenly thinned, always
            including the slice with the most tumour). Default 48.
        image_width: displayed width in pixels. Default 360.
        budget_bytes: most PNG bytes the pre-rendered frames may take. Default
            :data:`STATIC_BUDGET_BYTES` (12 MB).

    Attributes:
        payload_bytes: PNG bytes of all pre-rendered frames (0 in live mode): what the viewer adds to
            a static page, before base64 (×4/3).

    Raises:
        DataError: no cases, bad arguments, arrays of mismatched shapes, or pre-rendered frames over
            ``budget_bytes`` (the message gives the size and what to lower).
        ImportError: ipywidgets is not installed.
    """

    def __init__(
        self,
        cases: Mapping[str, ViewerCase | Mapping[str, Any]],
        *,
        window: tuple[float, float] = HU_WINDOW,
        alpha: float = 0.45,
        precompute: bool | str = "auto",
        max_slices: int = 48,
        image_width: int = 360,
        budget_bytes: int = STATIC_BUDGET_BYTES,
    ) -> None:
        if not cases:
            raise DataError("SliceViewer: cases is empty")
        if max_slices < 1:
            raise DataError(f"max_slices={max_slices!r}: must be >= 1")
        if precompute not in (True, False, "auto"):
            raise DataError(f"precompute={precompute!r}: must be True, False or 'auto'")
        low, high = (float(v) for v in window)
        if not high > low:
            raise DataError(f"window={window!r}: high must be above low")
        self.cases: dict[str, ViewerCase] = {
            str(k): v if isinstance(v, ViewerCase) else ViewerCase(**dict(v)) for k, v in cases.items()
        }
        self.max_slices = int(max_slices)
        self.image_width = int(image_width)
        self.budget_bytes = int(budget_bytes)
        if precompute == "auto":
            need = max(
                len(c.layers()) * min(c.image.shape[0], max_slices) * c.image.shape[1] * c.image.shape[2]
                for c in self.cases.values()
            )
            precompute = need <= AUTO_PRECOMPUTE_PIXELS
        self.precompute = bool(precompute)
        self.payload_bytes = 0
        self._window, self._alpha_value = (low, high), float(alpha)
        self._disagreement: dict[str, np.ndarray] = {}
        if self.precompute:
            self._build_static()
        else:
            self._build_live()

    # ------------------------------------------------------------------ state
    @property
    def case_id(self) -> str:
        """The case on show (kernel side)."""
        return self._case_dd.value

    @property
    def case(self) -> ViewerCase:
        """The :class:`ViewerCase` on show."""
        return self.cases[self.case_id]

    @property
    def window(self) -> tuple[float, float]:
        """The display window ``(low, high)`` in HU (from the level/width sliders in live mode)."""
        if self.precompute:
            return self._window
        return window_from_level(self._level.value, self._width.value)

    @property
    def alpha(self) -> float:
        """The overlay opacity."""
        return self._alpha_value if self.precompute else float(self._alpha.value)

    @property
    def _layer_tb(self):
        return self._panels[self.case_id].layer_tb if self.precompute else self._live_layer_tb

    @property
    def _slice(self):
        return self._panels[self.case_id].slider if self.precompute else self._live_slice

    @property
    def layer(self) -> str:
        """The layer on show."""
        return self._layer_tb.value

    @property
    def slice_index(self) -> int:
        """The axial slice on show."""
        return int(self._slice.value)

    @property
    def slices(self) -> list[int]:
        """The slice indices the slider offers for the current case."""
        return list(self._panels[self.case_id].zs) if self.precompute else list(self._zs)

    def frame(
        self, layer: str | None = None, z: int | None = None, *, case_id: str | None = None
    ) -> np.ndarray:
        """RGB pixels of a frame (default: the case, layer and slice on show)."""
        cid = self.case_id if case_id is None else case_id
        if layer is None or z is None:
            if cid != self.case_id:
                raise DataError("frame: give layer and z for a case that is not on show")
            layer = self.layer if layer is None else layer
            z = self.slice_index if z is None else z
        return render_frame(
            self.cases[cid],
            layer,
            int(z),
            window=self.window,
            alpha=self.alpha,
            disagreement=self._disagreement_of(cid),
        )

    def _disagreement_of(self, case_id: str) -> np.ndarray | None:
        case = self.cases[case_id]
        if len(case.model_preds) < 2:
            return None
        if case_id not in self._disagreement:
            self._disagreement[case_id] = disagreement_map(case.model_preds)
        return self._disagreement[case_id]

    # ------------------------------------------------------------------ pre-rendered (static page)
    def _build_static(self) -> None:
        """Render every (case, layer, slice) frame once; link all controls in the browser."""
        w = _ipywidgets()
        first = next(iter(self.cases))
        self._case_dd = w.Dropdown(options=list(self.cases), value=first, description="case")
        layout = w.Layout(width=f"{self.image_width}px")
        self._panels: dict[str, _Panel] = {}
        boxes = []
        for cid, case in self.cases.items():
            zs = _slices_of(case, self.max_slices)
            start = _start_slice(case, zs)
            panel = _Panel(zs, case.layers(), start, w)
            inner = {}
            for layer in panel.layers:
                panel.images[layer] = []
                for z in zs:
                    data = png_bytes(self.frame(layer, z, case_id=cid))
                    self.payload_bytes += len(data)
                    if self.payload_bytes > self.budget_bytes:
                        raise DataError(
                            f"SliceViewer: the pre-rendered frames pass the budget of {self.budget_bytes:,} "
                            f"bytes at case {cid!r}, layer {layer!r}; lower max_slices (now {self.max_slices}), "
                            "show fewer cases, or use precompute=False with a running kernel"
                        )
                    panel.images[layer].append(w.Image(value=data, format="png", layout=layout))
                inner[layer] = w.Stack(children=panel.images[layer], selected_index=zs.index(start))
            outer = w.Stack(
                children=[inner[layer] for layer in panel.layers],
                selected_index=panel.layers.index(panel.layer_tb.value),
            )
            panel.links = [
                w.jslink((panel.play, "value"), (panel.slider, "index")),
                w.jslink((panel.layer_tb, "index"), (outer, "selected_index")),
            ]
            panel.links += [
                w.jslink((panel.slider, "index"), (stack, "selected_index")) for stack in inner.values()
            ]
            self._panels[cid] = panel
            boxes.append(
                w.VBox([panel.layer_tb, w.HBox([panel.play, panel.slider]), outer, w.HTML(key_html(case))])
            )
        self._cases_stack = w.Stack(children=boxes, selected_index=0)
        self._links = [w.jslink((self._case_dd, "index"), (self._cases_stack, "selected_index"))]
        self._links += [link for panel in self._panels.values() for link in panel.links]
        frames = sum(len(p.zs) * len(p.layers) for p in self._panels.values())
        low, high = self._window
        self._note = w.HTML(
            f"<small>Every control works on this page without a kernel: {frames} frames "
            f"({self.payload_bytes / 1e6:.1f} MB of PNG) are pre-rendered with the window "
            f"[{low:g}, {high:g}] HU and opacity {self._alpha_value:g}. To change those, run the notebook "
            "with a kernel and <code>precompute=False</code>.</small>"
        )
        self.widget = w.VBox([self._case_dd, self._cases_stack, self._note])

    # ------------------------------------------------------------------ live (kernel)
    def _build_live(self) -> None:
        w = _ipywidgets()
        low, high = self._window
        level, width = (low + high) / 2.0, high - low
        first = next(iter(self.cases))
        self._case_dd = w.Dropdown(options=list(self.cases), value=first, description="case")
        self._live_layer_tb = w.ToggleButtons(
            options=self.cases[first].layers(), description="layer", style={"button_width": "auto"}
        )
        self._live_slice = w.SelectionSlider(options=["0"], description="slice", continuous_update=True)
        self._play = w.Play(min=0, max=0, step=1, interval=200, description="play")
        self._level = w.IntSlider(
            value=int(round(level)),
            min=-1000,
            max=1500,
            step=10,
            description="level",
            continuous_update=False,
        )
        self._width = w.IntSlider(
            value=int(round(width)), min=10, max=3000, step=10, description="width", continuous_update=False
        )
        self._alpha = w.FloatSlider(
            value=self._alpha_value,
            min=0.0,
            max=1.0,
            step=0.05,
            description="opacity",
            continuous_update=False,
        )
        self._note = w.HTML("<small>live mode: every control re-renders in the kernel</small>")
        self._key = w.HTML()
        self._links = [w.jslink((self._play, "value"), (self._live_slice, "index"))]
        self._live_image = w.Image(format="png", layout=w.Layout(width=f"{self.image_width}px"))
        self._load_case(first)
        self._case_dd.observe(lambda ch: self._load_case(ch["new"]), names="value")
        for control in (self._level, self._width, self._alpha, self._live_slice, self._live_layer_tb):
            control.observe(lambda ch: self._render_live(), names="value")
        self.widget = w.VBox(
            [
                self._case_dd,
                self._live_layer_tb,
                w.HBox([self._play, self._live_slice]),
                w.HBox([self._level, self._width, self._alpha]),
                self._live_image,
                self._key,
                self._note,
            ]
        )

    def _load_case(self, case_id: str) -> None:
        """Live mode: set up slider and layers for ``case_id`` and render its opening frame."""
        case = self.cases[case_id]
        self._zs = list(range(case.image.shape[0]))
        layers = case.layers()
        keep = self._live_layer_tb.value if self._live_layer_tb.value in layers else layers[0]
        self._live_layer_tb.options = layers
        self._live_layer_tb.value = keep
        start = _start_slice(case, self._zs)
        self._live_slice.options = [str(z) for z in self._zs]
        self._live_slice.value = str(start)
        self._play.max = len(self._zs) - 1
        self._play.value = self._zs.index(start)
        self._key.value = key_html(case)
        self._render_live()

    def _render_live(self) -> None:
        self._live_image.value = png_bytes(self.frame())

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def attention_volume(
    model,
    image_hu: np.ndarray,
    *,
    level: int = 0,
    num_slices: int = 4,
    divisor: int = 16,
    device: str = "cpu",
) -> np.ndarray:
    """The multi-scale attention weights of a whole volume, for the viewer's attention layer (§2.2).

    The volume is normalised like training and inference (:func:`kitsmsan.data.preprocess.normalize`),
    padded in-plane to a multiple of ``divisor`` with 0 (the window's lower end, as
    :func:`kitsmsan.inference.predict_case` does) and cut into windows of ``num_slices`` slices
    (:func:`kitsmsan.inference.window_starts` with stride = ``num_slices``; the last window is
    aligned to the end and overwrites the overlap). Each window goes through
    :meth:`kitsmsan.models.MSAN.attention_maps`; the weights of ``level`` are averaged over
    channels and brought to the slice size by pixel repetition.

    Args:
        model: an :class:`~kitsmsan.models.MSAN` with attention (``config.attention`` True).
        image_hu: ``(Z, Y, X)`` CT in HU.
        level: which skip connection's attention layer (0 = full resolution … 3). Default 0.
        num_slices: window depth. Default 4 (§3.1).
        divisor: in-plane padding multiple. Default 16 (four poolings).
        device: where to run the model. Default ``"cpu"``.

    Returns:
        float32 ``(Z, Y, X)`` weights in (0, 1).

    Raises:
        DataError: ``image_hu`` not a non-empty 3D array, or ``level`` not a layer of the model.
        ConfigError: the model has no attention layers (raised by ``attention_maps``).
    """
    image_hu = np.asarray(image_hu)
    if image_hu.ndim != 3 or image_hu.size == 0:
        raise DataError(f"image_hu: expected a non-empty (Z, Y, X) volume, got shape {image_hu.shape}")
    Z, Y, X = image_hu.shape
    Zp = max(Z, num_slices)
    Hp, Wp = math.ceil(Y / divisor) * divisor, math.ceil(X / divisor) * divisor
    volume = torch.from_numpy(normalize(image_hu))  # (Z, Y, X) in [0, 1]
    if Zp > Z:  # too few slices: repeat the last
        volume = torch.cat([volume, volume[-1:].expand(Zp - Z, Y, X)], dim=0)
    volume = F.pad(volume, (0, Wp - X, 0, Hp - Y))  # (Zp, Hp, Wp)
    out = np.zeros((Zp, Hp, Wp), dtype=np.float32)
    was_training = model.training
    model.to(device).eval()
    try:
        for start in window_starts(Zp, num_slices, num_slices):
            x = volume[start : start + num_slices][None, None].to(device)  # (1, 1, D, Hp, Wp)
            maps = model.attention_maps(x)
            if level not in maps:
                raise DataError(f"level={level!r}: the model's attention levels are {sorted(maps)}")
            w = maps[level][0].float().mean(dim=0).cpu().numpy()  # (D, Hp / 2**level, Wp / 2**level)
            factor = (Hp // w.shape[1], Wp // w.shape[2])
            w = np.repeat(np.repeat(w, factor[0], axis=1), factor[1], axis=2)  # (D, Hp, Wp)
            out[start : start + num_slices] = w
    finally:
        model.train(was_training)
    return np.ascontiguousarray(out[:Z, :Y, :X])


def viewer_from_arrays(
    image: np.ndarray,
    label: np.ndarray | None = None,
    preds: Mapping[str, np.ndarray] | None = None,
    attention: np.ndarray | None = None,
    *,
    case_id: str = "case",
    **kwargs,
) -> SliceViewer:
    """A :class:`SliceViewer` of a single case given as arrays (keyword arguments go to the viewer)."""
    return SliceViewer({case_id: ViewerCase(image, label, dict(preds or {}), attention)}, **kwargs)
