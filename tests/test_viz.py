"""Tests of kitsmsan.viz (Agg backend): pixel recipes by hand, figures' axes and data checked."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from kitsmsan import viz  # noqa: E402
from kitsmsan.errors import DataError  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def volume():
    """(6, 32, 32) HU volume with a kidney block on slices 1-4 and a tumour inside on 2-3."""
    image = np.full((6, 32, 32), -1000.0, dtype=np.float32)
    image[:, 4:28, 4:28] = 40.0
    label = np.zeros((6, 32, 32), dtype=np.uint8)
    label[1:5, 8:20, 8:20] = 1
    label[2:4, 10:14, 10:14] = 2
    image[label == 1] = 150.0
    image[label == 2] = 500.0
    return image, label


def test_window_from_level_hand_values():
    assert viz.window_from_level(150, 700) == (-200.0, 500.0)  # the paper's window (§2.1)
    assert viz.window_from_level(40, 400) == (-160.0, 240.0)
    with pytest.raises(DataError, match="width"):
        viz.window_from_level(0, 0)


def test_label_rgba_colours_and_alpha():
    label = np.array([[0, 1], [2, 0]], dtype=np.uint8)
    rgba = viz.label_rgba(label, alpha=0.5)
    assert rgba.shape == (2, 2, 4)
    assert rgba[0, 0, 3] == 0.0 and rgba[1, 1, 3] == 0.0
    np.testing.assert_allclose(rgba[0, 1], [*viz.LABEL_COLORS[1], 0.5], rtol=1e-6)
    np.testing.assert_allclose(rgba[1, 0], [*viz.LABEL_COLORS[2], 0.5], rtol=1e-6)
    with pytest.raises(DataError, match="alpha"):
        viz.label_rgba(label, alpha=2.0)


def test_compose_rgb_windowing_and_blend_by_hand():
    image = np.array([[-200.0, 150.0], [500.0, 1000.0]], dtype=np.float32)
    rgb = viz.compose_rgb(image)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    # -200 -> 0, 150 -> 0.5 -> 128 (round 127.5), 500 and above -> 255, grey on all channels
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[0, 1].tolist() == [128, 128, 128]
    assert rgb[1, 0].tolist() == [255, 255, 255] == rgb[1, 1].tolist()
    label = np.array([[1, 0], [0, 0]], dtype=np.uint8)
    over = viz.compose_rgb(image, label, alpha=1.0)
    expected = np.round(np.array(viz.LABEL_COLORS[1]) * 255).astype(int).tolist()
    assert over[0, 0].tolist() == expected  # opaque kidney colour over black
    assert over[0, 1].tolist() == [128, 128, 128]  # background untouched
    # a heat of 0 leaves the pixel grey; a full heat with opacity 1 gives the colour map's top colour
    heat = np.array([[0.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    hot = viz.compose_rgb(image, heat=heat, heat_alpha=1.0, cmap="gray")
    assert hot[0, 0].tolist() == [0, 0, 0] and hot[0, 1].tolist() == [255, 255, 255]


def test_compose_rgb_rejects_mismatched_shapes():
    with pytest.raises(DataError, match="label2d"):
        viz.compose_rgb(np.zeros((4, 4)), np.zeros((4, 5), dtype=np.uint8))
    with pytest.raises(DataError, match="image2d"):
        viz.compose_rgb(np.zeros((2, 4, 4)))


def test_pick_slices_spans_the_labelled_extent(volume):
    _, label = volume
    assert viz.pick_slices(label, 4) == [1, 2, 3, 4]
    assert viz.pick_slices(label, 2) == [1, 4]
    assert viz.pick_slices(label, 1) == [2]  # middle of 1..4
    assert viz.pick_slices(None, 3, depth=11) == [0, 5, 10]
    with pytest.raises(DataError):
        viz.pick_slices(None, 3)


def test_disagreement_map_by_hand():
    a = np.array([0, 1, 2, 1], dtype=np.uint8)
    b = np.array([0, 1, 1, 2], dtype=np.uint8)
    c = np.array([0, 2, 1, 0], dtype=np.uint8)
    # voxel 0 unanimous; 1: {1,1,2} -> 1; 2: {2,1,1} -> 1; 3: {1,2,0} -> 2
    assert viz.disagreement_map([a, b, c]).tolist() == [0, 1, 1, 2]
    assert viz.disagreement_map({"a": a, "b": a}).tolist() == [0, 0, 0, 0]
    with pytest.raises(DataError, match="shape"):
        viz.disagreement_map([a, np.zeros(3, dtype=np.uint8)])
    with pytest.raises(DataError, match="empty"):
        viz.disagreement_map([])


def test_show_slices_grid_and_errors(volume):
    image, label = volume
    fig = viz.show_slices(image, label, {"m1": label, "m2": np.zeros_like(label)}, num_slices=3)
    assert len(fig.axes) == 3 * 2  # (GT + 2 models) rows x the 2 slices that hold tumour (2, 3)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["ground truth, z=2", "ground truth, z=3"]
    fig = viz.show_slices(image, label, {"m1": label, "m2": np.zeros_like(label)}, slices=[1, 2, 4])
    assert len(fig.axes) == 3 * 3
    shown = fig.axes[0].images[0].get_array()
    assert shown.shape == (32, 32, 3)
    with pytest.raises(DataError, match="preds"):
        viz.show_slices(image, label, {"bad": label[:3]})
    with pytest.raises(DataError, match="outside"):
        viz.show_slices(image, label, slices=[9])


def test_plot_hu_histograms_window_share():
    edges = np.array([-1100.0, -300.0, 0.0, 200.0, 600.0])  # centres -700, -150, 100, 400
    counts = {
        "background": np.array([10, 0, 0, 0]),
        "kidney": np.array([0, 1, 2, 1]),
        "tumor": np.array([0, 0, 0, 4]),
    }
    fig = viz.plot_hu_histograms({"edges": edges, **counts})  # the dict of stats.hu_histograms
    ax = fig.axes[0]
    assert len(ax.lines) == 3
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "kidney (100% inside)" in legend and "tumor (100% inside)" in legend
    assert "background (0% inside)" in legend
    # density: each curve integrates to 1 over the bins
    y = ax.lines[1].get_ydata()
    assert float((y * np.diff(edges)).sum()) == pytest.approx(1.0)
    with pytest.raises(DataError, match="counts"):
        viz.plot_hu_histograms(edges, {"kidney": np.zeros(5)})
    with pytest.raises(DataError, match="not both"):
        viz.plot_hu_histograms({"edges": edges, **counts}, counts)


def test_plot_distributions_two_sources():
    real = pd.DataFrame({"kidney_ml": [100.0, 150, 200], "slices": [60, 80, 100]})
    phantom = pd.DataFrame({"kidney_ml": [30.0, 40], "slices": [16, 16]})
    fig = viz.plot_distributions(
        {"KiTS19": real, "phantoms": phantom, "absent": None}, ["kidney_ml", "slices"]
    )
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2
    assert len(visible[0].patches) == 2 * 20  # two sources x 20 bins
    with pytest.raises(DataError, match="no column"):
        viz.plot_distributions({"only": real}, ["missing"])


def test_read_metrics_and_training_curves(tmp_path):
    rows = [{"iteration": i, "loss": 1.0 - i / 100, "lr": 1e-3} for i in range(10, 60, 10)]
    rows.append({"iteration": 50, "val_kidney": 0.7, "val_tumor": 0.2, "val_composite": 0.45})
    run = tmp_path / "msan_v1"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert viz.read_metrics(run) == rows
    fig = viz.plot_training_curves(run)
    ax_loss, ax_val = fig.axes
    assert len(ax_loss.lines) == 1  # "loss" only ("lr" is not a loss)
    np.testing.assert_allclose(ax_loss.lines[0].get_ydata(), [0.9, 0.8, 0.7, 0.6, 0.5])
    assert len(ax_val.lines) == 3
    fig2 = viz.plot_training_curves({"a": rows, "b": rows}, smooth=2)
    assert len(fig2.axes[0].lines) == 2
    # several runs: one key under the panels, one entry per run and per key (not run x key)
    assert not fig2.axes[0].get_legend() and not fig2.axes[1].get_legend()
    (key,) = fig2.legends
    assert [t.get_text() for t in key.get_texts()] == [
        "a",
        "b",
        "loss",
        "val_composite",
        "val_kidney",
        "val_tumor",
    ]
    np.testing.assert_allclose(fig2.axes[0].lines[0].get_ydata(), [0.85, 0.75, 0.65, 0.55])
    with pytest.raises(DataError, match="no row"):
        viz.plot_training_curves([{"loss": 1.0}])


def test_read_metrics_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        viz.read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1}\nnot json\n')
    with pytest.raises(DataError, match="line 2"):
        viz.read_metrics(tmp_path)


def test_plot_dice_per_case_means():
    table = pd.DataFrame(
        {
            "case_id": ["c0", "c1", "c0", "c1"],
            "model": ["a", "a", "b", "b"],
            "kidney": [0.8, 0.6, 0.9, np.nan],
            "tumor": [0.1, 0.3, 0.2, 0.4],
        }
    )
    fig = viz.plot_dice_per_case(table)
    ax_k, ax_t = fig.axes[:2]
    means = ax_k.collections[-1].get_offsets()
    np.testing.assert_allclose(np.asarray(means)[:, 1], [0.7, 0.9])  # NaN skipped for b
    # the panels are stacked and share the model axis: the names are written under the last one
    assert [t.get_text() for t in ax_t.get_xticklabels()] == ["a", "b"]
    with pytest.raises(DataError, match="column"):
        viz.plot_dice_per_case(table.drop(columns="tumor"))


def test_plot_grouped_bars_heights():
    fig = viz.plot_grouped_bars({"k=1": {"kidney": 0.9, "tumor": 0.5}, "none": {"kidney": 0.8, "tumor": 0.4}})
    heights = sorted(round(p.get_height(), 3) for p in fig.axes[0].patches)
    assert heights == [0.4, 0.5, 0.8, 0.9]
    with pytest.raises(DataError):
        viz.plot_grouped_bars({})


def test_plot_attention_and_upsampling(volume):
    image, label = volume
    weights = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)  # (C, h, w)
    fig = viz.plot_attention(image[2], weights, label2d=label[2])
    shown = fig.axes[1].images[0].get_array()
    assert shown.shape == (32, 32)
    np.testing.assert_allclose(shown[:4, :4], weights.mean(0)[0, 0], rtol=1e-6)  # 4x4 repeat
    with pytest.raises(DataError, match="divide"):
        viz.upsample_nearest(np.zeros((5, 5)), (32, 32))


def test_slice_animation_frames_and_html(volume):
    image, label = volume
    anim = viz.slice_animation(image, label, {"m": label}, max_frames=4)
    html = viz.animation_html(anim)
    assert "<script" in html and html.count("data:image/png;base64") == 4
    # the first frame holds the tumour (the evenly thinned 0, 2, 3, 5 would also start at 0)
    assert (label[anim.kitsmsan_slices[0]] == 2).any()
    assert sorted(anim.kitsmsan_slices) == [0, 2, 3, 5]
    keys = [t.get_text() for t in anim._fig.legends[0].get_texts()]
    assert keys == ["kidney", "tumour"]
    with pytest.raises(DataError, match="default_mode"):
        viz.animation_html(anim, default_mode="sideways")


def test_show_orthogonal_aspect_and_center(volume):
    image, label = volume
    fig = viz.show_orthogonal(image, label, spacing=(3.0, 0.75, 0.75))
    axial, coronal, sagittal = fig.axes
    assert axial.images[0].get_array().shape == (32, 32, 3)
    assert coronal.images[0].get_array().shape == (6, 32, 3)
    assert coronal.get_aspect() == pytest.approx(4.0)  # 3 mm slices / 0.75 mm pixels
    assert axial.get_title() == "axial (z=2)"  # the tumour voxel nearest its centre
    assert label[2, int(coronal.get_title()[11:-1]), int(sagittal.get_title()[12:-1])] == 2
    kidney_only = np.where(label == 2, 1, label).astype(np.uint8)
    assert viz.show_orthogonal(image, kidney_only).axes[0].get_title() == "axial (z=2)"  # fg centre 2.5
    with pytest.raises(DataError, match="spacing"):
        viz.show_orthogonal(image, spacing=(0, 1, 1))
    with pytest.raises(DataError, match="center"):
        viz.show_orthogonal(image, center=(9, 0, 0))


def test_plot_maps_panels():
    fig = viz.plot_maps({"a": np.zeros((4, 4)), "b": np.ones((2, 3)), "c": np.eye(3)}, ncols=2)
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    assert [ax.get_title() for ax in visible] == ["a", "b", "c"]
    assert visible[1].images[0].get_array().shape == (2, 3)
    with pytest.raises(DataError):
        viz.plot_maps({})


def test_source_markdown_is_the_package_source():
    import inspect

    from kitsmsan.postprocess import keep_largest_components

    md = viz.source_markdown(keep_largest_components)
    assert md.startswith("`kitsmsan.postprocess.keep_largest_components`")
    assert inspect.getsource(keep_largest_components).rstrip() in md
    from kitsmsan.widgets import SliceViewer

    method = viz.source_markdown(SliceViewer.frame)  # a method: dedented to column 0
    assert "\ndef frame(" in method and "\n    def frame" not in method
    with pytest.raises(DataError, match="no source"):
        viz.source_markdown(42)


def test_pick_slices_prefers_the_tumour(volume):
    _, label = volume
    assert viz.pick_slices(label, 4, prefer=2) == [2, 3]  # only slices that hold tumour
    assert viz.pick_slices(label, 1, prefer=2) in ([2], [3])
    big = label.copy()
    big[3, 10:16, 10:16] = 2  # slice 3 now has the most tumour
    assert viz.pick_slices(big, 1, prefer=2) == [3]
    no_tumour = np.where(label == 2, 1, label)
    assert viz.pick_slices(no_tumour, 4, prefer=2) == viz.pick_slices(no_tumour, 4)  # falls back


def _legend_texts(fig):
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_every_overlay_has_a_colour_key(volume):
    image, label = volume
    assert _legend_texts(viz.show_slices(image, label)) == ["kidney", "tumour"]
    with_preds = _legend_texts(viz.show_slices(image, label, {"m": label}))
    assert with_preds == [
        "filled: kidney",
        "filled: tumour",
        "ground truth: kidney region (outline)",
        "ground truth: tumour (outline)",
    ]
    assert _legend_texts(viz.show_orthogonal(image, label)) == ["kidney", "tumour"]
    att = viz.plot_attention(image[2], np.full((8, 8), 0.5), label2d=label[2])
    assert "kidney region (outline, middle panel)" in _legend_texts(att)
    # the key's colours are the overlay's colours
    handles = viz.label_key_handles(heat=("inferno", "models disagreeing"))
    assert tuple(handles[0].get_facecolor()[:3]) == pytest.approx(viz.LABEL_COLORS[1])
    assert tuple(handles[1].get_facecolor()[:3]) == pytest.approx(viz.LABEL_COLORS[2])
    assert handles[2].get_label() == "models disagreeing (brighter = more)"


def _texts(fig):
    out = []
    for ax in fig.axes:
        out += [
            ax.title,
            ax.xaxis.label,
            ax.yaxis.label,
            *ax.get_xticklabels(),
            *ax.get_yticklabels(),
            *ax.texts,
        ]
        if ax.get_legend():
            out += ax.get_legend().get_texts()
    for legend in fig.legends:
        out += legend.get_texts()
    return [t for t in out if t.get_text()]


def test_plot_helpers_write_no_text_below_10_points(volume, tmp_path):
    image, label = volume
    frames = {"a": pd.DataFrame({"x": [1.0, 2.0, 3.0]}), "b": pd.DataFrame({"x": [2.0, 2.5]})}
    table = pd.DataFrame(
        {
            "case_id": ["c0", "c1"] * 2,
            "model": ["m1", "m1", "m2", "m2"],
            "kidney": [0.9, 0.8, 0.7, 0.6],
            "tumor": [0.5, 0.4, 0.3, 0.2],
        }
    )
    figs = [
        viz.show_slices(image, label, {"m": label}, title="t"),
        viz.show_orthogonal(image, label),
        viz.plot_attention(image[2], np.full((8, 8), 0.5), label2d=label[2], title="t"),
        viz.plot_maps({"a": np.zeros((4, 4))}, title="t", colorbar_label="models disagreeing"),
        viz.plot_hu_histograms(np.array([-100.0, 0.0, 100.0]), {"kidney": np.array([1, 2])}, title="t"),
        viz.plot_distributions(frames, ["x"], title="t"),
        viz.plot_training_curves([{"iteration": 1, "loss": 0.5, "val_kidney": 0.4}], title="t"),
        viz.plot_dice_per_case(table, title="t"),
        viz.plot_grouped_bars({"g": {"kidney": 0.9, "tumor": 0.4}}, title="t"),
    ]
    for fig in figs:
        fig.canvas.draw()
        small = [(t.get_text(), t.get_fontsize()) for t in _texts(fig) if t.get_fontsize() < 10 - 1e-6]
        assert not small, f"{fig.axes[0].get_title()!r}: text below 10 pt: {small[:5]}"
    hist = figs[4].axes[0]
    assert hist.get_xlabel() == "intensity (HU)" and hist.get_ylabel() == "density (1/HU)"
    assert figs[3].axes[1].get_ylabel() == "models disagreeing"  # the colour bar says what it means


def test_training_curves_of_many_runs_keep_their_panels(recwarn):
    rows = [{"iteration": i, "loss": 1 - i / 500, "loss_ds": 1 - i / 600} for i in range(0, 400, 10)]
    rows += [{"iteration": i, "val_kidney": 0.5, "val_tumor": 0.2} for i in range(50, 400, 50)]
    names = ["unet3d", "msan_v1", "msan_v1_ds", "msan_v2", "msan_v2_ds"]
    fig = viz.plot_training_curves({n: rows for n in names}, smooth=3, title="five networks")
    fig.canvas.draw()
    assert not [w for w in recwarn if "constrained_layout" in str(w.message)]
    assert len(fig.legends[0].get_texts()) == len(names) + 4
    for ax in fig.axes:
        assert ax.get_position().height > 0.5  # the panels are not squashed by the key


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_disagreement_max_is_the_reachable_top_of_the_scale(n):
    import itertools

    votes = np.array(list(itertools.product([0, 1, 2], repeat=n)), dtype=np.uint8).T  # (n, 3**n)
    reached = int(viz.disagreement_map(list(votes)).max())
    assert viz.disagreement_max(n) == reached  # 3 for the paper's five models, not n - 1
    with pytest.raises(DataError):
        viz.disagreement_max(0)


def test_slice_animation_wraps_many_layers(volume):
    image, label = volume
    preds = {f"m{i}": label for i in range(6)}  # ground truth + 6 layers, as the viewer page shows
    anim = viz.slice_animation(image, label, preds, max_frames=2, size=1.9)
    shown = [ax for ax in anim._fig.axes if ax.get_visible()]
    assert len(shown) == 7
    assert anim._fig.get_figwidth() == pytest.approx(4 * 1.9)  # four panels per row, two rows
    assert viz.animation_html(anim).count("data:image/png;base64") == 2
    assert len({round(ax.get_position().y0, 3) for ax in shown}) == 2


def _boxes_overlap(boxes):
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1 :] if ba.overlaps(bb)]


@pytest.mark.parametrize(
    "values",
    [
        {
            g: {"kidney": 0.89, "tumor": 0.2}
            for g in (
                "nested vote, no post-processing",
                "plurality vote, no post-processing",
                "average, no post-processing",
                "nested vote, k=2",
            )
        },
        {g: {f"bar {b}": 1.0 - b / 10 for b in range(5)} for g in ("none", "k=1", "k=2")},
    ],
)
def test_grouped_bars_labels_do_not_collide(values):
    fig = viz.plot_grouped_bars(values, title="a title long enough to need the whole width of the figure")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    ticks = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.get_xticklabels()]
    assert not _boxes_overlap(ticks)
    title = ax.title.get_window_extent(renderer)
    frame = ax.get_window_extent(renderer)
    for note in ax.texts:  # the value labels
        box = note.get_window_extent(renderer)
        assert not box.overlaps(title) and box.y1 <= frame.y1, note.get_text()
    assert not _boxes_overlap([(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts])
    assert title.x0 >= 0 and title.x1 <= fig.bbox.x1  # the title is not cut


def test_dice_per_case_reads_at_10_points_in_the_book_column():
    from matplotlib.text import Text

    models = ["unet3d", "msan_v1", "msan_v1_ds", "msan_v2", "msan_v2_ds", "ensemble"]
    table = pd.DataFrame(
        [
            {"case_id": f"case_{c:05d}", "model": m, "kidney": 0.8, "tumor": 0.4}
            for m in models
            for c in range(10)
        ]
    )
    fig = viz.plot_dice_per_case(table, title="per-case Dice")
    fig.canvas.draw()
    texts = [t for t in fig.findobj(Text) if t.get_text() and t.get_visible()]
    small = [(t.get_text(), viz.display_points(fig, t.get_fontsize())) for t in texts]
    assert min(size for _, size in small) >= 10, sorted(small, key=lambda x: x[1])[:3]
    assert fig.get_figwidth() <= viz.BOOK_COLUMN_IN


def test_plot_maps_keys_label_values():
    target = np.array([[0, 1], [2, 2]])
    fig = viz.plot_maps(
        {"t": target}, cmap="viridis", vmin=0, vmax=2, colorbar=False, categories={0: "bg", 1: "k", 2: "t"}
    )
    (key,) = fig.legends
    assert [t.get_text() for t in key.get_texts()] == ["0: bg", "1: k", "2: t"]
    shown = fig.axes[0].images[0]
    for patch, value in zip(key.get_patches(), (0, 1, 2)):  # each swatch is the colour drawn for its value
        np.testing.assert_allclose(patch.get_facecolor(), shown.cmap(shown.norm(value)))
    with pytest.raises(DataError, match="vmin"):
        viz.plot_maps({"t": target}, categories={0: "bg"})


def test_attention_key_lists_only_the_outlines_drawn(volume):
    image, label = volume
    no_tumour = np.where(label[2] == 2, 1, label[2]).astype(np.uint8)
    texts = _legend_texts(viz.plot_attention(image[2], np.full((8, 8), 0.5), label2d=no_tumour))
    assert "ground truth: kidney region (outline)" in texts
    assert not any("tumour" in t for t in texts)
    with_tumour = _legend_texts(viz.plot_attention(image[2], np.full((8, 8), 0.5), label2d=label[2]))
    assert "ground truth: tumour (outline)" in with_tumour
