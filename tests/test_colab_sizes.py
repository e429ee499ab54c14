"""scripts/colab_sizes.py: the cache size it computes is what ``prepare_cache`` writes."""

from __future__ import annotations

import importlib.util
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
    save_case(root, "case_00001", np.zeros((6, 16, 32), np.float32), np.zeros((6, 16, 32), np.uint8),
              (1.0, 1.0, 1.0))
    return root


def test_cache_bytes_equal_what_prepare_writes(colab_sizes, two_cases, tmp_path):
    sizes = colab_sizes.cache_sizes(two_cases, range(0, 2))
    prepare_cache(two_cases, tmp_path / "cache", progress=False)
    written = sum((tmp_path / "cache" / c / f).stat().st_size
                  for c in ("case_00000", "case_00001") for f in (IMAGE_FILE, LABEL_FILE))
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
