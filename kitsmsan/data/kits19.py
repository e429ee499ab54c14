"""The KiTS19 data format: case folders, NIfTI headers, labels (MSAN paper, §2.1).

KiTS19 ships one folder per case::

    data/case_00042/imaging.nii.gz        float32 CT in Hounsfield units (HU)
    data/case_00042/segmentation.nii.gz   uint8 labels 0 background, 1 kidney, 2 tumour

Arrays are ``(Z, Y, X)`` = (slices, rows, columns): axis 0 is axial. The official header stores the
affine ``[[0, 0, -px, 0], [0, -px, 0, 0], [-slice, 0, 0, 0], [0, 0, 0, 1]]`` (orientation IPL), so
``pixdim[1]`` is the slice thickness and ``pixdim[2:4]`` the in-plane spacing; :func:`load_case`
reports the spacing as ``(z, y, x)`` in millimetres, in array-axis order. Some of the real files are
awkward and still load: nine segmentations are uint16 with only a qform (cases 15, 23, 37, 39, 116,
125, 144, 157, 176), and case_00160 is not 512 × 512 in-plane.

Every reader checks what it reads and raises :class:`kitsmsan.errors.DataError` naming the file and
the problem (missing, truncated, not NIfTI, not 3-D, shape mismatch, bad label values, non-finite
voxels). Every writer writes atomically (temporary file, fsync, rename), after validating its input,
so an error never leaves a half-written file behind.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from kitsmsan.errors import ConfigError, DataError
from kitsmsan.utils.io import atomic_write, safe_join

BACKGROUND, KIDNEY, TUMOR = 0, 1, 2
LABEL_NAMES = {BACKGROUND: "background", KIDNEY: "kidney", TUMOR: "tumor"}
NUM_CLASSES = len(LABEL_NAMES)

IMAGING_FILE = "imaging.nii.gz"
SEGMENTATION_FILE = "segmentation.nii.gz"

_CASE_RE = re.compile(r"^case_(\d{5})$")
#: the largest volume a header may claim (voxels): 2**30, ~3.9x the largest KiTS19 case (1059 x 512 x 512)
MAX_VOXELS = 1 << 30
#: deflate cannot compress better than ~1032:1, so a .nii.gz smaller than nbytes / this is a lie
MAX_GZIP_RATIO = 1032
#: largest per-element difference (mm) accepted between a segmentation's affine and its imaging's
AFFINE_ATOL = 1e-3
_COMPRESSLEVEL = 1  # gzip level of written files: ~3x faster than 6, a few % larger


@dataclass
class Case:
    """One KiTS19 case as arrays.

    Attributes:
        case_id: ``"case_00042"``.
        image: float32 ``(Z, Y, X)`` CT in Hounsfield units, or ``None`` for a labels-only load.
        label: uint8 ``(Z, Y, X)`` in {0, 1, 2}, or ``None`` when the case has no segmentation
            (the 90 KiTS19 test cases) or labels were not requested.
        spacing: ``(z, y, x)`` voxel size in mm, read from the header.
        affine: 4 × 4 voxel-to-world affine, as stored in the file.
        path: the case folder.
        header: the NIfTI header of the imaging file (of the segmentation for a labels-only load);
            :func:`save_prediction` copies it so predictions line up with the imaging.
    """

    case_id: str
    image: np.ndarray | None
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    affine: np.ndarray
    path: Path
    header: nib.Nifti1Header | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)`` of the image, or of the label when there is no image."""
        arr = self.image if self.image is not None else self.label
        if arr is None:
            raise DataError(f"{self.path}: case {self.case_id} holds neither image nor label")
        return tuple(int(s) for s in arr.shape)


