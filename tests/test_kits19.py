"""Tests of kitsmsan.data.kits19: format, header convention, bad inputs, the real label files."""

from __future__ import annotations

import errno
import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import TINY_CASES, make_tiny_case
from kitsmsan.data import kits19
from kitsmsan.data.kits19 import (
    AFFINE_ATOL,
    BACKGROUND,
    KIDNEY,
    LABEL_NAMES,
    TUMOR,
    case_id,
    case_number,
    kits_affine,
    list_cases,
    load_case,
    load_label,
    read_header,
    save_case,
    save_prediction,
)
from kitsmsan.errors import DataError


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with (size, mtime_ns): to check nothing was written or deleted."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_nifti(path: Path, array: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    imaging = path.parent / "imaging.nii.gz"
    if affine is None and path.name == "segmentation.nii.gz" and imaging.is_file():
        affine = nib.load(str(imaging)).affine  # on the imaging's grid (else refused for that)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def test_label_constants():
    assert (BACKGROUND, KIDNEY, TUMOR) == (0, 1, 2)
    assert LABEL_NAMES == {0: "background", 1: "kidney", 2: "tumor"}


@pytest.mark.parametrize("n, cid", [(0, "case_00000"), (42, "case_00042"), (209, "case_00209")])
def test_case_id_round_trip(n, cid):
    assert case_id(n) == cid
    assert case_number(cid) == n


@pytest.mark.parametrize("bad", ["case_42", "case_000042", "patient_00042", "", "case_0004a"])
def test_case_number_malformed(bad):
    with pytest.raises(DataError, match="case_XXXXX"):
        case_number(bad)


@pytest.mark.parametrize("bad", [-1, 100000, 1.5, True])
def test_case_id_bad_number(bad):
    with pytest.raises(DataError):
        case_id(bad)


