"""Training windows of consecutive slices, and the paper's case split (MSAN paper, §2.1, §3.1).

MSAN is fed a stack of 4 consecutive axial slices, 512 × 512 each (MSAN paper, §2.1/§3.1).
:class:`SliceWindowDataset` cuts such windows out of the memory-mapped cache written by
:func:`kitsmsan.data.preprocess.prepare_cache`. Kidneys fill only a small fraction of a CT's slices,
so windows are drawn around kidney (and tumour) slices more often than uniform sampling would
(foreground oversampling; the rates are ours, the paper states none).

``ds[i]`` is a pure function of ``(seed, i)``: the sample is drawn with
``np.random.default_rng((seed, i))``. The training loop addresses samples by a global index, so
resuming and DDP sharding reproduce exactly the same stream. Memory maps are opened lazily, on first
access in each process, so the dataset pickles cheaply to DataLoader workers.

The paper's split: the first 180 released cases train, cases 180-189 test (MSAN paper, §2.1):
:data:`PAPER_SPLIT`.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from kitsmsan.data import kits19
from kitsmsan.data.kits19 import MAX_CASE_NUMBER, parse_case_range  # noqa: F401 (re-exported)
from kitsmsan.data.preprocess import HU_WINDOW, IMAGE_FILE, LABEL_FILE, load_cache_index, normalize
from kitsmsan.errors import ConfigError, DataError
from kitsmsan.utils.io import safe_join

PAPER_SPLIT = {"train": "0-179", "test": "180-189"}  # MSAN paper, §2.1

#: accepted ``label_dtype`` of :class:`SliceWindowDataset` -> the numpy dtype of the returned label
LABEL_DTYPES = {"int64": np.int64, "int16": np.int16, "uint8": np.uint8}


def check_window_fits(dataset: "SliceWindowDataset", divisor: tuple[int, int, int]) -> None:
    """Refuse training windows a network cannot take, with a hint that fits the cached planes.

    Args:
        dataset: the training windows (``num_slices``, ``plane_size``, ``crop_size``, ``meta``).
        divisor: ``(d_D, d_H, d_W)`` the network needs the window to be a multiple of
            (``ModelConfig.divisor``, e.g. ``(4, 16, 16)``).

    Raises:
        ConfigError: naming ``num_slices`` or ``crop_size``; the suggested size is a multiple of
            the divisor no larger than the largest cached plane (never larger than the image).
    """
    dd, dh, dw = divisor
    if dataset.num_slices % dd:
        raise ConfigError(f"num_slices={dataset.num_slices}: the network needs a multiple of {dd}")
    h, w = dataset.plane_size
    if h % dh == 0 and w % dw == 0:
        return
    largest = tuple(max(m["shape"][i] for m in dataset.meta.values()) for i in (1, 2))
    fit = [max(d, min(n, p) - min(n, p) % d) for n, p, d in zip((h, w), largest, (dh, dw))]
    what = f"crop_size={dataset.crop_size!r}" if dataset.crop_size is not None else (
        f"crop_size=None (the cached plane {h} x {w})")
    raise ConfigError(f"{what}: the network needs H and W multiples of {dh} x {dw}; the cached planes are at "
                      f"most {largest[0]} x {largest[1]}, so set crop_size={fit[0]}"
                      + ("" if fit[0] == fit[1] else f" (or ({fit[0]}, {fit[1]}))"))


def split_cases(
    case_ids: Iterable[int | str],
    train: str = PAPER_SPLIT["train"],
    test: str = PAPER_SPLIT["test"],
) -> dict[str, list[str]]:
    """Split available cases into the train and test sets (paper default: 0-179 / 180-189).

    Args:
        case_ids: the cases that exist (ints or ``"case_XXXXX"``).
        train: case range of the training set, default ``"0-179"``.
        test: case range of the test set, default ``"180-189"``.

    Returns:
        ``{"train": [...], "test": [...]}``, sorted ``"case_XXXXX"`` ids present in ``case_ids``
        (cases in neither range are left out; either list may be empty).

    Raises:
        ConfigError: if a range is malformed or the two ranges overlap.
    """
    tr, te = set(parse_case_range(train)), set(parse_case_range(test))
    overlap = sorted(tr & te)
    if overlap:
        raise ConfigError(f"train {train!r} and test {test!r} overlap in case(s) {overlap[:5]}")
    present = sorted({kits19.case_number(kits19.normalize_case_id(c)) for c in case_ids})
    return {
        "train": [kits19.case_id(n) for n in present if n in tr],
        "test": [kits19.case_id(n) for n in present if n in te],
    }


class WindowSpec(NamedTuple):
    """Where sample ``i`` comes from (returned by :meth:`SliceWindowDataset.window_spec`)."""

    case_id: str
    kind: str  # "uniform", "kidney" or "tumor"
    slices: tuple[int, ...]  # the num_slices slice indices (edge-replicated for short cases)
    y0: int  # top-left of the in-plane crop (may be negative: padding)
    x0: int


class SliceWindowDataset(Dataset):
    """Random windows of ``num_slices`` consecutive axial slices from the cache (MSAN paper, §2.1).

    For sample ``i``, with ``rng = np.random.default_rng((seed, i))``:

    1. pick a case uniformly from ``case_ids``;
    2. with probability ``fg_fraction`` (if the case has kidney) draw a foreground window: a random
       window containing a tumour slice with probability ``tumor_fraction`` (if the case has
       tumour), else one containing a kidney slice; otherwise a uniformly placed window;
    3. cases with fewer slices than ``num_slices`` are padded by repeating their edge slices;
    4. in-plane, the output is ``crop_size`` (or, without it, the most common plane size of the
       chosen cases, 512 × 512 for KiTS19); a random crop of that size is taken, centred on a random
       foreground voxel of the window for foreground windows; planes smaller than the output are
       padded (image with the window's low end, label with background);
    5. the image is normalised with :func:`kitsmsan.data.preprocess.normalize`.

    Args:
        cache_dir: folder written by :func:`~kitsmsan.data.preprocess.prepare_cache`.
        case_ids: cases to draw from (ints, ``"case_XXXXX"`` or a range string like ``"0-179"``).
        num_slices: slices per window, default 4 (the paper's input depth).
        crop_size: in-plane output size, an int or ``(H, W)``; default None = full plane.
        fg_fraction: probability of a foreground (kidney/tumour) window, default 0.5.
        tumor_fraction: share of foreground windows centred on tumour, default 0.25.
        length: ``len(ds)``, default 10**6; indices ``0..length-1`` are valid.
        seed: sampling seed, default 0.
        window: HU window for :func:`~kitsmsan.data.preprocess.normalize`, default (-200, 500);
            must lie inside the window the cache was prepared with.
        downsample: in-plane reduction factor applied after the crop, default 1 (none); for cheap
            CPU smoke runs on 512-pixel data. The image is area-averaged over ``f x f`` blocks, the
            label takes each block's centre voxel (nearest neighbour). The crop (or plane) size must
            be divisible by it.
        label_dtype: dtype of the returned label, ``"int64"`` (default, what
            :class:`~kitsmsan.losses.DiceLoss` indexes with), ``"int16"`` or ``"uint8"``. ``"uint8"``
            is the fast path: it skips the widening copy (about a third of the CPU cost of
            a 4 × 512 × 512 window) and moves 8x fewer bytes host to device; the training loop then
            converts on the device (``label.to(device, non_blocking=True).long()``).

    Returns (``ds[i]``):
        ``(image, label)``: float32 tensor ``(1, num_slices, H, W)`` in [0, 1] and a ``label_dtype``
        (default int64) tensor ``(num_slices, H, W)`` in {0, 1, 2}, with ``(H, W)`` the output plane
        divided by ``downsample``.

    Raises:
        DataError: missing cache / unknown case ids.
        ConfigError: bad numeric arguments.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        case_ids: Sequence[int | str] | str,
        *,
        num_slices: int = 4,
        crop_size: int | tuple[int, int] | None = None,
        fg_fraction: float = 0.5,
        tumor_fraction: float = 0.25,
        length: int = 10**6,
        seed: int = 0,
        window: tuple[float, float] = HU_WINDOW,
        downsample: int = 1,
        label_dtype: str = "int64",
    ) -> None:
        self.cache_dir = Path(cache_dir)
        index = load_cache_index(self.cache_dir)
        numbers = parse_case_range(case_ids)
        self.case_ids = [kits19.case_id(n) for n in numbers]
        if not self.case_ids:
            raise ConfigError("case_ids: no cases given")
        unknown = [c for c in self.case_ids if c not in index["cases"]]
        if unknown:
            raise DataError(f"{self.cache_dir}: case id(s) not in the cache: {', '.join(unknown[:5])}")
        if not (isinstance(num_slices, int) and num_slices >= 1):
            raise ConfigError(f"num_slices={num_slices!r}: expected a positive int")
        for name, val in (("fg_fraction", fg_fraction), ("tumor_fraction", tumor_fraction)):
            if not 0.0 <= float(val) <= 1.0:
                raise ConfigError(f"{name}={val!r}: expected a probability in [0, 1]")
        if not (isinstance(length, int) and length >= 1):
            raise ConfigError(f"length={length!r}: expected a positive int")
        if not (isinstance(seed, (int, np.integer)) and seed >= 0):
            raise ConfigError(f"seed={seed!r}: expected a non-negative int")
        self.meta = {c: index["cases"][c] for c in self.case_ids}
        if crop_size is None:
            planes = Counter(tuple(self.meta[c]["shape"][1:]) for c in self.case_ids)
            self.plane_size = planes.most_common(1)[0][0]
        else:
            size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
            if len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
                raise ConfigError(f"crop_size={crop_size!r}: expected a positive int or (H, W)")
            self.plane_size = size
        if not (isinstance(downsample, int) and downsample >= 1) or any(
            p % downsample for p in self.plane_size
        ):
            raise ConfigError(
                f"downsample={downsample!r}: expected a positive int dividing the plane {self.plane_size}"
            )
        self.downsample = downsample
        if not isinstance(label_dtype, str) or label_dtype not in LABEL_DTYPES:
            raise ConfigError(f"label_dtype={label_dtype!r}: expected one of {', '.join(LABEL_DTYPES)}")
        self.label_dtype = label_dtype
        self._label_np = LABEL_DTYPES[label_dtype]
        self.crop_size = crop_size
        self.num_slices = num_slices
        self.fg_fraction = float(fg_fraction)
        self.tumor_fraction = float(tumor_fraction)
        self.length = length
        self.seed = int(seed)
        self.window = (float(window[0]), float(window[1]))
        cached_low, cached_high = index["window"]
        if not cached_low <= self.window[0] < self.window[1] <= cached_high:
            raise ConfigError(
                f"window={window!r}: must lie inside the cache's HU window {tuple(index['window'])} "
                "(the cache stores HU clipped to it; re-run prepare with a wider window)"
            )
        self._kidney = {c: np.asarray(self.meta[c]["kidney_slices"], dtype=np.int64) for c in self.case_ids}
        self._tumor = {c: np.asarray(self.meta[c]["tumor_slices"], dtype=np.int64) for c in self.case_ids}
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._pid = os.getpid()

    # -- pickling: memmaps stay behind, each worker opens its own -------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.length

    def _open(self, cid: str) -> tuple[np.ndarray, np.ndarray]:
        if self._pid != os.getpid():  # forked after opening: reopen in this process
            self._arrays, self._pid = {}, os.getpid()
        arrays = self._arrays.get(cid)
        if arrays is None:
            folder = safe_join(self.cache_dir, cid)
            try:
                image = np.load(folder / IMAGE_FILE, mmap_mode="r", allow_pickle=False)
                label = np.load(folder / LABEL_FILE, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DataError(f"{folder}: cannot open cached arrays ({exc}); re-run prepare") from exc
            arrays = self._arrays[cid] = (image, label)
        return arrays

    def window_spec(self, i: int) -> WindowSpec:
        """Where sample ``i`` comes from; a pure function of ``(seed, i)``, reads no voxels
        except, for a foreground crop, the window's label."""
        i = int(i)
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for SliceWindowDataset of length {self.length}")
        rng = np.random.default_rng((self.seed, i))
        cid = self.case_ids[int(rng.integers(len(self.case_ids)))]
        depth, height, width = self.meta[cid]["shape"]
        n = self.num_slices
        kind, target = "uniform", None
        if rng.random() < self.fg_fraction and len(self._kidney[cid]):
            if rng.random() < self.tumor_fraction and len(self._tumor[cid]):
                kind, slices_fg = "tumor", self._tumor[cid]
            else:
                kind, slices_fg = "kidney", self._kidney[cid]
            target = int(slices_fg[rng.integers(len(slices_fg))])
            start = target - int(rng.integers(n))  # window contains the target slice
        else:
            start = int(rng.integers(max(depth - n, 0) + 1))
        start = min(max(start, 0), max(depth - n, 0))
        slices = tuple(int(s) for s in np.clip(np.arange(start, start + n), 0, depth - 1))
        out_h, out_w = self.plane_size
        if (height, width) == (out_h, out_w):
            y0 = x0 = 0
        elif kind != "uniform":
            _, label = self._open(cid)
            sub = np.asarray(label[slices[0] : slices[-1] + 1])
            mask = sub == kits19.TUMOR if kind == "tumor" else sub >= kits19.KIDNEY
            flat = np.flatnonzero(mask)
            pick = int(flat[rng.integers(len(flat))]) if len(flat) else None
            if pick is None:
                cy, cx = int(rng.integers(height)), int(rng.integers(width))
            else:
                _, cy, cx = np.unravel_index(pick, sub.shape)
            y0, x0 = self._place(int(cy), height, out_h, rng), self._place(int(cx), width, out_w, rng)
        else:
            y0 = int(rng.integers(height - out_h + 1)) if height >= out_h else (height - out_h) // 2
            x0 = int(rng.integers(width - out_w + 1)) if width >= out_w else (width - out_w) // 2
        return WindowSpec(cid, kind, slices, y0, x0)

    @staticmethod
    def _place(centre: int, size: int, out: int, rng: np.random.Generator) -> int:
        """Crop origin that keeps ``centre`` inside (jittered by up to a quarter crop)."""
        if size <= out:
            return (size - out) // 2
        jitter = int(rng.integers(-(out // 4), out // 4 + 1))
        return min(max(centre - out // 2 + jitter, 0), size - out)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.window_spec(i)
        image, label = self._open(spec.case_id)
        s0, s1 = spec.slices[0], spec.slices[-1] + 1
        contiguous = s1 - s0 == self.num_slices
        out_h, out_w = self.plane_size
        height, width = image.shape[1:]
        ya, yb = max(spec.y0, 0), min(spec.y0 + out_h, height)
        xa, xb = max(spec.x0, 0), min(spec.x0 + out_w, width)
        if contiguous:
            img = np.asarray(image[s0:s1, ya:yb, xa:xb])
            lab = np.asarray(label[s0:s1, ya:yb, xa:xb])
        else:
            idx = np.asarray(spec.slices)
            img = np.asarray(image[idx, ya:yb, xa:xb])
            lab = np.asarray(label[idx, ya:yb, xa:xb])
        img = normalize(img, self.window)
        if img.shape[1:] != (out_h, out_w):  # pad a plane smaller than the output
            pad = ((0, 0), (ya - spec.y0, spec.y0 + out_h - yb), (xa - spec.x0, spec.x0 + out_w - xb))
            img = np.pad(img, pad, constant_values=0.0)  # 0 = the window's low end
            lab = np.pad(lab, pad, constant_values=kits19.BACKGROUND)
        f = self.downsample
        if f > 1:
            n = img.shape[0]
            img = img.reshape(n, out_h // f, f, out_w // f, f).mean(axis=(2, 4), dtype=np.float32)
            lab = lab[:, f // 2 :: f, f // 2 :: f]
        # astype always copies: the label never aliases the read-only memory map
        return torch.from_numpy(img).unsqueeze(0), torch.from_numpy(lab.astype(self._label_np))