def case_id(n: int) -> str:
    """Case number to KiTS19 case id: ``42 -> "case_00042"``.

    Raises:
        DataError: if ``n`` is not an integer in 0..99999.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= int(n) <= 99999:
        raise DataError(f"case number {n!r}: expected an integer in 0..99999")
    return f"case_{int(n):05d}"


def case_number(case_id: str) -> int:
    """KiTS19 case id to case number: ``"case_00042" -> 42``.

    Raises:
        DataError: if ``case_id`` is not of the form ``case_XXXXX`` (five digits).
    """
    m = _CASE_RE.match(str(case_id))
    if m is None:
        raise DataError(f"case id {case_id!r}: expected 'case_XXXXX' with five digits")
    return int(m.group(1))


def normalize_case_id(case: int | str) -> str:
    """Accept ``42``, ``"42"`` or ``"case_00042"`` and return ``"case_00042"`` (DataError otherwise)."""
    if isinstance(case, (int, np.integer)) and not isinstance(case, bool):
        return case_id(int(case))
    text = str(case)
    if text.isdigit():
        return case_id(int(text))
    case_number(text)
    return text


#: the largest number a ``case_XXXXX`` id can hold
MAX_CASE_NUMBER = 99999


def parse_case_range(spec: str | int | Iterable[int | str] | None) -> list[int]:
    """Parse a case selection like ``"0-179,185"`` into case numbers.

    Args:
        spec: comma-separated numbers and inclusive ranges (``"0-179,185"``), a single int, or an
            iterable of ints / ``"case_XXXXX"`` ids. Order is kept, duplicates dropped.

    Returns:
        e.g. ``[0, 1, ..., 179, 185]``.

    Raises:
        ConfigError: naming the bad part (empty, not a number, reversed range).
    """
    if spec is None:
        raise ConfigError("case range: None given (expected e.g. '0-179,185')")
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        numbers = [int(spec)]
    elif isinstance(spec, str):
        numbers = []
        parts = [p.strip() for p in spec.split(",")]
        if not any(parts):
            raise ConfigError(f"case range {spec!r}: empty")
        for part in parts:
            a, sep, b = part.partition("-")
            try:
                if not sep:
                    numbers.append(int(a))
                    continue
                lo, hi = int(a), int(b)
            except ValueError:
                raise ConfigError(f"case range {spec!r}: {part!r} is not a number or a-b range") from None
            if lo > hi:
                raise ConfigError(f"case range {spec!r}: {part!r} runs backwards")
            if lo < 0 or hi > MAX_CASE_NUMBER:  # checked before the range is built (no MemoryError)
                raise ConfigError(f"case range {spec!r}: case numbers must be in 0..{MAX_CASE_NUMBER}")
            numbers.extend(range(lo, hi + 1))
    else:
        numbers = []
        for item in spec:
            try:
                numbers.append(case_number(normalize_case_id(item)))
            except DataError as exc:
                raise ConfigError(f"case range: {exc}") from None
    if any(n < 0 or n > MAX_CASE_NUMBER for n in numbers):
        raise ConfigError(f"case range {spec!r}: case numbers must be in 0..{MAX_CASE_NUMBER}")
    return list(dict.fromkeys(numbers))


def prediction_filename(case: int | str) -> str:
    """KiTS19 submission file name of a case: ``"case_00042"`` or 42 → ``"prediction_00042.nii.gz"``.

    The one place the name is built (``kitsmsan predict``, ``ensemble``, ``evaluate``, ``reproduce``).
    """
    return f"prediction_{case_number(normalize_case_id(case)):05d}.nii.gz"


def probs_filename(case: int | str) -> str:
    """File name of a case's saved probabilities: ``"case_00042"`` → ``"probs_00042.npy"``."""
    return f"probs_{case_number(normalize_case_id(case)):05d}.npy"