def test_kits_affine_hand_computed():
    expected = np.array([[0, 0, -0.8, 0], [0, -0.7, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(kits_affine((3.0, 0.7, 0.8)), expected)
    assert nib.aff2axcodes(expected) == ("I", "P", "L")


@pytest.mark.parametrize("bad", [(0, 1, 1), (1, -1, 1), (1, 1), (1, float("nan"), 1), "abc"])
def test_kits_affine_bad_spacing(bad):
    with pytest.raises(DataError, match="spacing"):
        kits_affine(bad)


def test_round_trip(tiny_case_root):
    for cid, spec in TINY_CASES.items():
        image, label, spacing = make_tiny_case(cid)
        case = load_case(tiny_case_root / cid)
        assert case.case_id == cid and case.path == tiny_case_root / cid
        assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
        np.testing.assert_array_equal(case.image, image)
        np.testing.assert_array_equal(case.label, label)
        np.testing.assert_allclose(case.spacing, spacing, rtol=1e-6)
        np.testing.assert_allclose(case.affine, kits_affine(spacing), rtol=1e-6)
        assert case.shape == spec["shape"]


def test_header_convention(tiny_case_root):
    """Written files follow the official KiTS19 header: float32 / uint8, the IPL affine as qform and
    sform, pixdim[1] = slice thickness, pixdim[2:4] = in-plane spacing."""
    folder = tiny_case_root / "case_00000"
    for name, dtype in (("imaging.nii.gz", np.float32), ("segmentation.nii.gz", np.uint8)):
        img = nib.load(str(folder / name))
        hdr = img.header
        assert hdr.get_data_dtype() == dtype
        assert int(hdr["qform_code"]) > 0 and int(hdr["sform_code"]) > 0
        np.testing.assert_allclose(img.get_qform(), kits_affine((2.5, 0.75, 0.75)), atol=1e-6)
        np.testing.assert_allclose(img.get_sform(), kits_affine((2.5, 0.75, 0.75)), atol=1e-6)
        np.testing.assert_allclose(hdr["pixdim"][1:4], [2.5, 0.75, 0.75])
        assert nib.aff2axcodes(img.affine) == ("I", "P", "L")
        with gzip.open(folder / name) as fh:  # really gzip, really NIfTI-1 ("n+1" magic)
            assert fh.read(348)[344:347] == b"n+1"


def test_reads_uint16_qform_only(tmp_path):
    """Like cases 15, 23, ... of KiTS19: uint16 segmentation with a qform and no sform."""
    label = np.zeros((4, 6, 5), np.uint16)
    label[1, 2, 3], label[2, 2, 3] = 1, 2
    img = nib.Nifti1Image(label, None)
    img.set_qform(kits_affine((3.0, 0.7, 0.7)), code=1)
    img.set_sform(None, code=0)
    path = tmp_path / "case_00015" / "segmentation.nii.gz"
    path.parent.mkdir()
    nib.save(img, str(path))
    out, spacing, affine = load_label(path)
    assert out.dtype == np.uint8 and out.shape == (4, 6, 5)
    np.testing.assert_array_equal(out, label)
    np.testing.assert_allclose(spacing, (3.0, 0.7, 0.7), rtol=1e-6)
    np.testing.assert_allclose(affine, kits_affine((3.0, 0.7, 0.7)), atol=1e-6)


def test_list_cases(tiny_case_root):
    assert list_cases(tiny_case_root) == sorted(TINY_CASES)
    (tiny_case_root / "case_00007").mkdir()  # empty case folder: not a case
    (tiny_case_root / "notes").mkdir()
    assert list_cases(tiny_case_root) == sorted(TINY_CASES)
    (tiny_case_root / "case_00000" / "imaging.nii.gz").unlink()
    assert list_cases(tiny_case_root) == ["case_00001", "case_00002"]
    assert list_cases(tiny_case_root, require_imaging=False) == sorted(TINY_CASES)


def test_list_cases_empty_and_wrong_folder(tiny_case_root, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no KiTS19 cases") as exc:
        list_cases(empty)
    assert str(empty) in str(exc.value)
    with pytest.raises(DataError, match="does not exist"):
        list_cases(tmp_path / "nope")
    with pytest.raises(DataError, match="single case folder"):
        list_cases(tiny_case_root / "case_00000")
    with pytest.raises(DataError, match="did you mean"):
        list_cases(tmp_path)  # the folder above data/


def test_labels_only_folder(tiny_case_root):
    (tiny_case_root / "case_00000" / "imaging.nii.gz").unlink()
    case = load_case(tiny_case_root / "case_00000", load_image=False)
    assert case.image is None
    np.testing.assert_array_equal(case.label, make_tiny_case("case_00000")[1])
    np.testing.assert_allclose(case.spacing, (2.5, 0.75, 0.75), rtol=1e-6)
    assert case.shape == (10, 16, 16)
    with pytest.raises(DataError, match="imaging.nii.gz.*missing.*load_image=False"):
        load_case(tiny_case_root / "case_00000")


def test_unlabelled_case_has_no_label(tiny_case_root):
    (tiny_case_root / "case_00001" / "segmentation.nii.gz").unlink()
    case = load_case(tiny_case_root / "case_00001")
    assert case.label is None and case.image.shape == (3, 16, 20)
    with pytest.raises(DataError, match="segmentation.nii.gz"):
        load_case(tiny_case_root / "case_00001", load_image=False)


def test_load_flags(tiny_case_root):
    case = load_case(tiny_case_root / "case_00000", load_label=False)
    assert case.label is None and case.image is not None


# -- bad inputs: each names the file and the problem, and changes nothing on disk ---------------


def _corrupt(kind: str, folder: Path) -> tuple[str, str]:
    """Make the case folder bad in one way; return (file name expected in the message, problem)."""
    img, seg = folder / "imaging.nii.gz", folder / "segmentation.nii.gz"
    z, y, x = 10, 16, 16
    if kind == "missing imaging":
        img.unlink()
        return "imaging.nii.gz", "missing"
    if kind == "truncated":
        data = img.read_bytes()
        img.write_bytes(data[: len(data) // 2])
        return "imaging.nii.gz", "truncated or corrupt"
    if kind == "corrupt gzip":
        data = bytearray(seg.read_bytes())
        data[40:80] = bytes(40)  # garbage inside the deflate stream
        seg.write_bytes(bytes(data))
        return "segmentation.nii.gz", "corrupt"
    if kind == "not nifti":
        img.write_bytes(gzip.compress(b"this is a text file, not an image\n" * 20))
        return "imaging.nii.gz", "not a readable NIfTI"
    if kind == "plain text":
        img.write_text("hello")
        return "imaging.nii.gz", "not a readable NIfTI"
    if kind == "2-D":
        write_nifti(img, np.zeros((y, x), np.float32))
        return "imaging.nii.gz", "3-D"
    if kind == "4-D":
        write_nifti(seg, np.zeros((z, y, x, 2), np.uint8))
        return "segmentation.nii.gz", "3-D"
    if kind == "shape mismatch":
        write_nifti(seg, np.zeros((z, y, x + 1), np.uint8))
        return "segmentation.nii.gz", "differs from image shape"
    if kind == "label value 3":
        bad = np.zeros((z, y, x), np.uint8)
        bad[2, 3, 4] = 3
        write_nifti(seg, bad)
        return "segmentation.nii.gz", "outside"
    if kind == "negative label":
        write_nifti(seg, np.full((z, y, x), -1, np.int16))
        return "segmentation.nii.gz", "outside"
    if kind == "non-integer label":
        bad = np.zeros((z, y, x), np.float32)
        bad[1, 1, 1] = 0.5
        write_nifti(seg, bad)
        return "segmentation.nii.gz", "non-integer"
    if kind in ("NaN voxel", "inf voxel"):
        bad = np.zeros((z, y, x), np.float32)
        bad[3, 3, 3] = np.nan if kind == "NaN voxel" else np.inf
        write_nifti(img, bad)
        return "imaging.nii.gz", "non-finite"
    raise AssertionError(kind)


BAD_KINDS = [
    "missing imaging",
    "truncated",
    "corrupt gzip",
    "not nifti",
    "plain text",
    "2-D",
    "4-D",
    "shape mismatch",
    "label value 3",
    "negative label",
    "non-integer label",
    "NaN voxel",
    "inf voxel",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_case_raises_named_error(kind, tiny_case_root):
    folder = tiny_case_root / "case_00000"
    name, problem = _corrupt(kind, folder)
    before = snapshot(tiny_case_root)
    with pytest.raises(DataError) as exc:
        load_case(folder)
    message = str(exc.value)
    assert str(folder / name) in message
    assert problem in message
    assert snapshot(tiny_case_root) == before  # nothing written or deleted


def test_unknown_case_folder(tiny_case_root):
    with pytest.raises(DataError, match="does not exist"):
        load_case(tiny_case_root / "case_00099")
    bad = tiny_case_root / "patient1"
    bad.mkdir()
    with pytest.raises(DataError, match="patient1"):
        load_case(bad)


@pytest.mark.parametrize(
    "image_shape, label_shape, label_value, image_value, problem",
    [
        ((4, 5), None, 0, 0.0, "3-D"),
        ((3, 4, 5), (3, 4, 6), 0, 0.0, "differs"),
        ((3, 4, 5), (3, 4, 5), 3, 0.0, "outside"),
        ((3, 4, 5), (3, 4, 5), 0, np.nan, "non-finite"),
    ],
)
def test_save_case_rejects_bad_input_and_writes_nothing(
    tmp_path, image_shape, label_shape, label_value, image_value, problem
):
    image = np.full(image_shape, image_value, np.float32)
    label = None if label_shape is None else np.full(label_shape, label_value, np.uint8)
    with pytest.raises(DataError, match=problem):
        save_case(tmp_path / "data", "case_00003", image, label, (1.0, 1.0, 1.0))
    assert not (tmp_path / "data").exists()


def test_save_case_refuses_path_escape(tmp_path):
    with pytest.raises(DataError):
        save_case(tmp_path, "../case_00001", np.zeros((2, 2, 2)), None, (1, 1, 1))


def test_save_prediction(tiny_case_root, tmp_path):
    ref = load_case(tiny_case_root / "case_00001")
    pred = np.zeros(ref.shape, np.int64)
    pred[1, 2:5, 3:6] = 2
    out = save_prediction(pred, ref, tmp_path)
    assert out == tmp_path / "prediction_00001.nii.gz"
    img = nib.load(str(out))
    assert img.header.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-6)
    np.testing.assert_allclose(img.get_qform(), ref.affine, atol=1e-6)
    back, spacing, _ = load_label(out)
    np.testing.assert_array_equal(back, pred)
    np.testing.assert_allclose(spacing, ref.spacing)
    with pytest.raises(DataError, match="shape"):
        save_prediction(np.zeros((3, 16, 16), np.uint8), ref, tmp_path / "x.nii.gz")
    with pytest.raises(DataError, match=".nii.gz"):
        save_prediction(pred, ref, tmp_path / "x.nii")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["prediction_00001.nii.gz"]


def test_disk_full_leaves_old_file(tiny_case_root, monkeypatch):
    """A failed write (disk full) keeps the previous file intact and leaves no temporary file."""
    folder = tiny_case_root / "case_00000"
    before = snapshot(tiny_case_root)
    real = gzip.GzipFile.write

    def full(self, data):
        real(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gzip.GzipFile, "write", full)
    image, label, spacing = make_tiny_case("case_00000")
    with pytest.raises(OSError):
        save_case(tiny_case_root, "case_00000", image + 1, label, spacing)
    monkeypatch.undo()
    assert snapshot(tiny_case_root) == before
    np.testing.assert_array_equal(load_case(folder).image, image)


# -- the real KiTS19 segmentations ---------------------------------------------------------------

AWKWARD_UINT16 = {15, 23, 37, 39, 116, 125, 144, 157, 176}


@pytest.fixture(scope="module")
def kits_spacing():
    return {}


FULL_LOAD = AWKWARD_UINT16 | {160} | set(range(0, 190, 10))


@pytest.mark.kits_labels
@pytest.mark.slow
@pytest.mark.parametrize("n", range(190))
def test_real_label_loads(n, kits_labels_dir, kits_spacing):
    """Every real segmentation's header: shape, spacing = kits.json's, IPL affine. The voxels
    (uint8 in {0,1,2}) of the awkward cases and every 10th case; of all 190 with
    KITSMSAN_FULL_LABELS=1 (~30 s on 2 cores)."""
    if not kits_spacing:
        with open(kits_labels_dir / "kits.json") as fh:
            for entry in json.load(fh):
                vs = entry["voxel_spacing"]
                kits_spacing[entry["case_id"]] = (vs["z_spacing"], vs["y_spacing"], vs["x_spacing"])
    cid = case_id(n)
    folder = kits_labels_dir / cid
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    shape, spacing, affine = kits19.read_header(folder / "segmentation.nii.gz")
    np.testing.assert_allclose(spacing, kits_spacing[cid], rtol=1e-5)
    assert nib.aff2axcodes(affine) == ("I", "P", "L")
    if n == 160:
        assert shape[:2] == (252, 512) and shape[2] != 512
    if n in FULL_LOAD or os.environ.get("KITSMSAN_FULL_LABELS") == "1":
        case = load_case(folder, load_image=False)
        assert case.image is None
        assert case.label.dtype == np.uint8 and case.label.shape == shape
        assert KIDNEY <= case.label.max() <= TUMOR  # every training case has kidney
        np.testing.assert_allclose(case.spacing, spacing)
    if n in AWKWARD_UINT16:
        hdr = nib.load(str(folder / "segmentation.nii.gz")).header
        assert hdr.get_data_dtype() == np.uint16 and int(hdr["sform_code"]) == 0


@pytest.mark.kits_labels
def test_real_labels_list(kits_labels_dir):
    cases = list_cases(kits_labels_dir, require_imaging=False)
    assert cases[0] == "case_00000" and len(cases) >= 190
    with pytest.raises(DataError, match="segmentations only"):
        list_cases(kits_labels_dir)


# -------------------------------------------------------------------- header rules (before any voxel)
def _hostile_header(path: Path, shape, dtype=np.int16, pixdim=None) -> Path:
    """A .nii.gz whose header claims ``shape``/``dtype`` but which holds only a few bytes of data."""
    import gzip as _gzip

    img = nib.Nifti1Image(np.zeros((2, 2, 2), dtype=np.int16), kits_affine((3.0, 0.8, 0.8)))
    hdr = img.header.copy()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    if pixdim is not None:
        hdr["pixdim"][1:4] = pixdim
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\0" * (352 - len(hdr.binaryblock)) + b"\0" * 64
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_gzip.compress(raw))
    return path


@pytest.mark.parametrize(
    "shape, dtype, pixdim, message",
    [
        ((32767, 32767, 32767), np.int16, None, "more than the 1073741824 a CT volume may have"),
        ((1000, 1000, 1000), np.float32, None, "more than this"),  # under the bound, over the file
        ((4, 0, 4), np.int16, None, "zero-length dimension"),
        ((2, 2, 2), np.complex64, None, "complex voxels"),
        ((2, 2, 2), np.int16, (0.0, 0.8, 0.8), "invalid voxel spacing"),
        ((2, 2, 2), np.int16, (3.0, float("nan"), 0.8), "invalid voxel spacing"),
    ],
)
def test_hostile_headers_are_refused_before_reading(tmp_path, shape, dtype, pixdim, message):
    path = _hostile_header(tmp_path / "case_00000" / "imaging.nii.gz", shape, dtype, pixdim)
    with pytest.raises(DataError, match=message) as info:
        load_case(tmp_path / "case_00000")
    assert str(path) in str(info.value)
    with pytest.raises(DataError, match=message):
        read_header(path)


def test_rgb_imaging_is_refused_naming_the_file(tmp_path):
    rgb = np.zeros((2, 3, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = tmp_path / "case_00000" / "imaging.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(path))
    with pytest.raises(DataError, match="RGB/structured voxels") as info:
        load_case(path.parent)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "shift, accepted", [(0.0, True), (AFFINE_ATOL / 2, True), (AFFINE_ATOL * 2, False), (2.5, False)]
)
def test_segmentation_affine_must_match_the_imaging(tmp_path, shift, accepted):
    image = np.zeros((4, 6, 6), np.float32)
    folder = save_case(tmp_path, "case_00000", image, np.zeros((4, 6, 6), np.uint8), (3.0, 0.8, 0.8))
    affine = kits_affine((3.0, 0.8, 0.8))
    affine[0, 3] += shift
    write_nifti(folder / "segmentation.nii.gz", np.zeros((4, 6, 6), np.uint8), affine)
    if accepted:
        assert load_case(folder).label is not None
    else:
        with pytest.raises(DataError, match="segmentation.nii.gz: its affine differs from that of .*imaging"):
            load_case(folder)


def test_evaluate_refuses_a_prediction_on_another_grid(tmp_path, capsys):
    from kitsmsan.cli import main

    label = np.zeros((4, 6, 6), np.uint8)
    label[1:3, 2:4, 2:4] = 1
    save_case(tmp_path / "data", "case_00000", np.zeros((4, 6, 6), np.float32), label, (3.0, 0.8, 0.8))
    shifted = kits_affine((3.0, 0.8, 0.8))
    shifted[1, 3] += 5.0
    write_nifti(tmp_path / "pred" / "prediction_00000.nii.gz", label, shifted)
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(tmp_path / "pred"),
                "--data",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "prediction_00000.nii.gz: its affine differs" in err and not (tmp_path / "eval").exists()
