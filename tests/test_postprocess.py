"""Tests of kitsmsan.postprocess.keep_largest_components on hand-made volumes."""

from __future__ import annotations

import numpy as np
import pytest

from kitsmsan.errors import ConfigError, DataError
from kitsmsan.postprocess import keep_largest_components


def two_kidneys_and_blob():
    """(6, 10, 12) volume: big kidney (27 vox, with an 8-voxel tumour), small kidney (12 vox,
    with a 2-voxel tumour) and a stray tumour blob of 2 voxels."""
    v = np.zeros((6, 10, 12), dtype=np.uint8)
    v[1:4, 1:4, 1:4] = 1  # kidney A: 3x3x3 = 27 voxels
    v[1:3, 1:3, 1:3] = 2  # tumour inside A: 8 voxels
    v[1:3, 5:8, 8:10] = 1  # kidney B: 2x3x2 = 12 voxels
    v[1, 5, 8:10] = 2  # tumour inside B: 2 voxels
    v[5, 8, 0:2] = 2  # stray tumour blob: 2 voxels, touching nothing
    return v


def test_k1_keeps_largest_kidney_only():
    v = two_kidneys_and_blob()
    out = keep_largest_components(v, 1)
    expected = np.zeros_like(v)
    expected[1:4, 1:4, 1:4] = v[1:4, 1:4, 1:4]
    np.testing.assert_array_equal(out, expected)
    assert (out == 2).sum() == 8 and (out > 0).sum() == 27


def test_k2_keeps_both_kidneys_drops_blob():
    v = two_kidneys_and_blob()
    out = keep_largest_components(v, num_components=2)
    expected = v.copy()
    expected[5, 8, 0:2] = 0
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8
    assert (v[5, 8, 0:2] == 2).all()  # input not modified


def test_k_larger_than_components_is_identity():
    v = two_kidneys_and_blob()
    np.testing.assert_array_equal(keep_largest_components(v, 5), v)
    empty = np.zeros((3, 3, 3), np.uint8)
    np.testing.assert_array_equal(keep_largest_components(empty, 1), empty)


def test_connectivity_corner_touching():
    v = np.zeros((3, 3, 3), np.uint8)
    v[0, 0, 0] = 1
    v[1, 1, 1] = 2  # touches (0,0,0) only by a corner
    v[2, 2, 2] = 1
    v[2, 2, 1] = 1  # component of 2 (faces) at the far corner... also corner-linked to centre
    # 26-connectivity: all one component of 4 voxels -> kept whole
    np.testing.assert_array_equal(keep_largest_components(v, 1, connectivity=3), v)
    # 6-connectivity: components {000}, {111}, {222, 221}; the 2-voxel one is largest
    out = keep_largest_components(v, 1, connectivity=1)
    assert out.sum() == 2 and out[2, 2, 2] == 1 and out[2, 2, 1] == 1


def test_equal_sizes_tie_goes_to_first_in_scan_order():
    v = np.zeros((1, 1, 5), np.uint8)
    v[0, 0, 0] = 1
    v[0, 0, 4] = 2
    out = keep_largest_components(v, 1)
    np.testing.assert_array_equal(out[0, 0], [1, 0, 0, 0, 0])


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_k(k):
    with pytest.raises(ConfigError, match="num_components"):
        keep_largest_components(np.zeros((2, 2, 2), np.uint8), k)


def test_bad_label():
    with pytest.raises(DataError, match="values outside"):
        keep_largest_components(np.full((2, 2, 2), 3, np.uint8))
    with pytest.raises(DataError, match="dtype float"):
        keep_largest_components(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ConfigError, match="connectivity"):
        keep_largest_components(np.zeros((2, 2, 2), np.uint8), connectivity=4)


def test_components_are_taken_on_the_kidney_region_not_on_label_1():
    """A kidney whose two halves touch only through its tumour is one component of label > 0."""
    v = np.zeros((1, 1, 9), dtype=np.uint8)
    v[0, 0, :5] = [1, 1, 2, 1, 1]  # 5 voxels: kidney - tumour - kidney
    v[0, 0, 7:9] = 1  # a separate 2-voxel kidney blob, larger than either half alone
    out = keep_largest_components(v, 1)
    np.testing.assert_array_equal(out[0, 0], [1, 1, 2, 1, 1, 0, 0, 0, 0])
