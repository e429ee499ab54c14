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
    np.testing.assert_array_equal(dis[0, 0], plain[0, 0])             # agreement: no heat
    assert not np.array_equal(dis[5, 5], plain[5, 5])                 # a=kidney, b=background
    with pytest.raises(DataError, match="layer"):
        widgets.render_frame(case, "nope", 0)
    with pytest.raises(DataError, match="slice"):
        widgets.render_frame(case, "a", 5)


def test_png_bytes_roundtrip(case):
    from matplotlib import image as mpimg
    import io

    rgb = widgets.render_frame(case, "ground truth", 2)
    back = mpimg.imread(io.BytesIO(widgets.png_bytes(rgb)), format="png")
    np.testing.assert_allclose(np.round(back[..., :3] * 255), rgb, atol=0)


def test_precomputed_viewer_links_in_the_browser(case):
    viewer = widgets.SliceViewer({"c0": case, "c1": {"image": case.image}}, precompute=True)
    assert viewer.precompute
    assert viewer.slices == [0, 1, 2, 3, 4]
    assert viewer.slice_index == 2                       # middle of the labelled slices 1..3
    outer = viewer._view.children[0]
    assert isinstance(outer, ipywidgets.Stack) and len(outer.children) == len(case.layers())
    inner = outer.children[0]
    assert len(inner.children) == 5 and inner.selected_index == 2
    assert all(bytes(img.value)[:4] == b"\x89PNG" for img in inner.children)
    # play -> slider, layer buttons -> outer stack, slider -> every inner stack
    assert len(viewer._links) == 1 + 1 + len(case.layers())
    assert all(isinstance(link, ipywidgets.widgets.widget_link.Link) for link in viewer._links)
    # kernel side: switching case rebuilds layers and slices
    viewer._case_dd.value = "c1"
    assert viewer.case.layers() == ["image"]
    assert viewer._layer_tb.options == ("image",)
    assert "application/vnd.jupyter.widget-view+json" in viewer._repr_mimebundle_()


def test_live_viewer_rerenders_on_change(case):
    viewer = widgets.SliceViewer({"c0": case}, precompute=False)
    before = viewer._live_image.value
    viewer._layer_tb.value = "ground truth"
    assert viewer._live_image.value != before
    viewer._slice.value = "0"
    np.testing.assert_array_equal(viewer.frame(), widgets.render_frame(case, "ground truth", 0))


def test_window_sliders_change_the_frames(case):
    viewer = widgets.viewer_from_arrays(case.image, case.label, precompute=True)
    assert viewer.window == (-200.0, 500.0)
    first = viewer._images["image"][0].value
    viewer._level.value = -100                           # 0 HU now above the window centre
    assert viewer.window == (-450.0, 250.0)
    assert viewer._images["image"][0].value != first


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
    w = model.attention_maps(x)[1][0].mean(0).numpy()                   # (4, 16, 16)
    np.testing.assert_allclose(vol[2:6, ::2, ::2], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vol[2:6, 1::2, 1::2], w, rtol=1e-5, atol=1e-6)   # pixel repetition
    with pytest.raises(DataError, match="level"):
        widgets.attention_volume(model, image, level=7)
    with pytest.raises(DataError, match="image_hu"):
        widgets.attention_volume(model, image[0])
