"""Tests of kitsmsan.widgets: frames by hand, layer list, the browser-side links of the static mode."""

from __future__ import annotations

import numpy as np
import pytest

from kitsmsan import viz
from kitsmsan.errors import DataError

ipywidgets = pytest.importorskip("ipywidgets")

from kitsmsan import widgets  # noqa: E402


@pytest.fixture
def case():
    image = np.zeros((5, 16, 16), dtype=np.float32)
    label = np.zeros((5, 16, 16), dtype=np.uint8)
    label[1:4, 4:10, 4:10] = 1
    label[2, 6:8, 6:8] = 2
    a = label.copy()
    b = np.zeros_like(label)
    attention = np.full(label.shape, 0.5, dtype=np.float32)
    return widgets.ViewerCase(image, label, {"a": a, "b": b, "ensemble": a}, attention)


def test_layers_order(case):
    assert case.layers() == ["image", "ground truth", "a", "b", "ensemble", "disagreement", "attention"]
    bare = widgets.ViewerCase(np.zeros((2, 16, 16)))
    assert bare.layers() == ["image"]


def test_viewer_case_rejects_shape_mismatch():
    with pytest.raises(DataError, match=r"preds\['m'\]"):
        widgets.ViewerCase(np.zeros((2, 8, 8)), preds={"m": np.zeros((2, 8, 4), dtype=np.uint8)})
    with pytest.raises(DataError, match="image"):
        widgets.ViewerCase(np.zeros((8, 8)))


def test_render_frame_matches_compose_rgb(case):
    got = widgets.render_frame(case, "a", 2)
    np.testing.assert_array_equal(got, viz.compose_rgb(case.image[2], case.preds["a"][2]))
    # disagreement of a vs b on slice 2: 1 on the labelled block, 0 elsewhere (ensemble not counted)
    dis = widgets.render_frame(case, "disagreement", 2)
    plain = viz.compose_rgb(case.image[2])
    np.testing.assert_array_equal(dis[0, 0], plain[0, 0])  # agreement: no heat
    assert not np.array_equal(dis[5, 5], plain[5, 5])  # a=kidney, b=background
    with pytest.raises(DataError, match="layer"):
        widgets.render_frame(case, "nope", 0)
    with pytest.raises(DataError, match="slice"):
        widgets.render_frame(case, "a", 5)


def test_png_bytes_roundtrip(case):
    import io

    from matplotlib import image as mpimg

    rgb = widgets.render_frame(case, "ground truth", 2)
    back = mpimg.imread(io.BytesIO(widgets.png_bytes(rgb)), format="png")
    np.testing.assert_allclose(np.round(back[..., :3] * 255), rgb, atol=0)


def _link_pairs(viewer):
    return [((link.source[0], link.source[1]), (link.target[0], link.target[1])) for link in viewer._links]


def _controls(widget):
    """Every widget under ``widget`` (depth first)."""
    out = [widget]
    for child in getattr(widget, "children", ()):
        out += _controls(child)
    return out


