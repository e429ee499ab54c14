"""Tests of kitsmsan.data.preprocess: HU window, normalisation, the cache (incremental, atomic)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TINY_CASES, make_tiny_case
from kitsmsan.cli import main as cli_main
from kitsmsan.data import preprocess
from kitsmsan.data.kits19 import save_case
from kitsmsan.data.preprocess import HU_WINDOW, clip_hu, load_cache_index, normalize, prepare_cache
from kitsmsan.errors import DataError


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_window_is_the_papers():
    assert HU_WINDOW == (-200.0, 500.0)


def test_clip_hu():
    x = np.array([-1000.0, -200.0, 0.0, 500.0, 1200.0])
    np.testing.assert_array_equal(clip_hu(x), [-200, -200, 0, 500, 500])
    np.testing.assert_array_equal(clip_hu(x, -100, 100), [-100, -100, 0, 100, 100])
    with pytest.raises(DataError, match="low must be below high"):
        clip_hu(x, 5, 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int32])
def test_normalize_hand_values(dtype):
    x = np.array([-1000, -200, 150, 500, 3000], dtype=dtype)
    out = normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1], atol=1e-7)


def test_normalize_int16_fast_path_matches_float_path():
    x = np.random.default_rng(0).integers(-3000, 3000, (3, 17, 19)).astype(np.int16)
    fast, slow = normalize(x), normalize(x.astype(np.float32))
    np.testing.assert_allclose(fast, slow, atol=1e-6)
    assert 0.0 <= fast.min() and fast.max() <= 1.0
    # non-integer window: the float path for int16 too
    np.testing.assert_allclose(
        normalize(np.array([-201, 499, 500], np.int16), (-200.5, 499.5)), [0, 699.5 / 700, 1], atol=1e-6
    )
    with pytest.raises(DataError, match="window"):
        normalize(x, (10, 0))


def test_prepare_cache_contents(tiny_case_root, tmp_path):
    cache = tmp_path / "cache"
    index = prepare_cache(tiny_case_root, cache, progress=False)
    assert index == load_cache_index(cache)
    assert sorted(index["cases"]) == sorted(TINY_CASES)
    assert index["window"] == [-200.0, 500.0] and index["image_dtype"] == "int16"
    for cid, spec in TINY_CASES.items():
        meta = index["cases"][cid]
        assert meta["shape"] == list(spec["shape"])
        np.testing.assert_allclose(meta["spacing"], spec["spacing"], rtol=1e-6)
        assert meta["kidney_slices"] == spec["kidney"]
        assert meta["tumor_slices"] == spec["tumor"]
        image, label, _ = make_tiny_case(cid)
        cached = np.load(cache / cid / "image.npy", mmap_mode="r")
        assert cached.dtype == np.int16 and isinstance(cached, np.memmap)
        np.testing.assert_array_equal(cached, np.clip(image, -200, 500))  # lossless for integer HU
        cached_label = np.load(cache / cid / "label.npy", mmap_mode="r")
        assert cached_label.dtype == np.uint8
        np.testing.assert_array_equal(cached_label, label)
    assert not list(cache.glob(".tmp-*"))


def test_prepare_is_incremental(tiny_case_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    prepare_cache(tiny_case_root, cache, progress=False)
    calls = []
    real = preprocess.prepare_case
    monkeypatch.setattr(preprocess, "prepare_case", lambda d, *a: calls.append(d.name) or real(d, *a))
    before = tree(cache / "case_00000")
    prepare_cache(tiny_case_root, cache, progress=False)
    assert calls == []  # everything up to date
    # a changed source (new mtime) re-prepares that case only
    src = tiny_case_root / "case_00001" / "segmentation.nii.gz"
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    prepare_cache(tiny_case_root, cache, progress=False)
    assert calls == ["case_00001"]
    assert tree(cache / "case_00000") == before
    # a subset prepares only those; the index keeps listing all complete cases
    index = prepare_cache(tiny_case_root, tmp_path / "sub", case_ids=[2, "case_00000"], progress=False)
    assert sorted(index["cases"]) == ["case_00000", "case_00002"]


def test_prepare_replaces_a_changed_case(tiny_case_root, tmp_path):
    cache = tmp_path / "cache"
    prepare_cache(tiny_case_root, cache, progress=False)
    image, label, spacing = make_tiny_case("case_00000")
    label[7, 0, 0] = 2
    save_case(tiny_case_root, "case_00000", image, label, spacing)
    index = prepare_cache(tiny_case_root, cache, progress=False)
    assert index["cases"]["case_00000"]["tumor_slices"] == [5, 7]
    assert np.load(cache / "case_00000" / "label.npy")[7, 0, 0] == 2


def test_interrupted_case_is_not_complete(tiny_case_root, tmp_path, monkeypatch):
    """An exception mid-case (e.g. Ctrl-C) leaves no trace of that case; a re-run completes it."""
    cache = tmp_path / "cache"
    real = preprocess._save_npy

    def boom(path, array):
        if "case_00001" in str(path) and path.name == "label.npy":
            raise KeyboardInterrupt
        real(path, array)

    monkeypatch.setattr(preprocess, "_save_npy", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(tiny_case_root, cache, progress=False)
    assert (cache / "case_00000" / "meta.json").is_file()
    assert not (cache / "case_00001").exists()
    assert not list(cache.glob(".tmp-*"))
    assert sorted(load_cache_index(cache)["cases"]) == ["case_00000"]
    monkeypatch.undo()
    assert sorted(prepare_cache(tiny_case_root, cache, progress=False)["cases"]) == sorted(TINY_CASES)


@pytest.mark.slow
def test_killed_prepare_resumes_to_a_clean_result(tiny_case_root, tmp_path):
    """kill -9 equivalent (os._exit, no cleanup) after case_00001's image was written: the half case
    is not visible as complete; a re-run equals a clean run."""
    cache = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from kitsmsan.data import preprocess
        real = preprocess._save_npy
        def die(path, array):
            real(path, array)
            if "case_00001" in str(path) and path.name == "image.npy":
                os._exit(9)
        preprocess._save_npy = die
        preprocess.prepare_cache({str(tiny_case_root)!r}, {str(cache)!r}, progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert proc.returncode == 9
    assert (cache / "case_00000" / "meta.json").is_file()
    assert not (cache / "case_00001").exists()  # only a hidden .tmp- folder
    assert list(cache.glob(".tmp-case_00001-*"))
    resumed = prepare_cache(tiny_case_root, cache, progress=False)
    clean = prepare_cache(tiny_case_root, tmp_path / "clean", progress=False)
    assert not list(cache.glob(".tmp-*"))
    assert resumed["cases"] == clean["cases"]
    for cid in TINY_CASES:
        for name in ("image.npy", "label.npy"):
            assert (cache / cid / name).read_bytes() == (tmp_path / "clean" / cid / name).read_bytes()


def test_disk_full_while_preparing(tiny_case_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    prepare_cache(tiny_case_root, cache, progress=False)
    before = {k: v for k, v in tree(cache).items() if k != "index.json"}
    index_before = (cache / "index.json").read_text()
    src = tiny_case_root / "case_00000" / "imaging.nii.gz"
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # case_00000 must be redone

    def full(path, array):
        with open(path, "wb") as fh:
            fh.write(b"\x93NUMPY half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(preprocess, "_save_npy", full)
    with pytest.raises(DataError, match="no space left on device") as exc:
        prepare_cache(tiny_case_root, cache, progress=False)
    assert "case_00000" in str(exc.value)
    # the old case_00000 is untouched and still indexed (the index may be rewritten, same content)
    assert {k: v for k, v in tree(cache).items() if k != "index.json"} == before
    assert (cache / "index.json").read_text() == index_before
    assert not list(cache.glob(".tmp-*"))


def test_prepare_bad_inputs_write_nothing(tiny_case_root, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="case_00007"):
        prepare_cache(tiny_case_root, cache, case_ids=[0, 7], progress=False)
    assert not cache.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no KiTS19 cases"):
        prepare_cache(empty, cache, progress=False)
    assert not cache.exists()
    with pytest.raises(DataError, match="case id"):
        prepare_cache(tiny_case_root, cache, case_ids=["patient_1"], progress=False)
    (tiny_case_root / "case_00002" / "segmentation.nii.gz").unlink()
    with pytest.raises(DataError, match="segmentation.nii.gz: segmentation is missing"):
        prepare_cache(tiny_case_root, cache, case_ids=[2], progress=False)
    assert not (cache / "case_00002").exists()


def test_load_cache_index_errors(tmp_path, tiny_cache):
    with pytest.raises(DataError, match="index is missing"):
        load_cache_index(tmp_path / "nowhere")
    (tiny_cache / "index.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        load_cache_index(tiny_cache)


def test_cli_prepare(tiny_case_root, tmp_path, capsys):
    cache = tmp_path / "cache"
    rc = cli_main(
        ["prepare", "--data", str(tiny_case_root), "--cache", str(cache), "--cases", "0-1", "--no-progress"]
    )
    assert rc == 0
    assert "2 cases" in capsys.readouterr().out
    assert sorted(load_cache_index(cache)["cases"]) == ["case_00000", "case_00001"]
    rc = cli_main(["prepare", "--data", str(tmp_path / "nope"), "--cache", str(cache)])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
