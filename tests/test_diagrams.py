"""Tests of kitsmsan.diagrams: the figures say what the network is (shapes, widths, heads, labels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kitsmsan import diagrams
from kitsmsan.diagrams import (
    PAPER_BATCH_INPUT,
    draw_attention,
    draw_network,
    draw_res2net_block,
    draw_vote,
    format_shape,
    majority_needed,
    trace_network,
)
from kitsmsan.ensemble import majority_vote
from kitsmsan.errors import ConfigError
from kitsmsan.models import MSAN, NUM_POOLS, build_model, list_models, model_config
from kitsmsan.postprocess import keep_largest_components

SMALL_INPUT = (1, 1, 4, 32, 32)


def _labels(fig) -> str:
    return "\n".join(fig.kitsmsan_labels)


def test_paper_batch_input_is_the_papers_batch():
    # MSAN paper §3.1: batch 2, every 4 images of 512 x 512
    assert PAPER_BATCH_INPUT == (2, 1, 4, 512, 512)


@pytest.mark.parametrize("name", list_models())
def test_trace_encoder_shapes_follow_the_config(name):
    cfg = model_config(name)
    t = trace_network(cfg)
    b, _, d, h, w = t.input_shape
    for level, c in enumerate(cfg.channels):
        assert t.outputs[f"enc{level}"] == (b, c, d, h // 2**level, w // 2**level)
    assert t.outputs["enc0"] == (2, 32, 4, 512, 512)  # the paper-size network at the default base width


@pytest.mark.parametrize("name", list_models())
def test_traced_heads_are_the_heads_the_real_network_returns(name):
    torch.manual_seed(0)
    model = build_model(name, base_channels=4).train()
    with torch.no_grad():
        out = model(torch.zeros(SMALL_INPUT))
    outs = out if isinstance(out, list) else [out]
    t = trace_network(model.config, SMALL_INPUT)
    assert [h.out_shape for h in t.heads] == [tuple(o.shape) for o in outs]
    assert [h.output_index for h in t.heads] == list(range(len(outs)))
    assert len(t.aux_heads) == (len(outs) - 1)
    assert bool(t.aux_heads) == model.config.deep_supervision


@pytest.mark.parametrize("name", [n for n in list_models() if model_config(n).deep_supervision])
def test_network_figure_draws_every_head_where_it_reads(name):
    cfg = model_config(name)
    t = trace_network(cfg)
    text = _labels(draw_network(cfg, trace=t))
    for head in t.aux_heads:
        assert f"DS head {head.output_index}: {head.name}" in text
        assert f"reads {head.source} → {head.out_shape[1]} ch · {format_shape(head.out_shape[2:])}" in text
    assert f"({len(t.aux_heads)} auxiliary heads)" in text


class _BottleneckHeadMSAN(MSAN):
    """A network whose second auxiliary head reads the fused bottleneck x4 (a sum, no module output)."""

    def __init__(self, config):
        super().__init__(config)
        self.aux_head_x4 = nn.Conv3d(config.channels[-1], config.num_classes, kernel_size=1)

    def forward(self, x):
        x0 = self.enc0(x)
        x1 = self.enc1(self.pool0(x0))
        x2 = self.enc2(self.pool1(x1))
        x3 = self.enc3(self.pool2(x2))
        p3 = self.pool3(x3)
        x4 = self.enc4(p3) + self.res2net(p3)
        u3 = self.dec3(torch.cat([self.up3(x4), self._skip(3, x3, x4)], dim=1))
        u2 = self.dec2(torch.cat([self.up2(u3), self._skip(2, x2, u3)], dim=1))
        u1 = self.dec1(torch.cat([self.up1(u2), self._skip(1, x1, u2)], dim=1))
        u0 = self.dec0(torch.cat([self.up0(u1), self._skip(0, x0, u1)], dim=1))
        return [self.head(u0), self.aux_head_u3(u3), self.aux_head_x4(x4)]


def test_head_placement_is_read_from_the_forward_not_assumed(monkeypatch):
    monkeypatch.setattr(diagrams, "MSAN", _BottleneckHeadMSAN)
    cfg = model_config("msan_v2_ds")
    t = trace_network(cfg)
    sites = {h.name: (h.level, h.stage, h.source) for h in t.aux_heads}
    assert sites == {"aux_head_u3": (3, "decoder", "dec3"), "aux_head_x4": (NUM_POOLS, "bottleneck", "x4")}
    text = _labels(draw_network(cfg, trace=t))
    assert "reads x4 → 3 ch · 4×32×32" in text
    assert "reads dec2" not in text


def test_changing_the_config_changes_the_figure_text():
    wide = _labels(draw_network(model_config("msan_v1")))
    narrow = _labels(draw_network(model_config("msan_v1", base_channels=16)))
    assert "32 ch · 4×512×512" in wide and "32 ch · 4×512×512" not in narrow
    assert "16 ch · 4×512×512" in narrow
    assert "256 ch · 4×32×32" in narrow  # 16 · 2**4 at the bottleneck
    small = _labels(draw_network(model_config("msan_v1"), input_shape=(2, 1, 4, 256, 256)))
    assert "32 ch · 4×256×256" in small and "4×512×512" not in small


@pytest.mark.parametrize("name", list_models())
def test_attention_and_res2net_drawn_exactly_when_the_variant_has_them(name):
    cfg = model_config(name)
    text = _labels(draw_network(cfg))
    assert text.count("MSA\n") + text.endswith("MSA") == (NUM_POOLS if cfg.attention else 0)
    assert ("3D Res2Net" in text) == cfg.res2net
    if not cfg.attention:
        with pytest.raises(ConfigError, match="no attention"):
            draw_attention(cfg)


@pytest.mark.parametrize("level", range(NUM_POOLS))
def test_attention_figure_shapes_are_those_of_the_real_layer(level):
    torch.manual_seed(0)
    model = build_model("msan_v1", base_channels=4).eval()
    x = torch.zeros(SMALL_INPUT)
    weights = model.attention_maps(x)[level]
    text = _labels(draw_attention(model.config, level, input_shape=SMALL_INPUT))
    cfg = model.config
    assert f"w: {format_shape(weights.shape)}" in text
    assert f"x: {format_shape(weights.shape)}" in text
    coarse = (1, cfg.channels[level + 1], 4, 32 // 2 ** (level + 1), 32 // 2 ** (level + 1))
    assert f"g: {format_shape(coarse)}" in text
    assert f"P g: {format_shape((1, cfg.channels[level], *coarse[2:]))}" in text
    assert f"in {2 * cfg.channels[level]} ch" in text  # the concatenation doubles the skip's width


def test_attention_figure_at_paper_size():
    text = _labels(draw_attention(model_config("msan_v1")))
    assert "x: 2×32×4×512×512" in text and "g: 2×64×4×256×256" in text and "w: 2×32×4×512×512" in text


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_res2net_figure_draws_the_configs_splits(scale):
    cfg = model_config("msan_v2", res2net_scale=scale)
    text = _labels(draw_res2net_block(cfg))
    width = cfg.channels[-1] // scale
    for i in range(1, scale + 1):
        assert f"x{i}: {width} ch" in text
    assert f"x{scale + 1}:" not in text
    assert text.count("3×3×3 conv") == scale - 1  # y_1 = x_1 has no convolution
    assert "1×1×1 conv projection" in text  # c3 = 256 -> c4 = 512


def test_vote_figure_shows_what_the_code_returns():
    fig = draw_vote()
    np.testing.assert_array_equal(fig.kitsmsan_vote, majority_vote(list(diagrams.VOTE_EXAMPLE)))
    np.testing.assert_array_equal(
        fig.kitsmsan_postprocessed,
        keep_largest_components(diagrams.POSTPROCESS_EXAMPLE, num_components=2, connectivity=2),
    )
    text = _labels(fig)
    for name in list_models():
        assert name in text
    assert "⌈(5+1)/2⌉ = 3" in text and "k = 2" in text


def test_vote_example_must_have_one_row_per_model():
    with pytest.raises(ConfigError, match="one per model"):
        draw_vote(["a", "b"])


@pytest.mark.parametrize(("n", "k"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4)])
def test_majority_needed(n, k):
    assert majority_needed(n) == k


def test_figures_are_1280_px_wide():
    cfg = model_config("msan_v2_ds")
    for fig in (draw_network(cfg), draw_attention(cfg), draw_res2net_block(cfg), draw_vote()):
        assert round(fig.get_figwidth() * fig.dpi) == 1280


def test_figures_show_as_png_without_a_pyplot_backend():
    fig = draw_vote()
    png = fig._repr_png_()
    assert png[:4] == b"\x89PNG"
    import io

    from matplotlib import image as mpimg

    assert mpimg.imread(io.BytesIO(png), format="png").shape[1] == 1280


def test_vote_texts_do_not_overlap():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = draw_vote()
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = [t for ax in fig.axes for t in (ax.title, *ax.texts) if t.get_text()] + list(fig.texts)
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    overlaps = [
        (a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1 :] if box_a.overlaps(box_b)
    ]
    assert len(boxes) >= 6 and not overlaps, overlaps
