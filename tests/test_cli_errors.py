"""Every bad input of issue 7 that has a command-line path, driven through the real CLI.

One table, one runner. Each row builds a small world under ``tmp_path`` (a KiTS19 data folder of two
tiny cases, a trained-looking run folder with a tiny ``msan_v1`` checkpoint, a prediction folder),
damages it in one way, snapshots the whole tree (every file and folder, with size and mtime), calls
``kitsmsan.cli.main(argv)`` in-process and checks the contract of ``kitsmsan/cli.py``:

* the exit code is 2 (the documented code for a :class:`kitsmsan.errors.KitsmsanError`);
* stderr is exactly one line, ``kitsmsan <command>: error: ...``, with no traceback, and it names
  the file or value and the problem (the row's expected fragments);
* nothing under ``tmp_path`` was written, changed or deleted.

A few rows are also run as a real subprocess (``python -m kitsmsan``) to check the same contract at
the process level (exit status, stderr), which is what a user sees. The python-API rows at the end
cover the one bad input without a CLI path: a model input of the wrong shape.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import REPO, make_tiny_case

#: the two cases of the world's data folder (shapes from ``conftest.TINY_CASES``)
CASES = ("case_00000", "case_00001")


# -- the world --------------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: files as (size, mtime_ns), folders as ``"dir"``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() and not p.is_symlink() else (p.lstat().st_size, p.lstat().st_mtime_ns)
    return out


def write_nifti(path: Path, array: np.ndarray) -> None:
    """Overwrite ``path`` with a plain NIfTI of ``array`` (identity affine; a segmentation gets its
    imaging's affine, so that the damage tried is the array's, not the grid's)."""
    imaging = path.parent / "imaging.nii.gz"
    affine = np.eye(4)
    if path.name == "segmentation.nii.gz" and imaging.is_file():
        affine = nib.load(str(imaging)).affine
    nib.save(nib.Nifti1Image(array, affine), str(path))


def tiny_checkpoint(path: Path, variant: str = "msan_v1", *, config_of: str | None = None) -> Path:
    """Write a kitsmsan checkpoint of a 4-channel ``variant`` to ``path``.

    Args:
        path: destination ``.pt`` file.
        variant: the network whose weights are stored. Default ``"msan_v1"``.
        config_of: store the model config of this other variant instead (a checkpoint whose
            weights are of another architecture than it claims). Default None = its own.
    """
    from kitsmsan import checkpoint as ckpt
    from kitsmsan.models import build_model

    torch.manual_seed(0)
    state = ckpt.make_checkpoint(build_model(variant, base_channels=4), iteration=1)
    if config_of is not None:
        state["model_config"] = build_model(config_of, base_channels=4).config.to_dict()
    return ckpt.save_checkpoint(state, path)


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """``tmp_path`` with ``data/`` (2 tiny labelled cases), ``run/checkpoints/best.pt`` (tiny
    msan_v1), ``preds/prediction_00000.nii.gz`` only, and an empty folder ``empty/``."""
    from kitsmsan.data.kits19 import save_case

    for cid in CASES:
        image, label, spacing = make_tiny_case(cid)
        save_case(tmp_path / "data", cid, image, label, spacing)
    tiny_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    preds = tmp_path / "preds"
    preds.mkdir()
    _, label, _ = make_tiny_case("case_00000")
    ref = nib.load(str(tmp_path / "data" / "case_00000" / "imaging.nii.gz"))
    nib.save(nib.Nifti1Image(label, ref.affine), str(preds / "prediction_00000.nii.gz"))  # its grid
    (tmp_path / "empty").mkdir()
    return tmp_path


# -- damage -----------------------------------------------------------------------------------------


def damage_case(kind: str) -> Callable[[Path], str]:
    """A setup that damages ``data/case_00000`` in one way; it returns the damaged file's path."""

    def setup(w: Path) -> str:
        folder = w / "data" / "case_00000"
        img, seg = folder / "imaging.nii.gz", folder / "segmentation.nii.gz"
        z, y, x = 10, 16, 16
        if kind == "missing imaging":
            img.unlink()
            return str(img)
        if kind == "truncated":
            data = img.read_bytes()
            img.write_bytes(data[: len(data) // 2])
            return str(img)
        if kind == "not nifti":
            img.write_bytes(gzip.compress(b"<html>not an image</html>\n" * 30))
            return str(img)
        if kind == "2-D":
            write_nifti(img, np.zeros((y, x), np.float32))
            return str(img)
        if kind == "4-D":
            write_nifti(seg, np.zeros((z, y, x, 2), np.uint8))
            return str(seg)
        if kind == "shape mismatch":
            write_nifti(seg, np.zeros((z, y, x + 1), np.uint8))
            return str(seg)
        if kind == "label 3":
            bad = np.zeros((z, y, x), np.uint8)
            bad[2, 3, 4] = 3
            write_nifti(seg, bad)
            return str(seg)
        if kind in ("NaN", "inf"):
            bad = np.zeros((z, y, x), np.float32)
            bad[3, 3, 3] = np.nan if kind == "NaN" else -np.inf
            write_nifti(img, bad)
            return str(img)
        raise AssertionError(kind)

    return setup


def damage_checkpoint(kind: str) -> Callable[[Path], str]:
    """A setup that replaces ``run/checkpoints/best.pt``; returns its path."""

    def setup(w: Path) -> str:
        path = w / "run" / "checkpoints" / "best.pt"
        if kind == "other variant":
            tiny_checkpoint(path, "unet3d", config_of="msan_v1")
        elif kind == "truncated":
            path.write_bytes(path.read_bytes()[:1000])
        elif kind == "garbage":
            path.write_bytes(bytes(range(256)) * 16)
        elif kind == "empty":
            path.write_bytes(b"")
        else:
            raise AssertionError(kind)
        return str(path)

    return setup


def nothing(w: Path) -> str:
    return ""


# -- the table --------------------------------------------------------------------------------------


def prepare(w: Path, *extra: str, data: str = "data") -> list[str]:
    return ["prepare", "--data", str(w / data), "--cache", str(w / "cache"), "--no-progress", *extra]


def predict(w: Path, *extra: str, data: str = "data") -> list[str]:
    return [
        "predict",
        "--run",
        str(w / "run"),
        "--data",
        str(w / data),
        "--out",
        str(w / "out"),
        "--device",
        "cpu",
        *extra,
    ]


def stats(w: Path, *extra: str, data: str = "data") -> list[str]:
    return ["stats", "--data", str(w / data), "--csv", str(w / "stats.csv"), "--no-progress", *extra]


def evaluate(w: Path, *extra: str) -> list[str]:
    return [
        "evaluate",
        "--pred",
        str(w / "preds"),
        "--data",
        str(w / "data"),
        "--out",
        str(w / "eval"),
        *extra,
    ]


def train(w: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(w / "data"), "--out", str(w / "runs"), "--no-progress", *extra]


#: (row id, setup(world) -> damaged path, argv(world), fragments the one-line error must contain;
#: "{path}" is replaced by the setup's return value)
ROWS: list[tuple[str, Callable, Callable, tuple[str, ...]]] = [
    # damaged case folders, through `prepare` (the first command to read a case) ...
    (
        "prepare/missing imaging",
        damage_case("missing imaging"),
        lambda w: prepare(w, "--cases", "0-1"),
        ("case_00000", "no imaging"),
    ),
    ("prepare/truncated nii.gz", damage_case("truncated"), prepare, ("{path}", "truncated or corrupt")),
    ("prepare/not NIfTI", damage_case("not nifti"), prepare, ("{path}", "not a readable NIfTI")),
    ("prepare/2-D array", damage_case("2-D"), prepare, ("{path}", "3-D")),
    ("prepare/4-D array", damage_case("4-D"), prepare, ("{path}", "3-D")),
    (
        "prepare/shape mismatch",
        damage_case("shape mismatch"),
        prepare,
        ("{path}", "differs from image shape"),
    ),
    ("prepare/label value 3", damage_case("label 3"), prepare, ("{path}", "outside")),
    ("prepare/NaN voxel", damage_case("NaN"), prepare, ("{path}", "non-finite")),
    ("prepare/inf voxel", damage_case("inf"), prepare, ("{path}", "non-finite")),
    # ... through `predict` (reads the imaging only) ...
    (
        "predict/missing imaging",
        damage_case("missing imaging"),
        lambda w: predict(w, "--cases", "0-1"),
        ("case_00000", "no imaging"),
    ),
    ("predict/truncated nii.gz", damage_case("truncated"), predict, ("{path}", "truncated or corrupt")),
    ("predict/2-D array", damage_case("2-D"), predict, ("{path}", "3-D")),
    ("predict/NaN voxel", damage_case("NaN"), predict, ("{path}", "non-finite")),
    # ... and through `stats` (the --csv table must not appear)
    ("stats/label value 3", damage_case("label 3"), stats, ("{path}", "outside")),
    ("stats/not NIfTI", damage_case("not nifti"), stats, ("{path}", "not a readable NIfTI")),
    # empty data folder
    ("prepare/empty data folder", nothing, lambda w: prepare(w, data="empty"), ("empty", "no KiTS19 cases")),
    ("predict/empty data folder", nothing, lambda w: predict(w, data="empty"), ("empty", "no KiTS19 cases")),
    ("stats/empty data folder", nothing, lambda w: stats(w, data="empty"), ("empty", "no KiTS19 cases")),
    ("prepare/no such folder", nothing, lambda w: prepare(w, data="nowhere"), ("nowhere", "does not exist")),
    # unknown case id, bad case range
    ("prepare/unknown case id", nothing, lambda w: prepare(w, "--cases", "0,7"), ("case_00007",)),
    (
        "predict/unknown case id",
        nothing,
        lambda w: predict(w, "--cases", "1-2"),
        ("case_00002", "no imaging"),
    ),
    ("prepare/reversed range", nothing, lambda w: prepare(w, "--cases", "5-2"), ("5-2",)),
    ("prepare/not a range", nothing, lambda w: prepare(w, "--cases", "abc"), ("abc",)),
    ("predict/negative case", nothing, lambda w: predict(w, "--cases", "-1"), ("-1",)),
    # configuration (`train --set`): unknown key, wrong type, negative iteration count, bad syntax
    ("train/unknown key", nothing, lambda w: train(w, "--set", "num_iter=10"), ("num_iter",)),
    ("train/wrong type", nothing, lambda w: train(w, "--set", "num_iters=many"), ("num_iters", "many")),
    ("train/wrong type lr", nothing, lambda w: train(w, "--set", "lr=[1]"), ("lr",)),
    ("train/negative iterations", nothing, lambda w: train(w, "--set", "num_iters=-5"), ("num_iters", "-5")),
    ("train/zero batch", nothing, lambda w: train(w, "--set", "batch_size=0"), ("batch_size", "0")),
    ("train/unknown model key", nothing, lambda w: train(w, "--set", "model.widht=8"), ("widht",)),
    ("train/no equals sign", nothing, lambda w: train(w, "--set", "num_iters"), ("num_iters", "key=value")),
    # bad model name
    ("train/bad variant", nothing, lambda w: train(w, "--variant", "msan_v3"), ("msan_v3",)),
    (
        "models/bad variant",
        nothing,
        lambda w: ["models", "--variants", "resnet", "--json", str(w / "models.json")],
        ("resnet",),
    ),
    (
        "models/bad width",
        nothing,
        lambda w: ["models", "--base-channels", "0", "--json", str(w / "models.json")],
        ("base_channels", "0"),
    ),
    # checkpoints for `predict --run`
    (
        "predict/checkpoint of another variant",
        damage_checkpoint("other variant"),
        predict,
        ("{path}", "architecture mismatch", "msan_v1", "8 missing key(s): att3.project.weight"),
    ),
    (
        "predict/truncated checkpoint",
        damage_checkpoint("truncated"),
        predict,
        ("{path}", "corrupt or truncated"),
    ),
    ("predict/garbage checkpoint", damage_checkpoint("garbage"), predict, ("{path}", "corrupt")),
    ("predict/empty checkpoint", damage_checkpoint("empty"), predict, ("{path}",)),
    (
        "predict/no run folder",
        nothing,
        lambda w: ["predict", "--run", str(w / "norun"), "--data", str(w / "data"), "--out", str(w / "out")],
        ("norun", "no such run folder"),
    ),
    (
        "predict/run without checkpoints",
        nothing,
        lambda w: ["predict", "--run", str(w / "empty"), "--data", str(w / "data"), "--out", str(w / "out")],
        ("empty", "no checkpoints/best.pt"),
    ),
    # a prediction folder missing cases
    (
        "evaluate/missing prediction",
        nothing,
        lambda w: evaluate(w, "--cases", "0-1"),
        ("prediction_00001.nii.gz", "missing"),
    ),
    (
        "evaluate/empty prediction folder",
        nothing,
        lambda w: [
            "evaluate",
            "--pred",
            str(w / "empty"),
            "--data",
            str(w / "data"),
            "--out",
            str(w / "eval"),
        ],
        ("empty",),
    ),
    ("evaluate/negative postprocess", nothing, lambda w: evaluate(w, "--postprocess", "-1"), ("-1",)),
]


#: rows that fail the contract today, with the reason (strict: they must start failing the xfail
#: once fixed, so the marker is removed then)
KNOWN_BUGS: dict[str, str] = {}


def _params(rows):
    return [
        pytest.param(
            *r[1:],
            id=r[0],
            marks=[pytest.mark.xfail(reason=KNOWN_BUGS[r[0]], strict=True)] if r[0] in KNOWN_BUGS else [],
        )
        for r in rows
    ]


@pytest.mark.parametrize("setup, argv, fragments", _params(ROWS))
def test_bad_input_gives_one_line_error_and_changes_nothing(world, capsys, setup, argv, fragments):
    from kitsmsan.cli import main

    damaged = setup(world)
    args = argv(world)
    capsys.readouterr()
    before = tree(world)
    rc = main(args)
    out, err = capsys.readouterr()
    assert rc == 2, f"exit code {rc}; stderr: {err!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"stderr is not one line: {err!r}"
    assert lines[0].startswith(f"kitsmsan {args[0]}: error: "), lines[0]
    assert "Traceback" not in err + out
    for fragment in fragments:
        assert fragment.replace("{path}", damaged) in lines[0], (fragment, lines[0])
    assert tree(world) == before, "something was written, changed or deleted"


#: rows also run as a subprocess: the contract as a user sees it (exit status, stderr)
SUBPROCESS_ROWS = [
    "prepare/NaN voxel",
    "train/negative iterations",
    "predict/truncated checkpoint",
    "evaluate/missing prediction",
]


@pytest.mark.slow
@pytest.mark.parametrize("row", SUBPROCESS_ROWS)
def test_bad_input_in_a_subprocess(world, row):
    setup, argv, fragments = next(r[1:] for r in ROWS if r[0] == row)
    damaged = setup(world)
    args = argv(world)
    before = tree(world)
    proc = subprocess.run(
        [sys.executable, "-m", "kitsmsan", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kitsmsan {args[0]}: error: "), proc.stderr
    for fragment in fragments:
        assert fragment.replace("{path}", damaged) in lines[0]
    assert tree(world) == before


def test_every_issue_7_cli_bad_input_has_a_row():
    """The table covers each bad input of issue 7 that has a command-line path (a guard against
    rows being dropped)."""
    ids = {r[0] for r in ROWS}
    assert len(ids) == len(ROWS), "duplicate row ids"
    needed = [
        "missing imaging",
        "truncated nii.gz",
        "not NIfTI",
        "2-D array",
        "4-D array",
        "shape mismatch",
        "label value 3",
        "NaN voxel",
        "inf voxel",
        "empty data folder",
        "unknown case id",
        "reversed range",
        "unknown key",
        "wrong type",
        "negative iterations",
        "checkpoint of another variant",
        "truncated checkpoint",
        "missing prediction",
        "bad variant",
    ]
    for what in needed:
        assert any(i.endswith("/" + what) for i in ids), what


# -- the python API: a model input of the wrong shape ------------------------------------------------


@pytest.mark.parametrize(
    "shape, fragment",
    [
        ((1, 4, 16, 16), "(1, 4, 16, 16)"),  # no channel axis
        ((1, 2, 4, 16, 16), "(1, 2, 4, 16, 16)"),  # two channels
        ((1, 1, 4, 15, 16), "(1, 1, 4, 15, 16)"),  # H not divisible by the pooling
        ((1, 1, 4, 16, 16, 1), "(1, 1, 4, 16, 16, 1)"),
    ],
)
def test_model_input_of_the_wrong_shape(shape, fragment):
    from kitsmsan.models import build_model

    model = build_model("msan_v1", base_channels=4).eval()
    with pytest.raises(ValueError) as exc:
        with torch.no_grad():
            model(torch.zeros(shape))
    assert fragment in str(exc.value)


@pytest.mark.parametrize("shape", [(16, 16), (2, 4, 16, 16)])
def test_predict_case_rejects_a_volume_that_is_not_3d(shape):
    from kitsmsan.inference import predict_case
    from kitsmsan.models import build_model

    model = build_model("msan_v1", base_channels=4).eval()
    with pytest.raises(ValueError) as exc:
        predict_case(model, np.zeros(shape, np.float32))
    assert str(tuple(shape)) in str(exc.value) or "3-D" in str(exc.value)
