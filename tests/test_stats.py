"""Tests of kitsmsan.data.stats: statistics, HU histograms, the post-processing ceiling."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from kitsmsan.data import stats
from kitsmsan.data.kits19 import KIDNEY, TUMOR, Case, kits_affine
from kitsmsan.errors import DataError


def _case(label, spacing=(2.0, 0.5, 0.5), image=None, cid="case_00007"):
    return Case(cid, image, label, spacing, kits_affine(spacing), Path("/nowhere") / cid)


def _two_kidneys():
    """Kidney A: 3x3x3 = 27 voxels (1 tumour voxel inside); kidney B: 2x2x2 = 8; 10 slices."""
    label = np.zeros((10, 12, 12), np.uint8)
    label[1:4, 1:4, 1:4] = KIDNEY
    label[2, 2, 2] = TUMOR
    label[6:8, 8:10, 8:10] = KIDNEY
    return label


def test_case_statistics_by_hand():
    label = _two_kidneys()
    label[9, 11, 11] = KIDNEY  # a stray voxel: third component
    label[4, 4, 4] = KIDNEY  # touches kidney A only at a corner: same 26-component
    s = stats.case_statistics(_case(label))
    voxel_ml = 2.0 * 0.5 * 0.5 / 1000  # 0.0005 ml
    assert s["case_id"] == "case_00007" and (s["slices"], s["rows"], s["cols"]) == (10, 12, 12)
    assert s["slice_thickness_mm"] == 2.0 and s["pixel_spacing_mm"] == 0.5
    assert s["kidney_ml"] == pytest.approx((26 + 8 + 2) * voxel_ml)
    assert s["tumor_ml"] == pytest.approx(1 * voxel_ml)
    assert s["kidney_region_ml"] == pytest.approx(37 * voxel_ml)
    assert s["kidney_components"] == 3 and s["kidney_components_1ml"] == 0
    assert s["tumor_components"] == 1
    assert s["kidney_slice_fraction"] == pytest.approx(7 / 10)  # slices 1, 2, 3, 4, 6, 7, 9
    assert s["tumor_slice_fraction"] == pytest.approx(1 / 10)
    assert set(stats.STAT_COLUMNS) == set(s)


def test_case_statistics_slice_fraction_counts_every_labelled_slice():
    label = np.zeros((5, 4, 4), np.uint8)
    label[0, 0, 0] = KIDNEY
    label[3, 1, 1] = TUMOR
    s = stats.case_statistics(_case(label, (1.0, 1.0, 1.0)))
    assert s["kidney_slice_fraction"] == pytest.approx(2 / 5)
    assert s["tumor_slice_fraction"] == pytest.approx(1 / 5)
    assert s["kidney_components"] == 2 and s["tumor_components"] == 1


def test_case_statistics_hu_and_errors():
    label = _two_kidneys()
    image = np.zeros(label.shape, np.float32)
    image[label == KIDNEY] = 200.0
    image[label == TUMOR] = 80.0
    s = stats.case_statistics(_case(label, image=image))
    assert s["kidney_hu_mean"] == 200.0 and s["tumor_hu_mean"] == 80.0 and s["tumor_hu_std"] == 0.0
    with pytest.raises(DataError, match="no segmentation"):
        stats.case_statistics(_case(None, image=image))
    with pytest.raises(DataError, match="Case or a case folder"):
        stats.case_statistics(42)


def test_dataset_statistics_tiny_root(tiny_case_root):
    table = stats.dataset_statistics(tiny_case_root)
    assert list(table["case_id"]) == ["case_00000", "case_00001", "case_00002"]
    # case_00000: kidney 4x4 on slices 4, 5; tumour 2x2 on slice 5 (conftest.TINY_CASES)
    row = table.iloc[0]
    voxel_ml = 2.5 * 0.75 * 0.75 / 1000
    assert row["kidney_ml"] == pytest.approx((32 - 4) * voxel_ml)
    assert row["tumor_ml"] == pytest.approx(4 * voxel_ml)
    assert row["kidney_slice_fraction"] == pytest.approx(2 / 10)
    assert "kidney_hu_mean" in table and np.isnan(table.iloc[2]["kidney_hu_mean"])
    labels_only = stats.dataset_statistics(tiny_case_root, labels_only=True, case_ids=[1])
    assert list(labels_only["case_id"]) == ["case_00001"] and "kidney_hu_mean" not in labels_only
    with pytest.raises(DataError, match="case_00009"):
        stats.dataset_statistics(tiny_case_root, case_ids=[9])


@pytest.mark.kits_labels
@pytest.mark.parametrize("case", ["case_00015", "case_00152"])  # uint16 qform-only ; 3 components
def test_real_case_statistics_against_independent_computation(kits_labels_dir, case):
    path = kits_labels_dir / case
    img = nib.load(path / "segmentation.nii.gz")
    raw = np.asarray(img.dataobj)
    zooms = [float(v) for v in img.header.get_zooms()]
    s = stats.case_statistics(path)
    voxel_ml = zooms[0] * zooms[1] * zooms[2] / 1000
    assert s["slices"] == raw.shape[0] and (s["rows"], s["cols"]) == raw.shape[1:]
    assert s["slice_thickness_mm"] == pytest.approx(zooms[0])
    assert s["kidney_ml"] == pytest.approx(np.count_nonzero(raw == 1) * voxel_ml)
    assert s["tumor_ml"] == pytest.approx(np.count_nonzero(raw == 2) * voxel_ml)
    _, n = ndimage.label(raw > 0, structure=np.ones((3, 3, 3)))
    assert s["kidney_components"] == n
    frac = np.mean([np.any(raw[z] > 0) for z in range(raw.shape[0])])
    assert s["kidney_slice_fraction"] == pytest.approx(frac)
    assert 150 < s["kidney_ml"] < 700


def test_hu_histograms_by_hand():
    label = np.array([[[0, 0, 1, 1, 2, 2]]], np.uint8)
    image = np.array([[[-5000, 5, 15, 15, 25, 5000]]], np.float32)
    h = stats.hu_histograms((image, label), bins=3, hu_range=(0, 30))
    np.testing.assert_array_equal(h["edges"], [0, 10, 20, 30])
    np.testing.assert_array_equal(h["background"], [2, 0, 0])  # -5000 clipped into the first bin
    np.testing.assert_array_equal(h["kidney"], [0, 2, 0])
    np.testing.assert_array_equal(h["tumor"], [0, 0, 2])  # 5000 clipped into the last bin
    twice = stats.hu_histograms([(image, label), (image, label)], bins=[0, 10, 20, 30])
    np.testing.assert_array_equal(twice["kidney"], [0, 4, 0])
    with pytest.raises(DataError, match="differs"):
        stats.hu_histograms((image, label[:, :, :3]))
    with pytest.raises(DataError, match="increasing"):
        stats.hu_histograms((image, label), bins=[0, 0, 1])


def test_hu_histograms_of_case_folders(tiny_case_root):
    h = stats.hu_histograms([tiny_case_root / "case_00000", tiny_case_root / "case_00001"])
    assert h["kidney"].sum() == 28 + 16 and h["tumor"].sum() == 4
    assert sum(h[k].sum() for k in ("background", "kidney", "tumor")) == 10 * 16 * 16 + 3 * 16 * 20


def test_postprocess_ceiling_by_hand():
    label = _two_kidneys()
    c = stats.postprocess_ceiling(label, (2.0, 0.5, 0.5))
    # k = 1 keeps kidney A (27 voxels) and deletes B (8): Dice = 2*27 / (27 + 35)
    assert c["kidney_components"] == 2
    assert c["kidney_dice_k1"] == pytest.approx(54 / 62)
    assert c["tumor_dice_k1"] == 1.0
    assert c["composite_k1"] == pytest.approx((54 / 62 + 1) / 2)
    assert c["kidney_deleted_k1"] is True and c["removed_ml_k1"] == pytest.approx(8 * 0.0005)
    assert c["kidney_dice_k2"] == 1.0 and c["kidney_deleted_k2"] is False and c["removed_ml_k2"] == 0
    # the tumour in the smaller kidney: k = 1 deletes it too
    moved = _two_kidneys()
    moved[2, 2, 2] = KIDNEY
    moved[6, 8, 8] = TUMOR
    c = stats.postprocess_ceiling(moved)
    assert c["tumor_dice_k1"] == 0.0 and c["tumor_dice_k2"] == 1.0 and np.isnan(c["removed_ml_k1"])
    # a stray voxel beside two kidneys: k = 2 removes it, and that is not "a whole kidney"
    stray = _two_kidneys()
    stray[9, 11, 11] = KIDNEY
    c = stats.postprocess_ceiling(stray)
    assert c["kidney_components"] == 3 and c["kidney_deleted_k2"] is False
    assert c["kidney_dice_k2"] == pytest.approx(2 * 35 / (35 + 36))
    # no tumour at all: tumour Dice NaN, composite = kidney Dice (official NaN rule)
    no_tumor = _two_kidneys()
    no_tumor[no_tumor == TUMOR] = KIDNEY
    c = stats.postprocess_ceiling(no_tumor)
    assert np.isnan(c["tumor_dice_k1"]) and c["composite_k1"] == pytest.approx(54 / 62)
    with pytest.raises(DataError, match="3-D"):
        stats.postprocess_ceiling(np.zeros((4, 4), np.uint8))


def test_ceiling_table_and_csv_round_trip(tiny_case_root, tmp_path):
    table = stats.ceiling_table(tiny_case_root)
    assert list(table.columns) == ["case_id", *stats.CEILING_COLUMNS] and len(table) == 3
    # one component per tiny case: k = 1 costs nothing; case_00002 has no label at all -> NaN
    assert table["kidney_dice_k1"].iloc[0] == 1.0 and np.isnan(table["kidney_dice_k1"].iloc[2])
    summary = stats.ceiling_summary(table)
    assert summary["cases"] == 3 and summary["kidney_deleted_k1"] == 0
    path = stats.write_table(table, tmp_path / "t.csv", comment=["first", stats.KITS19_ATTRIBUTION])
    text = path.read_text().splitlines()
    assert text[0] == "# first" and "CC BY-NC-SA 4.0" in text[1]
    back = stats.read_table(path)
    assert list(back["case_id"]) == list(table["case_id"])
    np.testing.assert_allclose(back["kidney_dice_k1"], table["kidney_dice_k1"])
    with pytest.raises(DataError, match="does not exist"):
        stats.read_table(tmp_path / "missing.csv")


def test_cli_stats(tiny_case_root, tmp_path, capsys):
    from kitsmsan.cli import main

    out = tmp_path / "s.csv"
    assert main(["stats", "--data", str(tiny_case_root), "--csv", str(out), "--no-progress"]) == 0
    assert "statistics of 3 cases" in capsys.readouterr().out
    assert stats.read_table(out)["slices"].tolist() == [10, 3, 12]
    assert (
        main(
            [
                "stats",
                "--data",
                str(tiny_case_root),
                "--ceiling",
                "--labels-only",
                "--cases-range",
                "0-1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "k=1" in capsys.readouterr().out
    assert main(["stats", "--data", str(tmp_path / "nothing"), "--no-progress"]) == 2


BOOK_DATA = Path(__file__).resolve().parent.parent / "book" / "data"


def test_committed_book_tables_are_attributed_and_complete():
    """The derived KiTS19 tables shipped for the book: 190 cases, attribution line, sane values."""
    for name, columns in (
        ("kits19_label_stats.csv", stats.STAT_COLUMNS),
        ("postprocess_ceiling.csv", ("case_id", *stats.CEILING_COLUMNS)),
    ):
        path = BOOK_DATA / name
        head = path.read_text().splitlines()[:3]
        assert any("CC BY-NC-SA 4.0" in line and line.startswith("#") for line in head)
        table = stats.read_table(path)
        assert list(table.columns) == list(columns) and len(table) == 190
        assert table["case_id"].tolist() == [f"case_{n:05d}" for n in range(190)]
    ceiling = stats.read_table(BOOK_DATA / "postprocess_ceiling.csv")
    assert (ceiling["kidney_dice_k2"] >= ceiling["kidney_dice_k1"]).all()
    assert ceiling["kidney_deleted_k1"].sum() > 150 and ceiling["kidney_deleted_k2"].sum() == 0


@pytest.mark.kits_labels
def test_committed_book_tables_match_recomputation(kits_labels_dir):
    label_stats = stats.read_table(BOOK_DATA / "kits19_label_stats.csv").set_index("case_id")
    ceiling = stats.read_table(BOOK_DATA / "postprocess_ceiling.csv").set_index("case_id")
    for cid in ("case_00015", "case_00152"):
        fresh = stats.case_statistics(kits_labels_dir / cid)
        for key in ("slices", "kidney_ml", "tumor_ml", "kidney_components", "kidney_slice_fraction"):
            assert label_stats.loc[cid, key] == pytest.approx(fresh[key], rel=1e-5)
        row = stats.ceiling_table(kits_labels_dir, case_ids=[cid]).set_index("case_id").loc[cid]
        for key in ("kidney_dice_k1", "tumor_dice_k1", "kidney_dice_k2"):
            assert ceiling.loc[cid, key] == pytest.approx(row[key], rel=1e-5)
