"""scripts/colab_sizes.py: the cache size it computes is what ``prepare_cache`` writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from kitsmsan.data.kits19 import save_case
from kitsmsan.data.preprocess import IMAGE_FILE, LABEL_FILE, prepare_cache

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "colab_sizes.py"


@pytest.fixture(scope="module")
def colab_sizes():
    spec = importlib.util.spec_from_file_location("colab_sizes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def two_cases(tmp_path):
    root = tmp_path / "data"
    label = np.zeros((10, 32, 32), np.uint8)
    label[3:6, 8:16, 8:16] = 1  # kidney on slices 3-5
    label[4, 10:12, 10:12] = 2
    save_case(root, "case_00000", np.zeros(label.shape, np.float32), label, (2.0, 1.0, 1.0))
    save_case(
        root,
        "case_00001",
        np.zeros((6, 16, 32), np.float32),
        np.zeros((6, 16, 32), np.uint8),
        (1.0, 1.0, 1.0),
    )
    return root


def test_cache_bytes_equal_what_prepare_writes(colab_sizes, two_cases, tmp_path):
    sizes = colab_sizes.cache_sizes(two_cases, range(0, 2))
    prepare_cache(two_cases, tmp_path / "cache", progress=False)
    written = sum(
        (tmp_path / "cache" / c / f).stat().st_size
        for c in ("case_00000", "case_00001")
        for f in (IMAGE_FILE, LABEL_FILE)
    )
    assert sizes["bytes"] == written == (10 * 32 * 32 + 6 * 16 * 32) * 3 + 4 * colab_sizes.NPY_HEADER
    assert sizes["slices"] == 16


def test_kidney_z_range_plus_margin(colab_sizes, two_cases):
    crop = colab_sizes.cache_sizes(two_cases, range(0, 2))["kidney_z_range_plus_margin"]
    plane = 32 * 32 * 3 + 2 * colab_sizes.NPY_HEADER
    assert crop["0mm"]["slices"] == 3  # slices 3-5; the case without kidney is left out
    assert crop["20mm"]["slices"] == 10  # 20 mm = 10 slices of 2 mm each side, clipped to 0-9
    assert crop["0mm"]["bytes"] == 3 * 32 * 32 * 3 + 2 * colab_sizes.NPY_HEADER
    assert crop["20mm"]["bytes"] == plane + 9 * 32 * 32 * 3


def test_label_sizes_scale_by_the_mean_case(colab_sizes, two_cases):
    lab = colab_sizes.label_sizes(two_cases)
    segs = [p.stat().st_size for p in two_cases.glob("case_*/segmentation.nii.gz")]
    assert lab["cases"] == 2 and lab["segmentation_bytes"] == sum(segs)
    assert lab["scaled_210_bytes"] == round(np.mean(segs) * 210 + lab["other_bytes"])


@pytest.fixture
def book_tools():
    spec = importlib.util.spec_from_file_location("book_tools", SCRIPT.parent / "book_tools.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_book_renders_the_committed_json(book_tools):
    out = book_tools.render_memory()
    assert set(out) == {
        "memory_memory.md",
        "memory_fit.md",
        "memory_time.md",
        "memory_inference.md",
        "colab_sizes.md",
    }
    sizes = json.loads((book_tools.DATA / "colab_sizes.json").read_text())
    assert f"{sizes['cache_0_189']['bytes'] / 1e9:.2f} GB" in out["colab_sizes.md"]
    memory = json.loads((book_tools.DATA / "memory.json").read_text())
    row = next(
        r
        for r in memory["results"]
        if r.get("kind") == "train"
        and r["variant"] == "msan_v2_ds"
        and r["precision"] == "fp32"
        and r["input"] == "2x1x4x512x512"
    )
    assert f"| msan_v2_ds | fp32 | {row['counted_gib']:.2f} |" in out["memory_memory.md"]
    assert "`colab` preset" in out["memory_time.md"]


def test_book_says_what_is_missing(book_tools, tmp_path, monkeypatch):
    monkeypatch.setattr(book_tools, "DATA", tmp_path)
    out = book_tools.render_memory()
    assert "kitsmsan bench memory --json book/data/memory.json" in out["memory_fit.md"]
    assert "scripts/colab_sizes.py" in out["colab_sizes.md"]