def list_cases(root: str | Path, *, require_imaging: bool = True) -> list[str]:
    """The sorted case ids under a KiTS19 data folder.

    Args:
        root: the folder that holds ``case_XXXXX/`` sub-folders (KiTS19's ``data/``).
        require_imaging: if True (default), list only cases with an ``imaging.nii.gz``; if False,
            also cases that hold only a ``segmentation.nii.gz`` (a labels-only checkout).

    Returns:
        e.g. ``["case_00000", "case_00001", ...]``.

    Raises:
        DataError: if ``root`` is not a folder, or holds no such case (with a hint when ``root``
            looks like a case folder or the repository above ``data/``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist or is not a folder")
    wanted = (IMAGING_FILE,) if require_imaging else (IMAGING_FILE, SEGMENTATION_FILE)
    ids = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and _CASE_RE.match(p.name) and any((p / f).is_file() for f in wanted)
    )
    if ids:
        return ids
    what = IMAGING_FILE if require_imaging else f"{IMAGING_FILE} or {SEGMENTATION_FILE}"
    hint = ""
    if any((root / f).exists() for f in (IMAGING_FILE, SEGMENTATION_FILE)):
        hint = f"; this looks like a single case folder, pass its parent {root.parent}"
    elif (root / "data").is_dir():
        hint = f"; did you mean {root / 'data'}?"
    elif require_imaging and any(
        (p / SEGMENTATION_FILE).is_file() for p in root.iterdir() if _CASE_RE.match(p.name)
    ):
        hint = "; it holds segmentations only (download the imaging, or load labels only)"
    raise DataError(f"{root}: no KiTS19 cases found (expected case_XXXXX/{what}){hint}")


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _open_nifti(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI header (data stays on disk); DataError for missing / non-NIfTI files."""
    if not path.is_file():
        raise DataError(f"{path}: file is missing")
    try:
        img = nib.load(str(path))
    except MemoryError:
        raise
    except Exception as exc:  # any failure to parse the input file is the file's fault
        # (ImageFileError, HeaderDataError, EOFError, zlib.error, ValueError, struct.error ...)
        raise DataError(
            f"{path}: not a readable NIfTI file (not NIfTI, or corrupt/truncated; "
            f"{type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(img, nib.Nifti1Image):  # Nifti2 subclasses Nifti1
        raise DataError(f"{path}: not a NIfTI-1/2 image (got {type(img).__name__})")
    if len(img.shape) != 3:
        raise DataError(f"{path}: expected a 3-D (Z, Y, X) array, got shape {tuple(img.shape)}")
    check_header(img, path)
    return img


def check_header(img: nib.Nifti1Image, path: Path) -> None:
    """Refuse, from the header alone (before any voxel is read), what cannot be a KiTS19 volume.

    Raises:
        DataError: naming the file: a zero-length dimension; more than :data:`MAX_VOXELS` voxels;
            a claimed size the file cannot hold (uncompressed: smaller than the data; gzip:
            smaller than data / :data:`MAX_GZIP_RATIO`); a complex, RGB or other non-scalar
            voxel type; a voxel spacing (pixdim) that is zero, negative or not finite.
    """
    shape = tuple(int(n) for n in img.shape)
    if min(shape) < 1:
        raise DataError(f"{path}: the header claims a zero-length dimension {shape}")
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > MAX_VOXELS:
        raise DataError(f"{path}: the header claims {shape} = {voxels} voxels, more than the "
                        f"{MAX_VOXELS} a CT volume may have here")
    dtype = img.header.get_data_dtype()
    if dtype.kind == "c" or dtype.fields is not None or dtype.kind not in "biuf":
        what = "complex" if dtype.kind == "c" else ("RGB/structured" if dtype.fields else str(dtype))
        raise DataError(f"{path}: {what} voxels ({dtype}); a CT volume or label map has one real number "
                        "per voxel")
    nbytes = voxels * dtype.itemsize
    size = path.stat().st_size
    gz = path.name.endswith(".gz")
    if (gz and size * MAX_GZIP_RATIO < nbytes) or (not gz and size < nbytes):
        raise DataError(f"{path}: the header claims {shape} {dtype} ({nbytes} bytes), more than this "
                        f"{size}-byte file can hold (truncated file or a hostile header)")
    _spacing(img, path)
    raw = _raw_pixdim(path)  # nibabel silently turns a pixdim of 0 into 1 on load: read it as stored
    if raw is not None and not all(np.isfinite(z) and z > 0 for z in raw):
        raise DataError(f"{path}: invalid voxel spacing {tuple(float(z) for z in raw)} in the header "
                        "(pixdim[1:4] must be positive)")


def _raw_pixdim(path: Path) -> tuple[float, float, float] | None:
    """``pixdim[1:4]`` exactly as stored (None when the header cannot be read raw)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            block = fh.read(348)
        if 348 not in (int.from_bytes(block[:4], "little"), int.from_bytes(block[:4], "big")):
            return None  # NIfTI-2 (540-byte header): nibabel's zooms were checked above
        hdr = nib.Nifti1Header(block, check=False)
    except (OSError, EOFError, ValueError, zlib.error, nib.spatialimages.HeaderDataError):
        return None
    return tuple(float(z) for z in hdr["pixdim"][1:4])


def check_same_grid(path: Path, affine: np.ndarray, ref_path: Path, ref_affine: np.ndarray,
                    atol: float = AFFINE_ATOL) -> None:
    """Refuse two volumes whose voxel-to-world affines differ by more than ``atol`` mm (per element).

    Raises:
        DataError: naming both files and the largest difference.
    """
    diff = float(np.max(np.abs(np.asarray(affine, np.float64) - np.asarray(ref_affine, np.float64))))
    if not np.isfinite(diff) or diff > atol:
        raise DataError(f"{path}: its affine differs from that of {ref_path} by up to {diff:.4g} mm "
                        f"(tolerance {atol:g} mm): the voxels are not on the same grid")


def _read_array(img: nib.Nifti1Image, path: Path, dtype=None) -> np.ndarray:
    """Read the voxel data, turning gzip/truncation errors into DataError."""
    try:
        if dtype is None:
            return np.asanyarray(img.dataobj)
        return np.asarray(img.dataobj, dtype=dtype)
    except MemoryError:
        raise
    except Exception as exc:  # EOFError, zlib.error, ValueError, HeaderDataError ...
        raise DataError(f"{path}: truncated or corrupt data ({type(exc).__name__}: {exc})") from exc


def _spacing(img: nib.Nifti1Image, path: Path) -> tuple[float, float, float]:
    """``(z, y, x)`` spacing = voxel size along array axes 0, 1, 2 (pixdim[1:4])."""
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise DataError(f"{path}: invalid voxel spacing {zooms} in the header")
    return zooms


def check_label_values(label: np.ndarray, source: str | Path) -> np.ndarray:
    """Validate a label array and return it as uint8.

    Fast on 100 M voxels: one ``max``/``min`` pass on integer data (no ``np.unique``).

    Args:
        label: integer array, or a float array holding whole numbers.
        source: the file (or argument name) quoted in error messages.

    Raises:
        DataError: on non-integer values, non-finite values, or values outside {0, 1, 2}.
    """
    label = np.asarray(label)
    if label.dtype.kind == "b":
        return label.astype(np.uint8)
    if label.dtype.kind == "f":
        if not np.isfinite(label).all():
            raise DataError(f"{source}: label holds non-finite values (NaN/inf)")
        if not np.array_equal(label, np.round(label)):
            raise DataError(f"{source}: non-integer label values (dtype {label.dtype})")
    elif label.dtype.kind not in "iu":
        raise DataError(f"{source}: label dtype {label.dtype} is not an integer type")
    if label.size:
        lo, hi = label.min(), label.max()
        if lo < 0 or hi > TUMOR:
            raise DataError(
                f"{source}: label values outside {{0, 1, 2}} (min {lo}, max {hi})"
            )
    return label if label.dtype == np.uint8 else label.astype(np.uint8)


def check_image_values(image: np.ndarray, source: str | Path) -> np.ndarray:
    """Validate a CT array (finite) and return it as float32.

    Raises:
        DataError: if any voxel is NaN or infinite.
    """
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        bad = int(image.size - np.count_nonzero(np.isfinite(image)))
        raise DataError(f"{source}: {bad} non-finite voxels (NaN/inf) in the image")
    return image


def read_header(path: str | Path) -> tuple[tuple[int, int, int], tuple[float, float, float], np.ndarray]:
    """Shape, spacing and affine of a 3-D NIfTI file without reading its voxels (fast).

    Returns:
        ``((Z, Y, X), (z, y, x) mm, 4 x 4 affine)``.

    Raises:
        DataError: naming the file, if missing, not NIfTI or not 3-D.
    """
    path = Path(path)
    img = _open_nifti(path)
    return tuple(int(s) for s in img.shape), _spacing(img, path), np.asarray(img.affine, np.float64)


def check_prediction_grid(pred_path: str | Path, seg_path: str | Path) -> None:
    """Refuse a prediction whose shape or affine (beyond :data:`AFFINE_ATOL`) is not its ground truth's.

    Reads the two headers only. Scoring voxels of two different grids would give a Dice that looks
    like a result but is not one.

    Raises:
        DataError: naming the prediction file (and the reference).
    """
    (shape, _, affine), (ref_shape, _, ref_affine) = read_header(pred_path), read_header(seg_path)
    if shape != ref_shape:
        raise DataError(f"{pred_path}: shape {shape} differs from the ground truth {seg_path} {ref_shape}")
    check_same_grid(Path(pred_path), affine, Path(seg_path), ref_affine)


def load_label(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Read a segmentation file.

    Args:
        path: a ``segmentation.nii.gz`` (or any 3-D NIfTI label volume, e.g. a prediction).

    Returns:
        ``(label, spacing, affine)``: uint8 ``(Z, Y, X)`` in {0, 1, 2}; ``(z, y, x)`` mm; 4 × 4.

    Raises:
        DataError: naming the file, if missing, not NIfTI, truncated, not 3-D or with bad values.
    """
    path = Path(path)
    img = _open_nifti(path)
    label = check_label_values(_read_array(img, path), path)
    return label, _spacing(img, path), np.asarray(img.affine, dtype=np.float64)


def load_case(path: str | Path, *, load_image: bool = True, load_label: bool = True) -> Case:
    """Read one KiTS19 case folder.

    Args:
        path: the case folder ``.../case_XXXXX``.
        load_image: read ``imaging.nii.gz`` (default True). It must exist; pass False for a
            labels-only folder (``Case.image`` is then None and spacing/affine come from the
            segmentation).
        load_label: read ``segmentation.nii.gz`` if present (default True). A missing
            segmentation gives ``Case.label = None`` (test cases) unless ``load_image`` is False.

    Returns:
        A :class:`Case`.

    Raises:
        DataError: naming the file and the problem: missing folder or imaging, corrupt or
            non-NIfTI file, array not 3-D, image/label shape mismatch, bad label values,
            non-finite voxels, or a folder whose name is not ``case_XXXXX``.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: case folder does not exist")
    cid = path.name
    case_number(cid)
    img_path, seg_path = path / IMAGING_FILE, path / SEGMENTATION_FILE
    image = label = None
    header = affine = spacing = None
    shape = None
    if load_image:
        if not img_path.is_file():
            extra = " (labels-only folder? use load_image=False)" if seg_path.is_file() else ""
            raise DataError(f"{img_path}: imaging file is missing{extra}")
        img = _open_nifti(img_path)
        shape = tuple(img.shape)
        image = check_image_values(_read_array(img, img_path, np.float32), img_path)
        header, affine = img.header.copy(), np.asarray(img.affine, dtype=np.float64)
        spacing = _spacing(img, img_path)
    if load_label or not load_image:
        if seg_path.is_file():
            seg = _open_nifti(seg_path)
            if shape is not None and tuple(seg.shape) != shape:
                raise DataError(
                    f"{seg_path}: label shape {tuple(seg.shape)} differs from image shape {shape}"
                )
            if affine is not None:
                check_same_grid(seg_path, seg.affine, img_path, affine)
            label = check_label_values(_read_array(seg, seg_path), seg_path)
            if header is None:
                header, affine = seg.header.copy(), np.asarray(seg.affine, dtype=np.float64)
                spacing = _spacing(seg, seg_path)
        elif not load_image:
            raise DataError(f"{seg_path}: segmentation file is missing (and load_image=False)")
    return Case(cid, image, label, spacing, affine, path, header)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def kits_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """The official KiTS19 voxel-to-world affine for ``(z, y, x)`` spacing in mm.

    ``[[0, 0, -x, 0], [0, -y, 0, 0], [-z, 0, 0, 0], [0, 0, 0, 1]]`` (orientation IPL): array axis 0
    (slices) runs along world -z, axis 1 (rows) along -y, axis 2 (columns) along -x.

    Raises:
        DataError: if ``spacing`` is not three positive finite numbers.
    """
    try:
        z, y, x = (float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise DataError(f"spacing {spacing!r}: expected three numbers (z, y, x) in mm") from exc
    if not all(np.isfinite(s) and s > 0 for s in (z, y, x)):
        raise DataError(f"spacing {spacing!r}: every value must be positive and finite")
    return np.array(
        [[0.0, 0.0, -x, 0.0], [0.0, -y, 0.0, 0.0], [-z, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )


def _nifti(array: np.ndarray, affine: np.ndarray, dtype, header=None) -> nib.Nifti1Image:
    """Image with ``affine`` set as both qform (code 1, scanner) and sform (code 2, aligned)."""
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(array, affine, header=hdr)
    img.set_data_dtype(dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    img.header.set_xyzt_units("mm", "sec")
    return img


def _write_nifti(img: nib.Nifti1Image, path: Path) -> None:
    """Write ``img`` gzip-compressed to ``path`` atomically (temp file, fsync, rename)."""
    with atomic_write(path, "wb") as fh:
        with gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=_COMPRESSLEVEL, mtime=0) as gz:
            img.to_file_map(img.make_file_map({"image": gz}))


def _check_3d(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise DataError(f"{name}: expected a 3-D (Z, Y, X) array, got shape {array.shape}")
    return array


def save_case(
    root: str | Path,
    case_id: str,
    image: np.ndarray,
    label: np.ndarray | None,
    spacing: tuple[float, float, float],
) -> Path:
    """Write a case in the KiTS19 layout and header convention.

    Writes ``root/case_id/imaging.nii.gz`` (float32 HU) and, unless ``label`` is None,
    ``segmentation.nii.gz`` (uint8), both with :func:`kits_affine` as qform and sform. All inputs
    are validated before anything is written; each file is written atomically.

    Args:
        root: the data folder (created if missing).
        case_id: ``"case_XXXXX"`` (an int is accepted too).
        image: ``(Z, Y, X)`` CT in HU, finite.
        label: ``(Z, Y, X)`` in {0, 1, 2}, or None for an unlabelled case.
        spacing: ``(z, y, x)`` in mm.

    Returns:
        The case folder.

    Raises:
        DataError: on a malformed case id, non-3-D arrays, shape mismatch, bad label values,
            non-finite voxels or bad spacing (nothing is written).
    """
    cid = normalize_case_id(case_id)
    image = check_image_values(_check_3d(image, f"{cid} image"), f"{cid} image")
    if label is not None:
        label = _check_3d(label, f"{cid} label")
        if label.shape != image.shape:
            raise DataError(f"{cid}: label shape {label.shape} differs from image shape {image.shape}")
        label = check_label_values(label, f"{cid} label")
    affine = kits_affine(spacing)
    folder = safe_join(root, cid)
    folder.mkdir(parents=True, exist_ok=True)
    _write_nifti(_nifti(image, affine, np.float32), folder / IMAGING_FILE)
    if label is not None:
        _write_nifti(_nifti(label, affine, np.uint8), folder / SEGMENTATION_FILE)
    return folder


def save_prediction(label: np.ndarray, reference: Case, path: str | Path) -> Path:
    """Write a predicted label volume that lines up with the reference imaging.

    The file is uint8 with the reference case's header and affine (qform and sform), named like a
    KiTS19 submission (``prediction_XXXXX.nii.gz``) when ``path`` is an existing folder.

    Args:
        label: ``(Z, Y, X)`` in {0, 1, 2}, the shape of the reference case.
        reference: the :class:`Case` the prediction belongs to.
        path: output file (``.nii.gz``) or an existing folder.

    Returns:
        The written file.

    Raises:
        DataError: on a shape mismatch, bad label values or a path not ending in ``.nii.gz``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / prediction_filename(reference.case_id)
    if not path.name.endswith(".nii.gz"):
        raise DataError(f"{path}: prediction file name must end in .nii.gz")
    label = _check_3d(label, f"{path} prediction")
    if label.shape != reference.shape:
        raise DataError(
            f"{path}: prediction shape {label.shape} differs from {reference.case_id} "
            f"shape {reference.shape}"
        )
    label = check_label_values(label, path)
    _write_nifti(_nifti(label, reference.affine, np.uint8, reference.header), path)
    return path
