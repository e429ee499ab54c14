"""Figures of the method drawn from the code: every shape, width and position comes from a network.

The functions here build the network of a :class:`~kitsmsan.models.msan.ModelConfig` on PyTorch's
``meta`` device (no weights are allocated, so the paper-size network costs nothing), run one forward
with hooks on every module and draw what the hooks saw. A figure therefore cannot disagree with the
network the reader builds: change the config and the figure changes with it.

* :func:`trace_network` — the shapes of every module's inputs and outputs, the attention weights,
  and where each deep-supervision head reads (:class:`NetworkTrace`);
* :func:`draw_attention` — the multi-scale attention layer (MSAN paper, §2.2, Fig. 1);
* :func:`draw_network` — the whole U of a variant (Fig. 1–2): levels, widths, attention, the Res2Net
  branch and its fusion, the deep-supervision heads;
* :func:`draw_res2net_block` — the 3D Res2Net block (Fig. 3; Gao et al. 2019);
* :func:`draw_vote` — the vote of the five networks over the nested regions and the connected-component
  post-processing (§2.2, §3.1), with a worked example computed by :func:`kitsmsan.ensemble.majority_vote`
  and :func:`kitsmsan.postprocess.keep_largest_components`.

Every drawing function returns a :class:`matplotlib.figure.Figure` built without pyplot (no GUI
backend, no global state); its width is 12.8 inches at 100 dpi, i.e. 1280 pixels, the width the book
is read at. The text of every box is also kept in ``fig.kitsmsan_labels`` (a list of strings), so
tests can read what was drawn.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Patch
from torch import nn

from kitsmsan.ensemble import majority_vote
from kitsmsan.errors import ConfigError
from kitsmsan.models.blocks import Res2NetBlock3d
from kitsmsan.models.msan import MSAN, NUM_POOLS, ModelConfig
from kitsmsan.models.registry import MODEL_REGISTRY, list_models, model_config
from kitsmsan.postprocess import keep_largest_components
from kitsmsan.reproduce import POSTPROCESS_K

#: the paper's training input (§3.1): batch 2, one CT channel, 4 slices of 512 × 512
PAPER_BATCH_INPUT = (2, 1, 4, 512, 512)

#: figure width in inches; at :data:`DPI` this is 1280 pixels
FIG_WIDTH = 12.8
#: resolution of the previews
DPI = 100
#: font size of box texts (points)
FONT = 12

_COLORS = {
    "encoder": "#dbe9f6",
    "decoder": "#fde4cf",
    "bottleneck": "#e5dbf3",
    "attention": "#f7c6c7",
    "res2net": "#d4efdf",
    "head": "#fff2b3",
    "data": "#eeeeee",
    "op": "#ffffff",
}


class _DiagramFigure(Figure):
    """A :class:`~matplotlib.figure.Figure` that displays itself as a PNG in Jupyter.

    The diagrams are built without pyplot, so they do not depend on a notebook's matplotlib backend
    having been set up before the first one is shown.
    """

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=DPI)
        return buf.getvalue()


def format_shape(shape: Sequence[int]) -> str:
    """``(2, 32, 4, 512, 512)`` → ``"2×32×4×512×512"``."""
    return "×".join(str(int(s)) for s in shape)


@dataclass(frozen=True)
class HeadSite:
    """Where one output head of the network reads its features.

    Attributes:
        name: the head module's attribute name (e.g. ``"head"``, ``"aux_head_u3"``).
        level: the U level of the maps it reads (0 = full resolution, 4 = bottleneck), from the
            in-plane size of its input.
        stage: ``"decoder"``, ``"encoder"`` or ``"bottleneck"``.
        source: the module whose output the head reads (``"dec3"``, …), or ``"x4"`` for the fused
            bottleneck (a sum, not a module output).
        in_shape: ``(B, C, D, H, W)`` of the features read.
        out_shape: ``(B, num_classes, D, H, W)`` of the logits.
        output_index: position in the list the forward returns in training mode (0 = main logits).
    """

    name: str
    level: int
    stage: str
    source: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    output_index: int


@dataclass
class NetworkTrace:
    """What one forward of a network on the ``meta`` device saw (see :func:`trace_network`).

    Attributes:
        config: the traced :class:`~kitsmsan.models.msan.ModelConfig`.
        input_shape: ``(B, C, D, H, W)`` of the input.
        outputs: module name → output shape, for every module (``"enc0"``, ``"att1.project"``, …).
        inputs: module name → shapes of its positional tensor inputs.
        heads: the output heads, main head first, then in the order of the training-mode output list.
        attention_weights: level → shape of the recalibration weights ``w`` (empty without attention).
    """

    config: ModelConfig
    input_shape: tuple[int, ...]
    outputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    inputs: dict[str, tuple[tuple[int, ...], ...]] = field(default_factory=dict)
    heads: tuple[HeadSite, ...] = ()
    attention_weights: dict[int, tuple[int, ...]] = field(default_factory=dict)

    @property
    def aux_heads(self) -> tuple[HeadSite, ...]:
        """The deep-supervision heads (every head but the main one)."""
        return tuple(h for h in self.heads if h.output_index > 0)


def _shape(t: Any) -> tuple[int, ...] | None:
    return tuple(int(s) for s in t.shape) if isinstance(t, torch.Tensor) else None


def _level_of(shape: Sequence[int], input_shape: Sequence[int]) -> int:
    """U level of a ``(B, C, D, H, W)`` feature map: log2 of the in-plane reduction."""
    return round(math.log2(input_shape[-1] / shape[-1]))


def trace_network(config: ModelConfig, input_shape: Sequence[int] | None = None) -> NetworkTrace:
    """Shapes of every module of ``MSAN(config)`` for one input, by a forward on the ``meta`` device.

    The network runs in training mode, so the deep-supervision heads (if any) run too; their
    placement is read from the forward itself: the tensor each head consumes is matched with the
    module that produced it (or, for the fused bottleneck ``x4 = enc4(p3) + res2net(p3)``, which no
    single module produces, by its in-plane size).

    Args:
        config: the network to trace.
        input_shape: ``(B, C, D, H, W)``. Default :data:`PAPER_BATCH_INPUT` with ``C =
            config.in_channels``: the paper's batch of 2 windows of 4 × 512 × 512 (§3.1).

    Returns:
        A :class:`NetworkTrace`.

    Raises:
        ConfigError: if ``config`` is not a :class:`~kitsmsan.models.msan.ModelConfig`.
        DataError: if the network refuses ``input_shape`` (see :meth:`~kitsmsan.models.msan.MSAN.check_input`).
    """
    if not isinstance(config, ModelConfig):
        raise ConfigError(f"config: expected a ModelConfig, got {type(config).__name__}")
    if input_shape is None:
        input_shape = (PAPER_BATCH_INPUT[0], config.in_channels, *PAPER_BATCH_INPUT[2:])
    input_shape = tuple(int(s) for s in input_shape)
    with torch.device("meta"):
        model = MSAN(config)
    model.train()
    trace = NetworkTrace(config=config, input_shape=input_shape)
    produced: list[tuple[str, torch.Tensor]] = []  # (child name, output tensor), kept alive for `is`
    consumed: dict[str, torch.Tensor] = {}
    children = dict(model.named_children())

    def hook(name: str):
        def fn(module: nn.Module, args: tuple, output: Any) -> None:
            trace.inputs[name] = tuple(s for s in (_shape(a) for a in args) if s is not None)
            shape = _shape(output)
            if shape is not None:
                trace.outputs[name] = shape
                if name in children:
                    produced.append((name, output))
            if name in children and args and isinstance(args[0], torch.Tensor):
                consumed[name] = args[0]

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    layers = model.attention_layers
    for layer in layers.values():
        layer.record = True
    try:
        with torch.no_grad():
            out = model(torch.empty(input_shape, device="meta"))
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        trace.attention_weights = {lvl: _shape(layer.last_weights) for lvl, layer in layers.items()}
    finally:
        for h in handles:
            h.remove()
        for layer in layers.values():
            layer.record, layer.last_weights = False, None

    heads = []
    for name, module in children.items():
        if not (isinstance(module, nn.Conv3d) and module.out_channels == config.num_classes):
            continue
        if name not in consumed:
            continue  # defined but not run
        fed = consumed[name]
        source = next((n for n, t in produced if t is fed and n != name), None)
        level = _level_of(fed.shape, input_shape)
        if source is None:
            stage, source = (
                ("bottleneck", f"x{NUM_POOLS}") if level == NUM_POOLS else ("decoder", f"u{level}")
            )
        elif source.startswith("enc"):
            stage = "bottleneck" if level == NUM_POOLS else "encoder"
        else:
            stage = "decoder"
        own = next((t for n, t in produced if n == name), None)
        index = next((i for i, o in enumerate(outs) if o is own), -1)
        if index < 0:
            continue  # a head whose output the forward does not return
        heads.append(HeadSite(name, level, stage, source, _shape(fed), trace.outputs[name], index))
    trace.heads = tuple(sorted(heads, key=lambda h: h.output_index))
    return trace


# --------------------------------------------------------------------------------------------
# drawing primitives
# --------------------------------------------------------------------------------------------


class _Canvas:
    """One axes in data coordinates, with boxes, circles and labelled arrows; remembers every text."""

    def __init__(self, width: float, height: float, xlim: float, ylim: float, title: str) -> None:
        self.fig = _DiagramFigure(figsize=(width, height), dpi=DPI)
        self.ax = self.fig.add_axes((0.005, 0.005, 0.99, 0.93))
        self.ax.set_xlim(0, xlim)
        self.ax.set_ylim(0, ylim)
        self.ax.set_axis_off()
        self.fig.suptitle(title, fontsize=FONT + 3, y=0.985)
        self.labels: list[str] = [title]

    def box(
        self,
        x: float,
        y: float,
        w: float,
        h: float,
        text: str,
        kind: str = "op",
        fontsize: float = FONT,
        dashed: bool = False,
    ) -> tuple[float, float, float, float]:
        self.ax.add_patch(
            FancyBboxPatch(
                (x - w / 2, y - h / 2),
                w,
                h,
                boxstyle="round,pad=0.02,rounding_size=0.08",
                facecolor=_COLORS[kind],
                edgecolor="#333333",
                linewidth=1.2,
                linestyle="--" if dashed else "-",
            )
        )
        self.ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)
        self.labels.append(text)
        return (x, y, w, h)

    def circle(
        self, x: float, y: float, symbol: str, r: float = 0.22, kind: str = "op"
    ) -> tuple[float, float, float, float]:
        self.ax.add_patch(Circle((x, y), r, facecolor=_COLORS[kind], edgecolor="#333333", linewidth=1.2))
        self.ax.text(x, y, symbol, ha="center", va="center", fontsize=FONT + 3)
        self.labels.append(symbol)
        return (x, y, 2 * r, 2 * r)

    def text(self, x: float, y: float, text: str, fontsize: float = FONT - 1, **kw: Any) -> None:
        self.ax.text(x, y, text, fontsize=fontsize, **kw)
        self.labels.append(text)

    def arrow(
        self,
        p: tuple[float, float],
        q: tuple[float, float],
        label: str | None = None,
        *,
        color: str = "#333333",
        dashed: bool = False,
        rad: float = 0.0,
        offset: tuple[float, float] = (0, 0.12),
        ha: str = "center",
    ) -> None:
        self.ax.add_patch(
            FancyArrowPatch(
                p,
                q,
                arrowstyle="-|>",
                mutation_scale=14,
                color=color,
                linewidth=1.4,
                linestyle="--" if dashed else "-",
                connectionstyle=f"arc3,rad={rad}",
                shrinkA=0,
                shrinkB=0,
            )
        )
        if label:
            mx, my = (p[0] + q[0]) / 2 + offset[0], (p[1] + q[1]) / 2 + offset[1]
            self.ax.text(
                mx,
                my,
                label,
                ha=ha,
                va="bottom",
                fontsize=FONT - 1,
                color=color,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.5},
            )
            self.labels.append(label)

    def done(self) -> Figure:
        self.fig.kitsmsan_labels = self.labels
        return self.fig


def _edge(b: tuple[float, float, float, float], side: str) -> tuple[float, float]:
    x, y, w, h = b
    return {"l": (x - w / 2, y), "r": (x + w / 2, y), "t": (x, y + h / 2), "b": (x, y - h / 2)}[side]


def _chw(shape: Sequence[int]) -> str:
    """``(B, C, D, H, W)`` → ``"C ch · D×H×W"``."""
    return f"{shape[1]} ch · {format_shape(shape[2:])}"


# --------------------------------------------------------------------------------------------
# the multi-scale attention layer (Fig. 1)
# --------------------------------------------------------------------------------------------


def draw_attention(
    config: ModelConfig,
    level: int = 0,
    *,
    input_shape: Sequence[int] | None = None,
    trace: NetworkTrace | None = None,
) -> Figure:
    r"""The multi-scale attention layer at one skip connection (MSAN paper, §2.2, Fig. 1).

    It draws :class:`~kitsmsan.models.blocks.MultiScaleAttention`,
    :math:`w = \sigma\big(x + \mathrm{Up}(P g)\big)`, :math:`\hat x = x \odot w`.

    The finer skip map ``x`` (encoder level ``level``), the coarser gating map ``g`` (decoder output
    one level deeper) projected by a ``1×1×1`` convolution ``P`` and brought to ``x``'s size by
    trilinear upsampling, the sum, the sigmoid giving the weights ``w``, the product ``x̂ = x ⊙ w``
    and its concatenation with the upsampled decoder features, on the way into decoder stage
    ``level``. Every arrow carries the traced ``(B, C, D, H, W)`` shape.

    Args:
        config: a config with ``attention=True``.
        level: the skip connection, 0 (full resolution) … 3. Default 0.
        input_shape: see :func:`trace_network`. Default the paper's ``(2, 1, 4, 512, 512)``.
        trace: a trace to reuse instead of tracing again.

    Returns:
        A 1280-px-wide :class:`~matplotlib.figure.Figure`.

    Raises:
        ConfigError: without attention, or for a level outside 0 … 3.
    """
    if not config.attention:
        raise ConfigError(
            f"model {config.name!r}: has no attention layers (attention=False); nothing to draw"
        )
    if level not in range(NUM_POOLS):
        raise ConfigError(f"level={level!r}: expected 0 … {NUM_POOLS - 1}")
    t = trace or trace_network(config, input_shape)
    att = f"att{level}"
    x_shape, g_shape = t.inputs[att]
    p_shape = t.outputs[f"{att}.project"]
    w_shape = t.attention_weights[level]
    xhat_shape = t.outputs[att]
    up_shape = t.outputs[f"up{level}"]
    cat_shape = t.inputs[f"dec{level}"][0]
    coarse = f"u{level + 1}" if level + 1 < NUM_POOLS else f"x{NUM_POOLS}"
    c = _Canvas(
        FIG_WIDTH,
        5.2,
        16,
        6.5,
        f"Multi-scale attention at skip level {level} "
        f"({MODEL_REGISTRY[config.name].title if config.name in MODEL_REGISTRY else config.name})",
    )
    bx = c.box(1.2, 4.9, 2.2, 0.9, f"x = enc{level} output\n(finer skip map)", "encoder")
    bg = c.box(1.2, 2.4, 2.2, 0.9, f"g = {coarse}\n(coarser gating map)", "decoder")
    bp = c.box(4.9, 2.4, 1.8, 0.8, "P: 1×1×1 conv", "attention")
    bu = c.box(8.9, 2.4, 1.9, 0.8, "Up: trilinear\nto x's size", "attention")
    plus = c.circle(8.9, 4.9, "+", kind="attention")
    sig = c.box(10.5, 4.9, 0.9, 0.7, "σ", "attention", fontsize=FONT + 4)
    mul = c.circle(12.4, 4.9, "⊙", kind="attention")
    cat = c.box(13.3, 2.4, 1.5, 0.8, "concat\n(channels)", "op")
    dec = c.box(
        14.75, 0.8, 2.4, 1.1, f"dec{level}: ConvBlock\nin {_chw(cat_shape)}", "decoder", fontsize=FONT - 1.5
    )
    bt = c.box(5.0, 0.8, 2.4, 0.8, f"up{level}: transposed conv", "decoder")
    c.arrow(_edge(bx, "r"), _edge(plus, "l"), f"x: {format_shape(x_shape)}")
    c.arrow(_edge(bg, "r"), _edge(bp, "l"), f"g: {format_shape(g_shape)}", offset=(0, -0.62))
    c.arrow(_edge(bp, "r"), _edge(bu, "l"), f"P g: {format_shape(p_shape)}", offset=(0, -0.62))
    c.arrow(
        _edge(bu, "t"), _edge(plus, "b"), f"Up(P g): {format_shape(x_shape)}", offset=(0.1, 0.0), ha="left"
    )
    c.arrow(_edge(plus, "r"), _edge(sig, "l"))
    c.arrow(_edge(sig, "r"), _edge(mul, "l"), f"w: {format_shape(w_shape)}", offset=(0, -0.55))
    c.arrow(
        (bx[0], bx[1] + bx[3] / 2),
        (mul[0], mul[1] + mul[3] / 2),
        "x (unchanged)",
        rad=-0.12,
        offset=(0, 0.62),
    )
    c.arrow(
        _edge(mul, "b"),
        _edge(cat, "t"),
        f"x̂ = x ⊙ w:\n{format_shape(xhat_shape)}",
        offset=(0.25, 0.0),
        ha="left",
    )
    c.arrow((1.2, bg[1] - bg[3] / 2), _edge(bt, "l"), rad=0.25)
    c.arrow(
        _edge(bt, "r"),
        _edge(cat, "b"),
        f"up{level}(g): {format_shape(up_shape)}",
        rad=0.15,
        offset=(0.8, -0.05),
    )
    c.arrow(_edge(cat, "b"), _edge(dec, "t"))
    c.text(
        0.2,
        0.05,
        f"shapes (B, C, D, H, W) traced for input {format_shape(t.input_shape)}; "
        f"w = σ(x + Up(P g)),  x̂ = x ⊙ w",
        fontsize=FONT - 1,
    )
    return c.done()


# --------------------------------------------------------------------------------------------
# the whole U (Fig. 1-2)
# --------------------------------------------------------------------------------------------


def draw_network(
    config: ModelConfig, *, input_shape: Sequence[int] | None = None, trace: NetworkTrace | None = None
) -> Figure:
    """The whole U of one variant (MSAN paper, §2.2, Fig. 1–2), from a forward on the ``meta`` device.

    Encoder stages ``enc0 … enc3`` down the left, the bottleneck ``enc4`` at the bottom (with the
    parallel Res2Net branch and the sum that fuses it, for ``res2net=True``), decoder stages
    ``dec3 … dec0`` up the right; each box gives the stage's width and ``D×H×W``; the skip
    connections carry a multi-scale attention node (MSA) when ``attention=True``; every output head
    is drawn at the feature map it reads (main head at ``u0``, deep-supervision heads wherever the
    network puts them).

    Args:
        config: the network to draw.
        input_shape: see :func:`trace_network`. Default the paper's ``(2, 1, 4, 512, 512)``.
        trace: a trace to reuse instead of tracing again.

    Returns:
        A 1280-px-wide :class:`~matplotlib.figure.Figure`.
    """
    t = trace or trace_network(config, input_shape)
    title = MODEL_REGISTRY[config.name].title if config.name in MODEL_REGISTRY else config.name
    c = _Canvas(FIG_WIDTH, 7.6, 16, 9.6, f"{title} ({config.name}): input {format_shape(t.input_shape)}")
    ys = [8.2 - 1.65 * level for level in range(NUM_POOLS + 1)]
    enc, dec = {}, {}
    w, h = 2.3, 0.95
    mid = 6.6
    for level in range(NUM_POOLS):
        enc[level] = c.box(
            1.3 + 0.8 * level, ys[level], w, h, f"enc{level}\n{_chw(t.outputs[f'enc{level}'])}", "encoder"
        )
        dec[level] = c.box(
            11.9 - 0.8 * level, ys[level], w, h, f"dec{level}\n{_chw(t.outputs[f'dec{level}'])}", "decoder"
        )
    bottom = c.box(
        mid - 1.6 if config.res2net else mid,
        ys[NUM_POOLS],
        w,
        h,
        f"enc{NUM_POOLS} (bottleneck)\n{_chw(t.outputs[f'enc{NUM_POOLS}'])}",
        "bottleneck",
    )
    x4_box = bottom
    if config.res2net:
        r2 = c.box(
            mid + 1.7,
            ys[NUM_POOLS],
            w + 0.3,
            h,
            f"3D Res2Net, s = {config.res2net_scale}\n{_chw(t.outputs['res2net'])}",
            "res2net",
        )
        fuse = c.circle(mid, ys[NUM_POOLS] + 0.95, "+", kind="res2net")
        c.arrow(_edge(bottom, "t"), _edge(fuse, "l"), rad=-0.3)
        c.arrow(_edge(r2, "t"), _edge(fuse, "r"), rad=0.3)
        c.text(mid - 0.8, ys[NUM_POOLS] + 1.15, "x4", fontsize=FONT)
        x4_box = fuse
        p3 = t.outputs["pool3"]
        c.arrow(_edge(enc[NUM_POOLS - 1], "b"), _edge(r2, "b"), None, rad=0.45, color="#1e8449")
        c.text(
            mid + 3.15,
            ys[NUM_POOLS] - 0.35,
            f"p3 = pool3(x3), {_chw(p3)},\nalso feeds the Res2Net branch",
            fontsize=FONT - 1.5,
            color="#1e8449",
        )
    c.text(0.05, ys[0] + 0.75, f"image {_chw(t.input_shape)}", fontsize=FONT - 1)
    for level in range(NUM_POOLS):
        pool = t.config.pool_sizes[level]
        lower = enc[level + 1] if level + 1 < NUM_POOLS else bottom
        c.arrow(
            _edge(enc[level], "b"),
            _edge(lower, "t" if level + 1 < NUM_POOLS else "l"),
            f"max-pool {format_shape(pool)}",
            offset=(-0.95, -0.1),
            color="#1f4e79",
        )
        upper_src = dec[level + 1] if level + 1 < NUM_POOLS else x4_box
        c.arrow(
            _edge(upper_src, "t" if level + 1 < NUM_POOLS else "r"),
            _edge(dec[level], "b"),
            f"up{level}: ConvT {format_shape(pool)}",
            offset=(0.95, -0.1) if level + 1 < NUM_POOLS else (0.4, -0.5),
            color="#a04000",
        )
        y = ys[level]
        skip = f"x{level} {format_shape(t.outputs[f'enc{level}'][2:])}"
        if config.attention:
            node = c.circle(mid, y, "MSA", r=0.38, kind="attention")
            c.arrow(_edge(enc[level], "r"), _edge(node, "l"), skip)
            c.arrow(_edge(node, "r"), _edge(dec[level], "l"), f"x̂{level} (concatenated)")
            if level + 1 < NUM_POOLS:
                c.arrow(
                    _edge(dec[level + 1], "l"),
                    (mid + 0.27, y - 0.27),
                    f"g = u{level + 1}",
                    dashed=True,
                    color="#922b21",
                    offset=(0.3, -0.35),
                )
            else:
                c.arrow(_edge(x4_box, "t"), _edge(node, "b"), dashed=True, color="#922b21")
        else:
            c.arrow(_edge(enc[level], "r"), _edge(dec[level], "l"), f"skip {skip} (concatenated)")
    for head in t.heads:
        out = head.out_shape
        if head.output_index == 0:
            text = f"head 1×1×1 conv\nlogits {_chw(out)}"
        else:
            text = f"DS head {head.output_index}: {head.name}\nreads {head.source} → {_chw(out)}"
        if head.stage == "bottleneck":
            src, y = x4_box, ys[NUM_POOLS]
        else:
            src = dec[head.level] if head.stage == "decoder" else enc[head.level]
            y = ys[head.level]
        hb = c.box(14.55, y, 2.8, 0.85, text, "head", fontsize=FONT - 1.5)
        c.arrow(_edge(src, "r"), _edge(hb, "l"))
    legend = "widths c_l = min(base·2^l, max) = " + ", ".join(str(w_) for w_ in config.channels)
    legend += (
        f";  attention {'on' if config.attention else 'off'}, Res2Net {'on' if config.res2net else 'off'}"
    )
    legend += " (x4 = enc4(p3) + Res2Net(p3))" if config.res2net else ""
    legend += f", deep supervision {'on' if config.deep_supervision else 'off'} ({len(t.aux_heads)} auxiliary heads)"
    c.text(0.1, 0.05, legend, fontsize=FONT - 1)
    if config.attention:
        c.text(
            0.1,
            0.4,
            "MSA: multi-scale attention, x̂ = x ⊙ σ(x + Up(P g)); dashed: the coarser gating map g",
            fontsize=FONT - 1,
            color="#922b21",
        )
    return c.done()


# --------------------------------------------------------------------------------------------
# the 3D Res2Net block (Fig. 3)
# --------------------------------------------------------------------------------------------


def draw_res2net_block(config: ModelConfig, *, input_shape: Sequence[int] | None = None) -> Figure:
    r"""The 3D Res2Net block as the network builds it (MSAN paper, §2.2, Fig. 3; Gao et al. 2019).

    The recurrence drawn: :math:`y_1 = x_1`, :math:`y_2 = K_2(x_2)`,
    :math:`y_i = K_i(x_i + y_{i-1})` for :math:`2 < i \le s`.

    ``1×1×1 conv`` to the bottleneck width, ``s`` splits ``x_1 … x_s``, ``y_1 = x_1``,
    ``y_2 = K_2(x_2)``, ``y_i = K_i(x_i + y_{i-1})``; concatenation, ``1×1×1 conv``, the residual sum
    with the shortcut. The block is the one of :class:`~kitsmsan.models.blocks.Res2NetBlock3d` with
    the config's widths (``c3 → c4``) and ``res2net_scale``, fed the shape of the last pooling's output
    ``p3`` of the traced network; shapes are traced on the ``meta`` device.

    Args:
        config: any config (the block is drawn with its widths and scale even when ``res2net`` is off).
        input_shape: see :func:`trace_network`.

    Returns:
        A 1280-px-wide :class:`~matplotlib.figure.Figure`.
    """
    t = trace_network(config, input_shape)
    p3 = t.outputs["pool3"]
    c3, c4 = config.channels[NUM_POOLS - 1], config.channels[NUM_POOLS]
    kw = {"norm": config.norm, "activation": config.activation, "negative_slope": config.negative_slope}
    with torch.device("meta"):
        block = Res2NetBlock3d(c3, c4, config.res2net_scale, **kw)
    seen: dict[str, tuple[int, ...]] = {}
    handles = [
        m.register_forward_hook(lambda mod, a, o, n=n: seen.__setitem__(n, _shape(o)))
        for n, m in block.named_modules()
        if n and "." not in n or re.fullmatch(r"convs\.\d+", n or "")
    ]
    try:
        with torch.no_grad():
            out = block(torch.empty(p3, device="meta"))
    finally:
        for h in handles:
            h.remove()
    s = block.scale
    split = (p3[0], block.width, *p3[2:])
    row = 1.05
    height = 2.4 + row * s
    c = _Canvas(
        FIG_WIDTH, 1.0 + 0.75 * height, 16, height, f"3D Res2Net block, s = {s} (input p3 {format_shape(p3)})"
    )
    ys = [height - 0.9 - row * i for i in range(s)]
    mid = (ys[0] + ys[-1]) / 2
    bin_ = c.box(1.2, mid, 2.25, 0.9, f"p3\n{_chw(p3)}", "data")
    red = c.box(3.75, mid, 2.45, 0.9, f"1×1×1 conv\n→ {_chw(seen['reduce'])}", "res2net")
    c.arrow(_edge(bin_, "r"), _edge(red, "l"))
    catb = c.box(
        11.2, mid, 1.4, row * (s - 1) + 0.7, f"concat\n{_chw(seen['expand'])}".replace(" · ", "\n"), "op"
    )
    cat_left = catb[0] - catb[2] / 2
    prev = None
    for i in range(s):
        y = ys[i]
        xi = c.box(6.0, y, 1.3, 0.6, f"x{i + 1}: {split[1]} ch", "data", fontsize=FONT - 1)
        c.arrow(_edge(red, "r"), _edge(xi, "l"))
        if i == 0:
            c.arrow(_edge(xi, "r"), (cat_left, y), "y1 = x1")
            continue
        src = _edge(xi, "r")
        if prev is not None:
            add = c.circle(7.3, y, "+", r=0.18)
            c.arrow(src, _edge(add, "l"))
            c.arrow(_edge(prev, "b"), _edge(add, "t"))
            src = _edge(add, "r")
        k = c.box(8.6, y, 1.7, 0.6, f"K{i + 1}: 3×3×3 conv", "res2net", fontsize=FONT - 1)
        c.arrow(src, _edge(k, "l"))
        c.arrow(_edge(k, "r"), (cat_left, y), f"y{i + 1}", offset=(0.0, 0.05))
        prev = k
    exp = c.box(13.1, mid, 1.5, 0.8, "1×1×1 conv", "res2net")
    add = c.circle(14.4, mid, "+", kind="res2net")
    outb = c.box(15.35, mid, 1.1, 0.8, f"act\n{out.shape[1]} ch", "data", fontsize=FONT - 1)
    c.arrow(_edge(catb, "r"), _edge(exp, "l"))
    c.arrow(_edge(exp, "r"), _edge(add, "l"))
    c.arrow(_edge(add, "r"), _edge(outb, "l"))
    shortcut = "identity" if c3 == c4 else "1×1×1 conv projection"
    c.arrow(_edge(bin_, "b"), _edge(add, "b"), None, rad=0.1, color="#1e8449")
    c.text(3.0, ys[-1] - 0.8, f"shortcut ({shortcut}): {format_shape(seen['shortcut'])}", color="#1e8449")
    c.text(
        0.1,
        0.05,
        f"each y_i: {format_shape(seen['convs.0'])};  y1 = x1,  y2 = K2(x2),  yi = Ki(xi + y(i-1)) "
        f"for 2 < i ≤ s;  out = act(conv1x1(concat(y1 … y{s})) + shortcut(p3)) → {format_shape(tuple(out.shape))}",
    )
    return c.done()


# --------------------------------------------------------------------------------------------
# the vote and the post-processing (§2.2, §3.1)
# --------------------------------------------------------------------------------------------

#: the worked example of :func:`draw_vote`: one row of voxels per model (0 background, 1 kidney, 2 tumour)
VOTE_EXAMPLE = np.array(
    [
        [0, 1, 1, 1, 2, 2, 2, 1, 0, 0],
        [0, 1, 1, 2, 2, 2, 1, 1, 1, 0],
        [0, 0, 1, 1, 2, 2, 2, 0, 0, 0],
        [0, 1, 1, 1, 1, 2, 0, 0, 0, 0],
        [1, 1, 1, 2, 2, 1, 2, 1, 0, 0],
    ],
    dtype=np.uint8,
)

#: the worked example of the post-processing: a kidney with tumour, a second kidney, two stray blobs
POSTPROCESS_EXAMPLE = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0],
        [0, 1, 2, 1, 0, 0, 1, 0, 0, 1, 1, 0],
        [0, 1, 2, 1, 0, 0, 0, 0, 0, 1, 1, 0],
        [0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0],
    ],
    dtype=np.uint8,
)

_LABEL_RGB = {0: (0.93, 0.93, 0.93), 1: (0.20, 0.80, 0.30), 2: (1.00, 0.30, 0.10)}


def _rgb(labels: np.ndarray) -> np.ndarray:
    out = np.zeros(labels.shape + (3,), dtype=np.float32)
    for value, rgb in _LABEL_RGB.items():
        out[labels == value] = rgb
    return out


def majority_needed(n: int) -> int:
    r"""Votes a region needs among ``n`` models to be a strict majority: :math:`\lceil (n+1)/2 \rceil` (3 of 5)."""
    return math.ceil((n + 1) / 2)


def draw_vote(
    models: Sequence[str] | None = None,
    *,
    example: np.ndarray = VOTE_EXAMPLE,
    num_components: int = POSTPROCESS_K,
) -> Figure:
    """The ensemble vote over the nested regions and the post-processing, with a worked example.

    Left: one row of voxels per model (``example[i]`` is model ``i``'s labels). Middle: how many models
    put each voxel in the kidney region (label ≥ 1) and in the tumour (label 2), against the majority
    ``⌈(N+1)/2⌉``. Right: the voted row as :func:`kitsmsan.ensemble.majority_vote` returns it for these
    rows, then a 2D example before and after
    :func:`kitsmsan.postprocess.keep_largest_components` with ``num_components`` components.

    Args:
        models: the voters' names. Default :func:`kitsmsan.models.registry.list_models` (the paper's five).
        example: ``(N, V)`` labels in {0, 1, 2}, one row per model. Default :data:`VOTE_EXAMPLE`.
        num_components: components kept by the post-processing. Default
            :data:`kitsmsan.reproduce.POSTPROCESS_K` (2, one per kidney).

    Returns:
        A 1280-px-wide :class:`~matplotlib.figure.Figure`; ``fig.kitsmsan_vote`` holds the voted row
        and ``fig.kitsmsan_postprocessed`` the post-processed example.

    Raises:
        ConfigError: if the number of example rows differs from the number of models.
    """
    models = list(list_models() if models is None else models)
    example = np.asarray(example, dtype=np.uint8)
    if example.ndim != 2 or example.shape[0] != len(models):
        raise ConfigError(f"example: expected {len(models)} rows (one per model), got shape {example.shape}")
    n = len(models)
    k = majority_needed(n)
    voted = majority_vote(list(example))
    kept = keep_largest_components(POSTPROCESS_EXAMPLE, num_components=num_components, connectivity=2)
    fig = _DiagramFigure(figsize=(FIG_WIDTH, 6.6), dpi=DPI)
    fig.suptitle(f"Vote of {n} models over the nested regions, then post-processing", fontsize=FONT + 3)
    labels = [f"Vote of {n} models over the nested regions, then post-processing"]
    rows = max(n, 8)
    grid = fig.add_gridspec(
        rows,
        3,
        width_ratios=[1.25, 1.0, 1.1],
        left=0.13,
        right=0.99,
        top=0.86,
        bottom=0.1,
        hspace=1.1,
        wspace=0.4,  # the two-line titles of the middle column stay clear of the right column's
    )
    for i, name in enumerate(models):
        ax = fig.add_subplot(grid[i, 0])
        ax.imshow(_rgb(example[i : i + 1]), aspect="auto", interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=FONT)
        labels.append(name)
    kidney_votes = (example >= 1).sum(axis=0)
    tumour_votes = (example == 2).sum(axis=0)
    for row, (votes, region) in enumerate(
        ((kidney_votes, "kidney region (label ≥ 1)"), (tumour_votes, "tumour (label 2)"))
    ):
        ax = fig.add_subplot(grid[row * 3 : row * 3 + 2, 1])
        ax.bar(np.arange(votes.size), votes, color="#2e86c1" if row == 0 else "#e74c3c")
        ax.axhline(k - 0.5, color="black", linestyle="--", linewidth=1.2)
        ax.set_ylim(0, n + 0.3)
        ax.set_title(f"votes for the {region}\nmajority = ⌈({n}+1)/2⌉ = {k}", fontsize=FONT - 1)
        ax.set_xlabel("voxel", fontsize=FONT - 1)
        ax.tick_params(labelsize=FONT - 2)
        labels.append(f"majority = ⌈({n}+1)/2⌉ = {k}")
    ax = fig.add_subplot(grid[6:7, 1])
    ax.imshow(_rgb(voted[None]), aspect="auto", interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title("voted labels (kitsmsan.ensemble.majority_vote)", fontsize=FONT - 1)
    rule = f"kidney region where ≥ {k} of {n} say label ≥ 1;\ntumour where ≥ {k} of {n} say label 2"
    ax.text(0.5, -0.5, rule, transform=ax.transAxes, ha="center", va="top", fontsize=FONT - 1)
    labels += ["voted labels (kitsmsan.ensemble.majority_vote)", rule]
    ax_before = fig.add_subplot(grid[0 : rows // 2 - 1, 2])
    ax_after = fig.add_subplot(grid[rows // 2 : rows - 1, 2])
    for ax, arr, title in (
        (ax_before, POSTPROCESS_EXAMPLE, "a prediction before post-processing"),
        (ax_after, kept, f"after keep_largest_components(k = {num_components})"),
    ):
        ax.imshow(_rgb(arr), interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(title, fontsize=FONT - 1)
        labels.append(title)
    fig.legend(
        handles=[
            Patch(color=_LABEL_RGB[v], label=t) for v, t in ((0, "background"), (1, "kidney"), (2, "tumour"))
        ],
        loc="lower left",
        fontsize=FONT - 1,
        ncol=3,
        frameon=False,
        bbox_to_anchor=(0.01, 0.0),
    )
    fig.kitsmsan_labels = labels
    fig.kitsmsan_vote = voted
    fig.kitsmsan_postprocessed = kept
    return fig


def save_previews(out_dir: str, names: Sequence[str] | None = None, **overrides: Any) -> list[str]:
    """Write PNG and SVG previews of every diagram of every named variant into ``out_dir``.

    Args:
        out_dir: folder (created if missing).
        names: registry names. Default all five.
        **overrides: :class:`~kitsmsan.models.msan.ModelConfig` fields, e.g. ``base_channels=16``.

    Returns:
        The written paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs: dict[str, Figure] = {}
    for name in names or list_models():
        cfg = model_config(name, **overrides)
        trace = trace_network(cfg)
        figs[f"network_{name}"] = draw_network(cfg, trace=trace)
        if cfg.attention and "attention" not in figs:
            figs["attention"] = draw_attention(cfg, trace=trace)
        if cfg.res2net and "res2net" not in figs:
            figs["res2net"] = draw_res2net_block(cfg)
    figs["vote"] = draw_vote()
    paths = []
    for stem, fig in figs.items():
        for ext in ("png", "svg"):
            path = out / f"{stem}.{ext}"
            fig.savefig(path, dpi=DPI)
            paths.append(str(path))
    return paths
