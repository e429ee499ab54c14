"""Measure what a Colab run stores and write ``book/data/colab_sizes.json`` (the Colab page renders it).

Usage::

    python scripts/colab_sizes.py --labels /path/to/kits19-labels [--out book/data/colab_sizes.json]

What it measures (nothing is guessed; where a figure is scaled or quoted, the JSON says how):

* **labels-only download**: the bytes of every file under the labels folder (``du -b`` style) for the
  cases it holds, and per case; scaled to the 210 labelled cases by the mean segmentation size.
* **KiTS19 imaging**: quoted (``kitsmsan.data.download``'s figure, ≈27 GB for 210 cases): no imaging is
  read here; the uncompressed voxel count is computed from the labels' shapes.
* **training cache** (``kitsmsan prepare``): from each case's real shape, the cache's formats
  (:mod:`kitsmsan.data.preprocess`: ``image.npy`` int16 + ``label.npy`` uint8, each with a 128-byte
  ``.npy`` header, plus JSON), for cases 0–189; and the same for a cache that would keep only the
  kidney z-range plus a margin (evaluated, not implemented).
* **run folder**: a real checkpoint of each network written with :mod:`kitsmsan.checkpoint`
  (weights, Adam state after one step, scheduler, scaler, RNG states, config) and its file size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from kitsmsan.checkpoint import make_checkpoint, save_checkpoint
from kitsmsan.data.kits19 import case_number, list_cases, read_header
from kitsmsan.data.preprocess import IMAGE_FILE, LABEL_FILE
from kitsmsan.models import build_model, list_models
from kitsmsan.train.config import TrainConfig
from kitsmsan.utils.provenance import git_commit

NPY_HEADER = 128  # numpy format 1.0 header of a 3-D array (padded to 64-byte alignment)
IMAGING_GB_210 = 27.0  # kitsmsan.data.download: "~27 GB for 210 cases"
MARGINS_MM = (0, 20, 50)
LABELLED_CASES = 210


def label_sizes(root: Path) -> dict:
    files = [p for p in root.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    segs = sorted(root.glob("case_*/segmentation.nii.gz"))
    seg_bytes = [p.stat().st_size for p in segs]
    other = total - sum(seg_bytes)
    mean = float(np.mean(seg_bytes))
    return {
        "cases": len(segs),
        "bytes": total,
        "segmentation_bytes": sum(seg_bytes),
        "other_bytes": other,
        "mean_case_bytes": round(mean),
        "scaled_210_bytes": round(mean * LABELLED_CASES + other),
        "how": f"sum of file sizes under the labels folder ({len(segs)} cases + kits.json, README, "
        f"LICENSE); scaled to {LABELLED_CASES} cases as mean segmentation size x {LABELLED_CASES} "
        "+ the other files",
    }


def cache_sizes(root: Path, train_cases: range) -> dict:
    rows = []
    for cid in list_cases(root, require_imaging=False):
        if case_number(cid) not in train_cases:
            continue
        path = root / cid / "segmentation.nii.gz"
        (z, y, x), spacing, _ = read_header(path)  # the real shape, from the header
        # kidney slices: decompress the voxels once (no value checks: only "any label > 0" per slice)
        label = np.asarray(nib.load(str(path)).dataobj, dtype=np.uint8)
        kidney = np.flatnonzero(label.reshape(z, -1).any(axis=1))
        del label
        print(f"  {cid} {z}x{y}x{x}", flush=True)
        rows.append(
            {
                "case": cid,
                "shape": [z, y, x],
                "slice_mm": float(spacing[0]),
                "kidney_z": [int(kidney[0]), int(kidney[-1])] if kidney.size else None,
            }
        )
    per_voxel = np.dtype(np.int16).itemsize + np.dtype(np.uint8).itemsize

    def plane(r: dict) -> int:
        return r["shape"][1] * r["shape"][2]

    full = sum(r["shape"][0] * plane(r) * per_voxel + 2 * NPY_HEADER for r in rows)
    slices = sum(r["shape"][0] for r in rows)
    cropped = {}
    for m in MARGINS_MM:
        total, kept = 0, 0
        for r in rows:
            if r["kidney_z"] is None:
                continue
            pad = int(np.ceil(m / r["slice_mm"]))
            z0, z1 = max(0, r["kidney_z"][0] - pad), min(r["shape"][0] - 1, r["kidney_z"][1] + pad)
            kept += z1 - z0 + 1
            total += (z1 - z0 + 1) * plane(r) * per_voxel + 2 * NPY_HEADER
        cropped[f"{m}mm"] = {"bytes": total, "slices": kept, "fraction_of_full": round(total / full, 3)}
    return {
        "cases": len(rows),
        "slices": slices,
        "bytes": full,
        "voxels": sum(r["shape"][0] * plane(r) for r in rows),
        "format": f"{IMAGE_FILE} int16 + {LABEL_FILE} uint8 per voxel ({per_voxel} B) + "
        f"2 x {NPY_HEADER} B "
        "headers per case (JSON index/meta not counted: kilobytes)",
        "kidney_z_range_plus_margin": cropped,
        "per_case": rows,
    }


def checkpoint_sizes() -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in list_models():
            torch.manual_seed(0)
            model = build_model(name)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100_000, gamma=0.1)
            model.train()
            outs = model(torch.rand(1, 1, 4, 16, 16))
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            sum(o.float().mean() for o in outs).backward()
            opt.step()  # Adam's moments exist from the first step
            scaler = torch.amp.GradScaler("cpu", enabled=False)
            state = make_checkpoint(
                model,
                optimizer=opt,
                scheduler=sched,
                scaler=scaler,
                iteration=1,
                train_config=TrainConfig.from_preset("paper", variant=name).to_dict(),
            )
            path = save_checkpoint(state, Path(tmp) / f"{name}.pt")
            params = sum(p.numel() for p in model.parameters())
            out[name] = {
                "parameters": params,
                "bytes": Path(path).stat().st_size,
                "weights_plus_adam_bytes": 12 * params,
            }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", required=True, type=Path, help="a KiTS19 labels-only folder")
    ap.add_argument("--out", default=Path("book/data/colab_sizes.json"), type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    train = TrainConfig.from_preset("paper")
    lo, hi = 0, 189  # the paper's training and test cases (MSAN paper, §2.1)
    labels = label_sizes(args.labels)
    cache = cache_sizes(args.labels, range(lo, hi + 1))
    ckpt = checkpoint_sizes()
    per_run = {n: 2 * c["bytes"] for n, c in ckpt.items()}  # last.pt + best.pt
    report = {
        "what": "sizes of what a Colab run stores: labels download, imaging (quoted), training cache, "
        "run folders with checkpoints",
        "commit": git_commit(),
        "torch": torch.__version__,
        "labels": labels,
        "imaging": {
            "bytes_210": int(IMAGING_GB_210 * 1e9),
            "source": "kitsmsan.data.download (~27 GB for "
            "210 cases, the official KiTS19 figure); not measured here",
            "uncompressed_float32_bytes_0_189": 4 * cache["voxels"],
        },
        "cache_0_189": {k: v for k, v in cache.items() if k != "per_case"},
        "checkpoints": ckpt,
        "run_folders": {
            "checkpoints_per_run": ["last.pt", "best.pt"],
            "bytes_per_run": per_run,
            "bytes_five_runs": sum(per_run.values()),
            "metrics_rows_paper": train.num_iters // train.log_every,
        },
        "per_case": cache["per_case"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")

    def gb(b: float) -> str:
        return f"{b / 1e9:.2f} GB"

    print(
        f"labels {labels['cases']} cases {gb(labels['bytes'])}; "
        f"scaled to 210: {gb(labels['scaled_210_bytes'])}"
    )
    print(f"cache 0-189: {gb(cache['bytes'])} ({cache['slices']} slices)")
    for k, v in cache["kidney_z_range_plus_margin"].items():
        print(f"  kidney z-range + {k}: {gb(v['bytes'])} ({v['fraction_of_full']:.0%})")
    print("checkpoints: " + ", ".join(f"{n} {gb(c['bytes'])}" for n, c in ckpt.items()))
    print(f"five run folders (last + best): {gb(report['run_folders']['bytes_five_runs'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