def test_precomputed_viewer_links_every_control_in_the_browser(case):
    other = widgets.ViewerCase(case.image + 100, case.label, {"a": case.preds["b"], "b": case.preds["a"]})
    viewer = widgets.SliceViewer({"c0": case, "c1": other, "c2": {"image": case.image}}, precompute=True)
    assert viewer.precompute
    assert viewer.slices == [0, 1, 2, 3, 4]
    assert viewer.slice_index == 2  # the slice with the tumour
    assert viewer.layer == "ground truth"  # ... with its labels
    assert viewer._cases_stack.children[0].children[2].selected_index == case.layers().index("ground truth")
    # case dropdown -> the stack of per-case panels, in the browser
    pairs = _link_pairs(viewer)
    assert ((viewer._case_dd, "index"), (viewer._cases_stack, "selected_index")) in pairs
    assert len(viewer._cases_stack.children) == 3
    for cid, panel in viewer._panels.items():
        outer = viewer._cases_stack.children[list(viewer.cases).index(cid)].children[2]
        assert isinstance(outer, ipywidgets.Stack) and len(outer.children) == len(viewer.cases[cid].layers())
        assert ((panel.play, "value"), (panel.slider, "index")) in pairs
        assert ((panel.layer_tb, "index"), (outer, "selected_index")) in pairs
        for inner in outer.children:
            assert ((panel.slider, "index"), (inner, "selected_index")) in pairs
            assert all(bytes(img.value)[:4] == b"\x89PNG" for img in inner.children)
    # what each stack shows is the frame of its own case: case c1 differs from c0 on every layer
    c0, c1 = viewer._panels["c0"], viewer._panels["c1"]
    for layer in ("image", "ground truth", "a", "b"):
        assert bytes(c0.images[layer][2].value) != bytes(c1.images[layer][2].value)
        assert bytes(c1.images[layer][2].value) == widgets.png_bytes(
            widgets.render_frame(other, layer, 2, disagreement=viz.disagreement_map(other.model_preds))
        )
    # every frame of a layer differs from the next layer's (the buttons change the picture)
    assert bytes(c0.images["ground truth"][2].value) != bytes(c0.images["image"][2].value)
    assert viewer.payload_bytes == sum(
        len(bytes(i.value)) for p in viewer._panels.values() for imgs in p.images.values() for i in imgs
    )
    assert "application/vnd.jupyter.widget-view+json" in viewer._repr_mimebundle_()


def test_static_page_shows_no_control_that_needs_a_kernel(case):
    viewer = widgets.SliceViewer({"c0": case, "c1": case}, precompute=True)
    linked = {id(w) for pair in _link_pairs(viewer) for (w, _) in pair}
    controls = [
        c
        for c in _controls(viewer.widget)
        if isinstance(c, (ipywidgets.ValueWidget, ipywidgets.Play))
        and not isinstance(c, (ipywidgets.Image, ipywidgets.HTML))
    ]
    assert controls, "no controls found"
    unlinked = [
        type(c).__name__ + ":" + str(getattr(c, "description", "")) for c in controls if id(c) not in linked
    ]
    assert not unlinked, f"controls on the static page that only a kernel could serve: {unlinked}"
    assert not any(getattr(c, "description", "") in ("level", "width", "opacity") for c in controls)
    assert "without a kernel" in viewer._note.value and "MB of PNG" in viewer._note.value


def test_live_viewer_has_every_control_and_rerenders(case):
    viewer = widgets.SliceViewer({"c0": case}, precompute=False)
    descriptions = {getattr(c, "description", "") for c in _controls(viewer.widget)}
    assert {"case", "layer", "slice", "level", "width", "opacity"} <= descriptions
    before = viewer._live_image.value
    viewer._layer_tb.value = "ground truth"
    assert viewer._live_image.value != before
    viewer._slice.value = "0"
    np.testing.assert_array_equal(viewer.frame(), widgets.render_frame(case, "ground truth", 0))
    assert viewer.window == (-200.0, 500.0)
    shown = viewer._live_image.value
    viewer._level.value = -100  # 0 HU now above the window centre
    assert viewer.window == (-450.0, 250.0)
    assert viewer._live_image.value != shown
    viewer._alpha.value = 0.9
    np.testing.assert_array_equal(
        viewer.frame(), widgets.render_frame(case, "ground truth", 0, window=(-450.0, 250.0), alpha=0.9)
    )


def test_viewer_opens_on_the_tumour():
    label = np.zeros((40, 16, 16), dtype=np.uint8)
    label[5:35, 2:14, 2:14] = 1
    label[31, 4:8, 4:8] = 2  # the tumour is on one slice, far from the middle
    image = np.zeros(label.shape, dtype=np.float32)
    for precompute in (True, False):
        viewer = widgets.viewer_from_arrays(image, label, precompute=precompute, max_slices=8)
        assert viewer.slice_index == 31 and 31 in viewer.slices


