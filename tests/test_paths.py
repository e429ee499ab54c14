"""Tests of kitsmsan.utils.io.safe_join: paths from metadata or the CLI never leave the root (#7)."""

from __future__ import annotations

import os

import pytest

from kitsmsan.errors import DataError
from kitsmsan.utils.io import safe_join


@pytest.mark.parametrize(
    "parts, rel",
    [
        (("case_00001", "imaging.nii.gz"), "case_00001/imaging.nii.gz"),
        (("a/b", "c.txt"), "a/b/c.txt"),
        (("a/./b/../c",), "a/c"),  # '..' that stays inside is fine
        ((), ""),
        ((".",), ""),
    ],
)
def test_inside_paths_are_joined(tmp_path, parts, rel):
    out = safe_join(tmp_path, *parts)
    assert out == (tmp_path.resolve() / rel if rel else tmp_path.resolve())


@pytest.mark.parametrize(
    "parts",
    [
        ("..",),
        ("../x",),
        ("case_00001", "..", "..", "x"),
        ("a/../../x",),
        ("/etc/passwd",),
        ("case_00001", "/tmp/x"),
        (os.path.expanduser("~"),),
    ],
)
def test_escapes_are_refused(tmp_path, parts):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError, match="escapes the output folder") as exc:
        safe_join(root, *parts)
    assert str(root.resolve()) in str(exc.value)


def test_prefix_sibling_is_not_inside(tmp_path):
    """``/x/root-evil`` starts with the string ``/x/root`` but is not inside it."""
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError):
        safe_join(root, "../root-evil/file")


def test_symlink_pointing_out_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "case_00001").symlink_to(outside, target_is_directory=True)
    (root / "link.nii.gz").symlink_to(outside / "file.nii.gz")  # dangling, pointing out
    with pytest.raises(DataError):
        safe_join(root, "case_00001", "imaging.nii.gz")
    with pytest.raises(DataError):
        safe_join(root, "link.nii.gz")


def test_symlink_inside_root_is_allowed(tmp_path):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    assert safe_join(root, "alias", "f") == (root / "real" / "f").resolve()


def test_root_that_is_a_symlink_works(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "root").symlink_to(real, target_is_directory=True)
    assert safe_join(tmp_path / "root", "case_00000") == real.resolve() / "case_00000"


def test_new_output_dir_removes_only_what_it_created_and_only_when_empty(tmp_path):
    from kitsmsan.utils.io import new_output_dir

    target = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with new_output_dir(target) as out:
            assert out.is_dir()
            raise RuntimeError("boom")
    assert not (tmp_path / "a").exists()  # both new folders went, tmp_path stayed
    assert tmp_path.is_dir()

    with pytest.raises(RuntimeError):
        with new_output_dir(target) as out:
            (out / "done.txt").write_text("kept")
            raise RuntimeError("boom")
    assert (target / "done.txt").read_text() == "kept"  # finished work is never deleted
