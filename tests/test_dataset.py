"""Tests of kitsmsan.data.dataset: case ranges, the split, the slice-window sampler."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kitsmsan.data.dataset import PAPER_SPLIT, SliceWindowDataset, parse_case_range, split_cases
from kitsmsan.data.preprocess import load_cache_index, normalize
from kitsmsan.errors import ConfigError, DataError


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0-3,7", [0, 1, 2, 3, 7]),
        ("5", [5]),
        (" 1 , 1-2 ", [1, 2]),
        ("180-189", list(range(180, 190))),
        (4, [4]),
        ([3, "case_00001", "2"], [3, 1, 2]),
    ],
)
def test_parse_case_range(spec, expected):
    assert parse_case_range(spec) == expected


@pytest.mark.parametrize("spec", ["", "a", "5-3", "1-x", "1,,2-", None, "-1", ["patient"]])
def test_parse_case_range_errors(spec):
    with pytest.raises(ConfigError, match="case range"):
        parse_case_range(spec)


def test_split_cases_paper_default():
    assert PAPER_SPLIT == {"train": "0-179", "test": "180-189"}
    split = split_cases(range(210))
    assert len(split["train"]) == 180 and split["train"][0] == "case_00000"
    assert split["train"][-1] == "case_00179"
    assert split["test"] == [f"case_{n:05d}" for n in range(180, 190)]


def test_split_cases_custom_and_missing():
    split = split_cases(["case_00003", "case_00001", "case_00009"], train="0-5", test="9")
    assert split == {"train": ["case_00001", "case_00003"], "test": ["case_00009"]}
    with pytest.raises(ConfigError, match="overlap"):
        split_cases(range(10), train="0-5", test="5-9")


def _cache_arrays(cache, cid):
    return np.load(cache / cid / "image.npy"), np.load(cache / cid / "label.npy")


def test_shapes_dtypes_and_content(tiny_cache):
    ds = SliceWindowDataset(tiny_cache, [0, 1, 2], length=200, seed=3)
    assert len(ds) == 200 and ds.plane_size == (16, 16)  # the most common plane
    for i in range(60):
        image, label = ds[i]
        assert image.shape == (1, 4, 16, 16) and image.dtype == torch.float32
        assert label.shape == (4, 16, 16) and label.dtype == torch.int64
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        spec = ds.window_spec(i)
        cached_image, cached_label = _cache_arrays(tiny_cache, spec.case_id)
        idx = list(spec.slices)
        ys = slice(spec.y0, spec.y0 + 16)
        xs = slice(spec.x0, spec.x0 + 16)
        if spec.case_id == "case_00001":  # 16 x 20 plane cropped to 16 x 16
            assert 0 <= spec.x0 <= 4 and spec.y0 == 0
        np.testing.assert_array_equal(label.numpy(), cached_label[idx][:, ys, xs])
        np.testing.assert_allclose(image[0].numpy(), normalize(cached_image[idx][:, ys, xs]))


def test_short_case_is_edge_padded(tiny_cache):
    ds = SliceWindowDataset(tiny_cache, [1], length=50)
    for i in range(20):
        assert ds.window_spec(i).slices == (0, 1, 2, 2)
    image, label = ds[0]
    np.testing.assert_array_equal(image[0, 2], image[0, 3])
    np.testing.assert_array_equal(label[2], label[3])


def test_determinism(tiny_cache):
    a = SliceWindowDataset(tiny_cache, "0-2", seed=7, crop_size=8)
    b = SliceWindowDataset(tiny_cache, "0-2", seed=7, crop_size=8)
    for i in (0, 1, 999, 123456):
        xa, ya = a[i]
        xb, yb = b[i]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(a[5][0], a[5][0])  # same index, same sample, whatever came between
    c = SliceWindowDataset(tiny_cache, "0-2", seed=8, crop_size=8)
    assert [a.window_spec(i) for i in range(30)] != [c.window_spec(i) for i in range(30)]


def test_oversampling_rates(tiny_cache):
    """Case 0 has kidney on slices 4-5 of 10, tumour on slice 5: the foreground share follows
    fg_fraction, the tumour share of it tumor_fraction, and every foreground window holds its slice."""
    n = 4000
    ds = SliceWindowDataset(tiny_cache, [0], fg_fraction=0.5, tumor_fraction=0.25, length=n, seed=1)
    specs = [ds.window_spec(i) for i in range(n)]
    kinds = np.array([s.kind for s in specs])
    fg = np.isin(kinds, ["kidney", "tumor"])
    sigma = np.sqrt(0.25 / n)
    assert abs(fg.mean() - 0.5) < 4 * sigma
    tumor_share = (kinds == "tumor").sum() / fg.sum()
    assert abs(tumor_share - 0.25) < 4 * np.sqrt(0.25 * 0.75 / fg.sum())
    for s in specs:
        if s.kind == "tumor":
            assert 5 in s.slices
        elif s.kind == "kidney":
            assert {4, 5} & set(s.slices)
    # uniform windows: starts 0..6 equally likely (7 positions)
    starts = np.array([s.slices[0] for s in specs if s.kind == "uniform"])
    counts = np.bincount(starts, minlength=7)
    assert len(counts) == 7 and counts.min() > 0.7 * counts.mean()


@pytest.mark.parametrize("fg_fraction, expect_fg", [(0.0, 0.0), (1.0, 1.0)])
def test_oversampling_extremes(tiny_cache, fg_fraction, expect_fg):
    ds = SliceWindowDataset(tiny_cache, [0], fg_fraction=fg_fraction, length=300)
    share = np.mean([ds.window_spec(i).kind != "uniform" for i in range(300)])
    assert share == expect_fg


def test_case_without_kidney_falls_back_to_uniform(tiny_cache):
    ds = SliceWindowDataset(tiny_cache, [2], fg_fraction=1.0, length=100)
    assert {ds.window_spec(i).kind for i in range(100)} == {"uniform"}


def test_foreground_crop_contains_foreground(tiny_cache):
    ds = SliceWindowDataset(tiny_cache, [0], crop_size=4, fg_fraction=1.0, tumor_fraction=0.5, length=200)
    for i in range(100):
        spec = ds.window_spec(i)
        _, label = ds[i]
        assert label.shape == (4, 4, 4)
        if spec.kind == "tumor":
            assert (label == 2).any()
        else:
            assert (label > 0).any()


def test_crop_larger_than_plane_pads(tiny_cache):
    ds = SliceWindowDataset(tiny_cache, [0], crop_size=(20, 24), fg_fraction=0.0, length=10)
    image, label = ds[0]
    assert image.shape == (1, 4, 20, 24) and label.shape == (4, 20, 24)
    assert float(image[0, :, 0, 0].abs().sum()) == 0.0  # padded with the window's low end
    assert int(label[:, :2].sum()) == 0


def test_dataloader_workers_match_single_process(tiny_cache):
    ds = SliceWindowDataset(tiny_cache, [0, 1, 2], crop_size=8, length=64, seed=5)
    ds[0]  # open memmaps in the parent first: workers must not reuse them
    state = pickle.dumps(ds)
    assert len(state) < 20_000  # no arrays travel to the workers
    single = list(DataLoader(ds, batch_size=4, num_workers=0))
    multi = list(DataLoader(ds, batch_size=4, num_workers=2))
    assert len(single) == len(multi) == 16
    for (xa, ya), (xb, yb) in zip(single, multi):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_bad_arguments(tiny_cache, tmp_path):
    with pytest.raises(DataError, match="case_00007"):
        SliceWindowDataset(tiny_cache, [0, 7])
    with pytest.raises(DataError, match="index is missing"):
        SliceWindowDataset(tmp_path / "nope", [0])
    for kwargs, name in [
        ({"num_slices": 0}, "num_slices"),
        ({"fg_fraction": 1.5}, "fg_fraction"),
        ({"tumor_fraction": -0.1}, "tumor_fraction"),
        ({"crop_size": 0}, "crop_size"),
        ({"crop_size": (4, 4, 4)}, "crop_size"),
        ({"length": 0}, "length"),
        ({"seed": -1}, "seed"),
    ]:
        with pytest.raises(ConfigError, match=name):
            SliceWindowDataset(tiny_cache, [0], **kwargs)
    ds = SliceWindowDataset(tiny_cache, [0], length=10)
    with pytest.raises(IndexError):
        ds[10]
    with pytest.raises(IndexError):
        ds[-1]


def test_num_slices_configurable(tiny_cache):
    ds = SliceWindowDataset(tiny_cache, [0], num_slices=7, length=10)
    image, label = ds[3]
    assert image.shape == (1, 7, 16, 16) and label.shape == (7, 16, 16)


def test_window_must_fit_the_cache(tiny_cache):
    """The cache holds HU clipped to (-200, 500): a wider window cannot be recovered from it."""
    with pytest.raises(ConfigError, match="window"):
        SliceWindowDataset(tiny_cache, [0], window=(-1000, 500))
    ds = SliceWindowDataset(tiny_cache, [0], window=(-100, 300), length=5)
    image, _ = ds[0]
    spec = ds.window_spec(0)
    cached = np.load(tiny_cache / spec.case_id / "image.npy")[list(spec.slices)]
    np.testing.assert_allclose(image[0].numpy(), normalize(cached, (-100, 300)))


def test_phantom_pipeline(tiny_phantom_root, tmp_path):
    """Phantoms -> prepare -> windows: the end-to-end data path of the smoke configs."""
    from kitsmsan.data.preprocess import prepare_cache

    index = prepare_cache(tiny_phantom_root, tmp_path / "cache", case_ids="0-1", progress=False)
    assert all(m["kidney_slices"] for m in index["cases"].values())
    ds = SliceWindowDataset(tmp_path / "cache", "0-1", fg_fraction=1.0, length=20)
    labels = torch.stack([ds[i][1] for i in range(20)])
    assert labels.shape == (20, 4, 32, 32) and bool((labels > 0).any(dim=(1, 2, 3)).all())


def test_downsample(tiny_cache):
    full = SliceWindowDataset(tiny_cache, [0], length=10, seed=2)
    half = SliceWindowDataset(tiny_cache, [0], length=10, seed=2, downsample=2)
    (x, y), (xh, yh) = full[4], half[4]
    assert xh.shape == (1, 4, 8, 8) and yh.shape == (4, 8, 8)
    # hand check: block (0, 0) of slice 0 is the mean of the 2 x 2 block; label = its (1, 1) voxel
    assert torch.isclose(xh[0, 0, 0, 0], x[0, 0, :2, :2].mean())
    assert torch.equal(yh, y[:, 1::2, 1::2])
    with pytest.raises(ConfigError, match="downsample"):
        SliceWindowDataset(tiny_cache, [0], downsample=3)


@pytest.mark.parametrize("label_dtype, torch_dtype", [("uint8", torch.uint8), ("int16", torch.int16)])
def test_label_dtype_fast_path(tiny_cache, label_dtype, torch_dtype):
    # the narrow label (issue #6 fast path) holds the same values as the default int64 one, in a
    # writable copy that does not alias the read-only cache (and the crop/pad path still works)
    wide = SliceWindowDataset(tiny_cache, [0, 1, 2], length=40, seed=5)
    narrow = SliceWindowDataset(tiny_cache, [0, 1, 2], length=40, seed=5, label_dtype=label_dtype)
    padded = SliceWindowDataset(tiny_cache, [1], length=5, seed=5, crop_size=24, label_dtype=label_dtype)
    for i in range(40):
        (x, y), (xn, yn) = wide[i], narrow[i]
        assert yn.dtype == torch_dtype and torch.equal(yn.long(), y) and torch.equal(xn, x)
    yn = narrow[0][1]
    yn[0, 0, 0] = 2  # writable: a copy, not the memory map
    assert padded[0][1].shape == (4, 24, 24) and padded[0][1].dtype == torch_dtype
    assert int(padded[0][1][:, 0, :].max()) == 0  # padded rows are background
    with pytest.raises(ConfigError, match="label_dtype"):
        SliceWindowDataset(tiny_cache, [0], label_dtype="float32")


def test_window_hint_fits_the_cached_planes(tiny_cache):
    """A crop the network cannot take is refused with a size that fits the image: on planes of at
    most P pixels the hint is never larger than P (it used to suggest 992 for a 32-pixel image)."""
    from kitsmsan.data.dataset import check_window_fits

    ids = list(load_cache_index(tiny_cache)["cases"])
    largest = max(m["shape"][2] for m in load_cache_index(tiny_cache)["cases"].values())
    ds = SliceWindowDataset(tiny_cache, ids, num_slices=4, crop_size=1000, length=4)
    with pytest.raises(
        ConfigError, match=r"crop_size=1000: the network needs H and W multiples of 16"
    ) as info:
        check_window_fits(ds, (4, 16, 16))
    hint = int(str(info.value).rsplit("crop_size=", 1)[1].split()[0])
    assert hint % 16 == 0 and 16 <= hint <= max(16, largest)
    check_window_fits(SliceWindowDataset(tiny_cache, ids, num_slices=4, crop_size=16, length=4), (4, 16, 16))
    with pytest.raises(ConfigError, match="num_slices=3"):
        check_window_fits(
            SliceWindowDataset(tiny_cache, ids, num_slices=3, crop_size=16, length=4), (4, 16, 16)
        )