def test_disagreement_layer_has_a_key(case):
    html = widgets.key_html(case)
    assert "kidney" in html and "tumour" in html
    assert "disagreement: 0 (all agree)" in html and "1 models against the majority" in html
    assert "attention weight" in html and "linear-gradient" in html
    # the key's end colours are those of the colour map the frames use
    import matplotlib

    top = matplotlib.colormaps[widgets.DISAGREEMENT_CMAP](1.0)
    assert widgets._hex(top) in html
    assert "disagreement" not in widgets.key_html(
        widgets.ViewerCase(case.image, case.label, {"a": case.preds["a"]})
    )
    viewer = widgets.SliceViewer({"c0": case}, precompute=True)
    assert any(isinstance(c, ipywidgets.HTML) and "disagreement" in c.value for c in _controls(viewer.widget))


def test_static_budget_is_enforced(case):
    small = widgets.SliceViewer({"c0": case}, precompute=True)
    assert 0 < small.payload_bytes < widgets.STATIC_BUDGET_BYTES
    with pytest.raises(DataError, match="budget"):
        widgets.SliceViewer({"c0": case}, precompute=True, budget_bytes=small.payload_bytes - 1)


def test_thinning_and_bad_arguments(case):
    big = widgets.ViewerCase(np.zeros((100, 16, 16)))
    viewer = widgets.SliceViewer({"big": big}, max_slices=10, precompute=True)
    assert len(viewer.slices) == 10 and viewer.slices[0] == 0 and viewer.slices[-1] == 99
    with pytest.raises(DataError, match="empty"):
        widgets.SliceViewer({})
    with pytest.raises(DataError, match="precompute"):
        widgets.SliceViewer({"c": case}, precompute="yes")
    with pytest.raises(DataError, match="window"):
        widgets.SliceViewer({"c": case}, window=(5, 5))


def test_attention_volume_matches_attention_maps():
    torch = pytest.importorskip("torch")
    from kitsmsan.data.preprocess import normalize
    from kitsmsan.models import build_model

    torch.manual_seed(0)
    model = build_model("msan_v1", base_channels=4).eval()
    image = np.random.default_rng(0).normal(100, 200, (6, 32, 32)).astype(np.float32)
    vol = widgets.attention_volume(model, image, level=1)
    assert vol.shape == (6, 32, 32) and vol.dtype == np.float32
    assert 0.0 < vol.min() and vol.max() < 1.0
    # windows start at 0 and 2 (last aligned to the end): slices 2..5 come from the second window
    x = torch.from_numpy(normalize(image[2:6]))[None, None]
    w = model.attention_maps(x)[1][0].mean(0).numpy()  # (4, 16, 16)
    np.testing.assert_allclose(vol[2:6, ::2, ::2], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vol[2:6, 1::2, 1::2], w, rtol=1e-5, atol=1e-6)  # pixel repetition
    with pytest.raises(DataError, match="level"):
        widgets.attention_volume(model, image, level=7)
    with pytest.raises(DataError, match="image_hu"):
        widgets.attention_volume(model, image[0])


def test_five_models_disagreement_scale_tops_at_the_reachable_count(case):
    # five models over three labels: at most 3 disagree with the majority, and the key says so
    lab = case.label
    preds = {f"m{i}": np.where(np.arange(lab.size).reshape(lab.shape) % 3 == i % 3, lab, 0) for i in range(5)}
    five = widgets.ViewerCase(case.image, lab, {k: v.astype(np.uint8) for k, v in preds.items()})
    top = viz.disagreement_max(5)
    assert top == 3
    assert f"{top} models against the majority" in widgets.key_html(five)
    # a voxel with the top count is drawn in the colour map's top colour, as the key's right end
    dis = np.full(lab.shape, top, dtype=np.uint8)
    frame = widgets.render_frame(five, "disagreement", 2, disagreement=dis)
    expected = viz.compose_rgb(
        five.image[2],
        heat=np.ones(lab.shape[1:], np.float32),
        heat_range=(0.0, 1.0),
        heat_alpha=0.85,
        cmap=widgets.DISAGREEMENT_CMAP,
    )
    np.testing.assert_allclose(frame, expected, atol=1e-6)
