"""Tests of kitsmsan.data.phantom: pure phantoms (issue #2) and label-conditioned phantoms (#8)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from kitsmsan.data import phantom as ph
from kitsmsan.data.kits19 import KIDNEY, TUMOR, kits_affine, list_cases, load_case, load_label
from kitsmsan.data.phantom.writer import _case_seed
from kitsmsan.errors import ConfigError, DataError

T = ph.TISSUES
SMALL = {"size": 64, "num_slices": 24}


def _median(image, tissues, name):
    values = image[tissues == T[name]]
    assert values.size, f"no {name} voxels"
    return float(np.median(values))


# ------------------------------------------------------------------------------------------------
# the drawn case (no voxels)
# ------------------------------------------------------------------------------------------------


def test_spec_counts_sizes_and_kinds_over_seeds():
    specs = [ph.phantom_spec(seed) for seed in range(80)]
    assert all(1 <= len(s.tumors) <= 3 for s in specs)
    assert {len(s.tumors) for s in specs} == {1, 2, 3}
    assert all(5.0 <= t.diameter_mm <= 60.0 for s in specs for t in s.tumors)
    assert any(len(s.kidneys) == 1 for s in specs) and any(len(s.kidneys) == 2 for s in specs)
    assert {t.exophytic for s in specs for t in s.tumors} == {True, False}
    thick = {s.spacing[0] for s in specs}
    assert thick <= set(ph.SLICE_THICKNESS_CHOICES) and len(thick) >= 4
    for s in specs:
        sides = {k.side for k in s.kidneys}
        assert all(t.kidney in sides for t in s.tumors)
        # the kidneys plus margins fit in the slab, and it is 15-50 mm wider on each side
        assert s.shape[1:] == (512, 512)
        assert 0.6 < s.spacing[1] < 0.95 and s.spacing[1] == s.spacing[2]


def test_exophytic_flag_matches_geometry():
    """An exophytic tumour's centre lies outside its kidney's ellipsoid, an endophytic one inside."""
    for seed in range(40):
        spec = ph.phantom_spec(seed)
        kidneys = {k.side: k for k in spec.kidneys}
        for t in spec.tumors:
            k = kidneys[t.kidney]
            q = np.asarray(k.axes) @ (np.asarray(t.center_mm) - np.asarray(k.center_mm))
            rho = float(np.sqrt(((q / np.asarray(k.semi_axes_mm)) ** 2).sum()))
            assert (rho >= 1 - 1e-6) if t.exophytic else (rho < 1), (seed, t)


def test_same_anatomy_at_every_size_and_field_of_view_kept():
    a, b = ph.phantom_spec(7, size=64), ph.phantom_spec(7, size=256)
    assert a.kidneys == b.kidneys and a.tumors == b.tumors and a.anatomy == b.anatomy
    assert a.spacing[0] == b.spacing[0] and a.shape[0] == b.shape[0]
    assert a.spacing[1] * 64 == pytest.approx(b.spacing[1] * 256)
    assert a.shape[1:] == (64, 64) and b.shape[1:] == (256, 256)


def test_slice_overrides():
    spec = ph.phantom_spec(3, size=64, num_slices=40)
    default = ph.phantom_spec(3, size=64)
    # num_slices alone keeps the z-extent: the thickness is adapted
    assert spec.shape[0] == 40
    assert spec.shape[0] * spec.spacing[0] == pytest.approx(default.shape[0] * default.spacing[0], rel=0.05)
    both = ph.phantom_spec(3, size=64, num_slices=10, slice_thickness=2.0)
    assert both.shape[0] == 10 and both.spacing[0] == 2.0
    assert ph.phantom_spec(3, size=64, pixel_spacing=1.5).spacing[1:] == (1.5, 1.5)
    assert ph.phantom_spacing(3, size=64, num_slices=40) == spec.spacing


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": -1},
        {"seed": 1.5},
        {"seed": True},
        {"seed": 0, "size": 0},
        {"seed": 0, "size": 8},
        {"seed": 0, "num_slices": 0},
        {"seed": 0, "num_slices": 2.5},
        {"seed": 0, "slice_thickness": -1},
        {"seed": 0, "pixel_spacing": float("nan")},
    ],
)
def test_bad_arguments_name_the_argument(kwargs):
    name = [k for k in kwargs if k != "seed"] or ["seed"]
    with pytest.raises(ConfigError, match=name[0]):
        ph.make_phantom(**kwargs)


# ------------------------------------------------------------------------------------------------
# rendered voxels
# ------------------------------------------------------------------------------------------------


def test_deterministic_and_seed_dependent():
    a = ph.make_phantom(11, **SMALL)
    b = ph.make_phantom(11, **SMALL)
    c = ph.make_phantom(12, **SMALL)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].dtype == np.float32 and a[1].dtype == np.uint8
    assert a[0].shape == a[1].shape == (24, 64, 64)
    assert set(np.unique(a[1])) <= {0, 1, 2} and (a[1] == KIDNEY).any() and (a[1] == TUMOR).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tissue_intensities(seed):
    image, label, tissues = ph.make_phantom(seed, size=128, num_slices=40, return_tissues=True)
    assert _median(image, tissues, "air") < -950
    assert -130 < _median(image, tissues, "fat") < -70
    assert 30 < _median(image, tissues, "muscle") < 75
    assert 40 < _median(image, tissues, "liver") < 90
    assert _median(image, tissues, "bone") > 500  # above the paper's window
    cortex, medulla = _median(image, tissues, "renal_cortex"), _median(image, tissues, "renal_medulla")
    assert 130 < cortex < 270 and 15 < medulla < 100 and cortex > medulla + 50
    # the tissue map agrees with the label: kidney tissue only inside label 1, tumour = label 2
    renal = np.isin(tissues, [T["renal_cortex"], T["renal_medulla"], T["renal_sinus"], T["urine"]])
    assert np.array_equal(renal, label == KIDNEY)
    assert np.array_equal(np.isin(tissues, [T["tumor"], T["necrosis"]]), label == TUMOR)
    # tumour HU overlap the kidney's: most tumour voxels lie within the kidney's 5-95 % range
    tumor = image[tissues == T["tumor"]]
    kidney = image[np.isin(tissues, [T["renal_cortex"], T["renal_medulla"]])]
    lo, hi = np.percentile(kidney, [5, 95])
    assert 35 < np.median(tumor) < 185
    assert np.mean((tumor >= lo) & (tumor <= hi)) > 0.5


def test_kidney_length_in_slices_at_3mm():
    """Kidneys are ~10-12 cm long: at 3 mm slices each spans ~30-43 slices."""
    spans = []
    for seed in range(4):
        _, label = ph.make_phantom(seed, size=64, slice_thickness=3.0)
        comps, n = ndimage.label(label > 0, np.ones((3, 3, 3)))
        sizes = np.bincount(comps.ravel())[1:]
        for i in np.flatnonzero(sizes >= 0.2 * sizes.max()):
            zs = np.flatnonzero((comps == i + 1).any(axis=(1, 2)))
            spans.append(len(zs))
    assert spans and all(28 <= s <= 48 for s in spans), spans


def test_tumour_volume_matches_drawn_diameter():
    """Rendered tumour volume ~ the sphere of the drawn diameter (mm units, not voxels)."""
    checked = 0
    for seed in range(30):
        spec = ph.phantom_spec(seed, size=96, num_slices=48)
        if len(spec.tumors) != 1:
            continue
        _, label = ph.render_phantom(spec)
        volume = (label == TUMOR).sum() * np.prod(spec.spacing)
        sphere = np.pi / 6 * spec.tumors[0].diameter_mm ** 3
        assert 0.5 < volume / sphere < 2.0, (seed, volume, sphere)
        checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_one_kidney_case_renders_one_kidney():
    seed = next(s for s in range(200) if len(ph.phantom_spec(s).kidneys) == 1)
    _, label = ph.make_phantom(seed, **SMALL)
    comps, n = ndimage.label(label > 0, np.ones((3, 3, 3)))
    sizes = np.bincount(comps.ravel())[1:]
    assert np.count_nonzero(sizes >= 0.2 * sizes.max()) == 1


# ------------------------------------------------------------------------------------------------
# datasets on disk
# ------------------------------------------------------------------------------------------------


def test_write_phantom_dataset_layout_headers_metadata(tmp_path):
    root = tmp_path / "data"
    ids = ph.write_phantom_dataset(root, 2, seed=5, size=32, num_slices=12, progress=False)
    assert ids == ["case_00000", "case_00001"] == list_cases(root)
    meta = json.loads((root / "phantoms.json").read_text())
    assert meta["version"] == ph.GENERATOR_VERSION and meta["kind"] == "pure" and meta["seed"] == 5
    for cid in ids:
        entry = meta["cases"][cid]
        case = load_case(root / cid)
        image, label = ph.make_phantom(entry["seed"], size=32, num_slices=12)
        assert np.array_equal(case.image, image) and np.array_equal(case.label, label)
        assert case.spacing == pytest.approx(tuple(entry["spacing"]))
        assert case.spacing == pytest.approx(ph.phantom_spacing(entry["seed"], size=32, num_slices=12))
        np.testing.assert_allclose(case.affine, kits_affine(case.spacing))
        assert nib.load(root / cid / "imaging.nii.gz").get_data_dtype() == np.float32
        assert nib.load(root / cid / "segmentation.nii.gz").get_data_dtype() == np.uint8
        assert 1 <= len(entry["tumors"]) <= 3 and entry["tumor_voxels"] == int((label == TUMOR).sum())
    # case k does not depend on num_cases; another seed gives other cases
    ph.write_phantom_dataset(tmp_path / "one", 1, seed=5, size=32, num_slices=12, progress=False)
    assert np.array_equal(load_case(tmp_path / "one" / "case_00000").image, load_case(root / ids[0]).image)
    other = json.loads((root / "phantoms.json").read_text())["cases"]["case_00000"]["seed"]
    assert other != _case_seed(6, 0)


def test_write_phantom_dataset_bad_input_writes_nothing(tmp_path):
    with pytest.raises(ConfigError, match="case_ids"):
        ph.write_phantom_dataset(tmp_path / "a", 2, size=32, case_ids=["case_00001"], progress=False)
    with pytest.raises(ConfigError, match="num_cases"):
        ph.write_phantom_dataset(tmp_path / "b", 0, size=32, progress=False)
    with pytest.raises(ConfigError, match="size"):
        ph.write_phantom_dataset(tmp_path / "c", 1, size=4, progress=False)
    assert not any((tmp_path / n).exists() for n in "abc")


def test_cli_phantoms_and_custom_ids(tmp_path):
    from kitsmsan.cli import main

    out = tmp_path / "cli"
    assert (
        main(
            [
                "phantoms",
                "--out",
                str(out),
                "--cases",
                "1",
                "--size",
                "32",
                "--slices",
                "8",
                "--seed",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    case = load_case(out / "case_00000")
    assert case.image.shape == (8, 32, 32)
    assert main(["phantoms", "--out", str(out), "--cases-range", "0-1", "--no-progress"]) == 2
    ids = ph.write_phantom_dataset(tmp_path / "ids", 1, size=32, num_slices=8, case_ids=[42], progress=False)
    assert ids == ["case_00042"] and (tmp_path / "ids" / "case_00042" / "imaging.nii.gz").is_file()


# ------------------------------------------------------------------------------------------------
# label-conditioned phantoms
# ------------------------------------------------------------------------------------------------


def _hand_label(shape=(30, 80, 80), spacing=(3.0, 2.0, 2.0)):
    """Two ellipsoidal 'kidneys' left and right of the centre, a tumour on one, a stray voxel."""
    z, y, x = np.indices(shape)
    label = np.zeros(shape, np.uint8)
    for cx in (22, 58):
        inside = ((z - 15) * spacing[0] / 55) ** 2 + ((y - 50) * spacing[1] / 22) ** 2 + (
            (x - cx) * spacing[2] / 28
        ) ** 2 <= 1
        label[inside] = KIDNEY
    label[((z - 15) * 3 / 15) ** 2 + ((y - 50) * 2 / 15) ** 2 + ((x - 12) * 2 / 15) ** 2 <= 1] = TUMOR
    label[2, 5, 5] = KIDNEY
    return label, spacing


def test_label_conditioned_keeps_label_and_looks_like_pure_phantoms():
    label, spacing = _hand_label()
    image, out, sp, tissues = ph.phantom_from_label(label, spacing, 3, return_tissues=True)
    assert np.array_equal(out, label) and sp == spacing
    assert image.shape == label.shape and image.dtype == np.float32
    cortex, medulla = _median(image, tissues, "renal_cortex"), _median(image, tissues, "renal_medulla")
    assert 130 < cortex < 270 and 15 < medulla < 100 and cortex > medulla + 50
    assert _median(image, tissues, "bone") > 500 and -130 < _median(image, tissues, "fat") < -70
    assert 35 < np.median(image[label == TUMOR]) < 185
    # the body holds the kidneys: no air voxel touches kidney or tumour
    assert not (tissues[ndimage.binary_dilation(label > 0, iterations=2)] == T["air"]).any()
    again = ph.phantom_from_label(label.astype(np.uint16), spacing, 3)
    assert np.array_equal(again[0], image)
    assert not np.array_equal(ph.phantom_from_label(label, spacing, 4)[0], image)


def test_label_conditioned_resampling_is_nearest_neighbour():
    label, spacing = _hand_label()
    image, out, sp = ph.phantom_from_label(label, spacing, 0, size=40)
    # 80 -> 40: the nearest source of output pixel i is 2 i + 1
    assert np.array_equal(out, label[:, 1::2, 1::2])
    assert sp == pytest.approx((3.0, 4.0, 4.0)) and image.shape == (30, 40, 40)
    small, sp2 = ph.resample_label_inplane(np.zeros((2, 10, 20), np.uint8), (1, 1, 1), 5)
    assert small.shape == (2, 3, 5) and sp2 == pytest.approx((1.0, 10 / 3, 4.0))


def test_z_resampling_is_nearest_neighbour_and_keeps_the_extent():
    label = np.repeat((np.arange(10) % 3).astype(np.uint8), 4).reshape(10, 2, 2)  # slice k holds k % 3
    out, sp = ph.resample_label_z(label, (1.0, 0.8, 0.8), 2.5)
    # 10 -> round(10 / 2.5) = 4 slices; output k takes source floor((k + 0.5) * 10 / 4) = 1, 3, 6, 8
    assert out[:, 0, 0].tolist() == [1, 0, 0, 2] and out.dtype == np.uint8
    assert sp == pytest.approx((2.5, 0.8, 0.8))
    out, sp = ph.resample_label_z(label, (1.0, 0.8, 0.8), 3.0)  # 3 slices: sources 1, 5, 8
    assert out[:, 0, 0].tolist() == [1, 2, 2] and sp[0] == pytest.approx(10 / 3)
    with pytest.raises(ConfigError, match="slice_thickness"):
        ph.resample_label_z(label, (1, 1, 1), 0)


def test_z_crop_to_the_kidneys_with_a_margin():
    label = np.zeros((20, 2, 2), np.uint8)
    label[8:12, 0, 0] = KIDNEY
    assert ph.crop_label_z(label, (2.0, 1, 1), 3.0)[1] == (6, 14)  # 3 mm = 1.5 slices -> 2
    assert ph.crop_label_z(label, (2.0, 1, 1), 0)[1] == (8, 12)
    assert ph.crop_label_z(label, (2.0, 1, 1), 100)[1] == (0, 20)
    cropped, _ = ph.crop_label_z(label, (2.0, 1, 1), 2.0)
    assert np.array_equal(cropped, label[7:13])
    assert ph.crop_label_z(np.zeros((5, 2, 2), np.uint8), (1, 1, 1), 1)[1] == (0, 5)  # no kidney
    with pytest.raises(ConfigError, match="z_margin_mm"):
        ph.crop_label_z(label, (2.0, 1, 1), -1)


def test_label_conditioned_with_z_crop_and_thick_slices():
    label, spacing = _hand_label()
    image, out, sp = ph.phantom_from_label(label, spacing, 0, z_margin_mm=3.0, slice_thickness=6.0)
    cropped, _ = ph.crop_label_z(label, spacing, 3.0)
    expect, expect_sp = ph.resample_label_z(cropped, spacing, 6.0)
    assert np.array_equal(out, expect) and sp == pytest.approx(expect_sp) and image.shape == out.shape
    assert out.shape[0] < label.shape[0] and sp[0] == pytest.approx(6.0, rel=0.2)
    with pytest.raises(ConfigError, match="slice_thickness"):
        ph.phantom_from_label(label, spacing, 0, slice_thickness=-5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 4), np.uint8), "3-D"),
        (np.full((2, 4, 4), 3, np.uint8), "outside"),
        (np.full((2, 4, 4), 0.5, np.float32), "non-integer"),
    ],
)
def test_label_conditioned_bad_labels(bad, match):
    with pytest.raises(DataError, match=match):
        ph.phantom_from_label(bad, (1, 1, 1), 0)
    with pytest.raises(DataError, match="spacing"):
        ph.phantom_from_label(np.zeros((2, 4, 4), np.uint8), (1, 0, 1), 0)


@pytest.mark.kits_labels
@pytest.mark.parametrize("case", ["case_00160", "case_00015"])  # 512 x 796 ; uint16 qform-only
def test_label_conditioned_on_awkward_real_files(kits_labels_dir, case):
    label, spacing, _ = load_label(kits_labels_dir / case / "segmentation.nii.gz")
    image, out, sp, tissues = ph.phantom_from_label(label, spacing, 1, size=64, return_tissues=True)
    expect, expect_sp = ph.resample_label_inplane(label, spacing, 64)
    assert np.array_equal(out, expect) and sp == pytest.approx(expect_sp)
    assert max(out.shape[1:]) == 64 and out.shape[0] == label.shape[0]
    assert sp[1] * out.shape[1] == pytest.approx(spacing[1] * label.shape[1], rel=0.02)
    assert _median(image, tissues, "renal_cortex") > _median(image, tissues, "renal_medulla") + 50


@pytest.mark.kits_labels
@pytest.mark.slow
def test_label_conditioned_real_case_full_grid_kept_exactly(kits_labels_dir):
    label, spacing, _ = load_label(kits_labels_dir / "case_00015" / "segmentation.nii.gz")
    image, out, sp = ph.phantom_from_label(label, spacing, 0)
    assert np.array_equal(out, label) and sp == spacing and image.shape == label.shape


@pytest.mark.kits_labels
def test_write_label_conditioned_dataset(kits_labels_dir, tmp_path):
    out = tmp_path / "rl"
    ids = ph.write_label_conditioned_dataset(
        kits_labels_dir, out, case_ids=[15], size=32, seed=1, progress=False
    )
    assert ids == ["case_00015"]
    case = load_case(out / "case_00015")
    src, src_sp, _ = load_label(kits_labels_dir / "case_00015" / "segmentation.nii.gz")
    expect, expect_sp = ph.resample_label_inplane(src, src_sp, 32)
    assert np.array_equal(case.label, expect) and case.spacing == pytest.approx(expect_sp, rel=1e-5)
    meta = json.loads((out / "phantoms.json").read_text())
    assert meta["kind"] == "label-conditioned" and "CC BY-NC-SA" in meta["attribution"]
    assert meta["cases"]["case_00015"]["seed"] == _case_seed(1, 15)
    with pytest.raises(DataError, match="must differ"):
        ph.write_label_conditioned_dataset(kits_labels_dir, kits_labels_dir, case_ids=[15], progress=False)
    with pytest.raises(DataError, match="no segmentation"):
        ph.write_label_conditioned_dataset(kits_labels_dir, tmp_path / "x", case_ids=[999], progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.kits_labels
def test_write_label_conditioned_dataset_with_z_crop_and_thick_slices(kits_labels_dir, tmp_path):
    """A thin-slice real case becomes a short CPU-sized volume: crop to the kidneys, then ~5 mm."""
    out = tmp_path / "rl"
    ph.write_label_conditioned_dataset(
        kits_labels_dir,
        out,
        case_ids=[15],
        size=32,
        seed=1,
        progress=False,
        slice_thickness=5.0,
        z_margin_mm=10.0,
    )
    case = load_case(out / "case_00015")
    src, src_sp, _ = load_label(kits_labels_dir / "case_00015" / "segmentation.nii.gz")
    cropped, (z0, z1) = ph.crop_label_z(src, src_sp, 10.0)
    expect, expect_sp = ph.resample_label_z(cropped, src_sp, 5.0)
    expect, expect_sp = ph.resample_label_inplane(expect, expect_sp, 32)
    assert np.array_equal(case.label, expect) and case.spacing == pytest.approx(expect_sp, rel=1e-5)
    assert case.label.shape[0] < src.shape[0] and case.label.any()
    meta = json.loads((out / "phantoms.json").read_text())
    assert meta["cases"]["case_00015"]["z_range"] == [z0, z1]
    assert meta["slice_thickness"] == 5.0 and meta["z_margin_mm"] == 10.0


def test_write_phantom_dataset_pixel_spacing_sets_the_field_of_view(tmp_path):
    # the CPU smoke data: a finer in-plane spacing at a small size = a smaller field of view, same anatomy
    wide = ph.write_phantom_dataset(tmp_path / "wide", 1, seed=3, size=64, num_slices=12, progress=False)
    zoom = ph.write_phantom_dataset(
        tmp_path / "zoom", 1, seed=3, size=64, num_slices=12, pixel_spacing=3.2, progress=False
    )
    a, b = load_case(tmp_path / "wide" / wide[0]), load_case(tmp_path / "zoom" / zoom[0])
    assert b.spacing[1:] == pytest.approx((3.2, 3.2))
    assert a.spacing[1] > 3.2
    # the same kidneys, seen with (a.spacing / 3.2)^2 times as many pixels (within 15 %)
    ratio = (b.label > 0).sum() / (a.label > 0).sum()
    assert ratio == pytest.approx((a.spacing[1] / 3.2) ** 2, rel=0.15)
