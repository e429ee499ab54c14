"""Shared fixtures: tiny KiTS19-layout cases, the real label folder, a cache.

Torch is limited to 2 threads at import: the development machine has 2 cores shared by the team.
"""

from __future__ import annotations

import os
from pathlib import Path

# OpenMP threads that spin-wait stall badly when the 2 cores are shared (measured up to 30x on a
# training step); passive waiting must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

try:
    import torch

    torch.set_num_threads(2)
except ImportError:  # pragma: no cover - torch is a hard dependency, but keep conftest importable
    torch = None

REPO = Path(__file__).resolve().parent.parent

#: the tiny cases of ``tiny_case_root``: (Z, Y, X), spacing (z, y, x), kidney slices, tumour slices
TINY_CASES = {
    "case_00000": {"shape": (10, 16, 16), "spacing": (2.5, 0.75, 0.75), "kidney": [4, 5], "tumor": [5]},
    "case_00001": {"shape": (3, 16, 20), "spacing": (5.0, 0.8, 0.8), "kidney": [1], "tumor": []},
    "case_00002": {"shape": (12, 16, 16), "spacing": (1.0, 0.7, 0.7), "kidney": [], "tumor": []},
}


def make_tiny_case(case_id: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Deterministic (image float32 HU, label uint8, spacing) of one of :data:`TINY_CASES`.

    Integer HU from -1000 to 1500 (outside the window on both sides); kidney = a 4 x 4 block at
    rows/cols 4..7 on its kidney slices, tumour = a 2 x 2 block at rows/cols 5..6 on its tumour slices.
    """
    spec = TINY_CASES[case_id]
    rng = np.random.default_rng(int(case_id[-5:]))
    image = rng.integers(-1000, 1500, spec["shape"]).astype(np.float32)
    label = np.zeros(spec["shape"], np.uint8)
    for z in spec["kidney"]:
        label[z, 4:8, 4:8] = 1
    for z in spec["tumor"]:
        label[z, 5:7, 5:7] = 2
    return image, label, spec["spacing"]


@pytest.fixture
def tiny_case_root(tmp_path: Path) -> Path:
    """A KiTS19 data folder with the 3 tiny cases of :data:`TINY_CASES`, written by ``save_case``."""
    from kitsmsan.data.kits19 import save_case

    root = tmp_path / "data"
    for cid in TINY_CASES:
        image, label, spacing = make_tiny_case(cid)
        save_case(root, cid, image, label, spacing)
    return root


@pytest.fixture
def tiny_cache(tiny_case_root: Path, tmp_path: Path) -> Path:
    """``prepare_cache`` output of ``tiny_case_root``."""
    from kitsmsan.data.preprocess import prepare_cache

    cache = tmp_path / "cache"
    prepare_cache(tiny_case_root, cache, progress=False)
    return cache


@pytest.fixture(scope="session")
def tiny_phantom_root(tmp_path_factory) -> Path:
    """Two 32 x 32 phantom cases (``write_phantom_dataset(root, 2, seed=0, size=32)``), written once
    per session: treat as read-only."""
    from kitsmsan.data.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms") / "data"
    write_phantom_dataset(root, 2, seed=0, size=32, progress=False)
    return root


@pytest.fixture
def kits_labels_dir() -> Path:
    """The real KiTS19 segmentations: ``$KITSMSAN_LABELS`` or ``../shared/kits19-labels``; skips
    the test when neither exists."""
    env = os.environ.get("KITSMSAN_LABELS")
    path = Path(env) if env else REPO.parent / "shared" / "kits19-labels"
    if not (path / "case_00000").is_dir():
        pytest.skip(
            f"real KiTS19 labels not found at {path} (set KITSMSAN_LABELS to a folder of "
            "case_XXXXX/segmentation.nii.gz)"
        )
    return path


@pytest.fixture(scope="session")
def fake_reference(tmp_path_factory) -> Path:
    """A reference record in the layout of ``kitsmsan reference``, with made-up Dice (no training).

    12 test cases, seeds 0-2, the five networks and the three ensembles, k = 0, 1, 2; every number is
    drawn from a fixed generator, so the pages' comparisons on it are deterministic. The configs are
    the preset's with ``num_iters=123``; the provenance says ``hardware: "CPU (test fixture)"``.
    """
    import json

    import pandas as pd

    from kitsmsan import reference
    from kitsmsan.metrics import summarize
    from kitsmsan.reproduce import DATA_ANATOMY
    from kitsmsan.train.config import VARIANTS

    root = tmp_path_factory.mktemp("reference") / "record"
    (root / "configs").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cases = [f"case_{160 + i:05d}" for i in range(12)]
    offset = {
        "unet3d": 0.0,
        "msan_v1": 0.02,
        "msan_v1_ds": 0.01,
        "msan_v2": 0.03,
        "msan_v2_ds": 0.04,
        "ensemble": 0.05,
        "ensemble_plurality": 0.05,
        "ensemble_average": 0.045,
    }
    rows = []
    for seed in (0, 1, 2):
        for model, off in offset.items():
            # MSAN-V2 loses its lead over MSAN-V1 in seed 2: one comparison the seeds disagree on
            shift = off - (0.015 if (seed == 2 and model == "msan_v2") else 0.0)
            for i, cid in enumerate(cases):
                kidney = 0.80 + 0.01 * i + shift + rng.normal(0, 0.005)
                tumor = 0.50 + 0.02 * i + 2 * shift + rng.normal(0, 0.02)
                for k, loss in ((0, 0.01), (1, 0.10), (2, 0.0)):
                    rows.append(
                        {
                            "seed": seed,
                            "model": model,
                            "case_id": cid,
                            "kidney": kidney - loss,
                            "tumor": tumor,
                            "composite": (kidney - loss + tumor) / 2,
                            "postprocess": k,
                            "status": "ok",
                        }
                    )
    per_case = pd.DataFrame(rows)
    summary = summarize(per_case, by=["seed", "model", "postprocess"]).reset_index()
    per_case.to_csv(root / "per_case.csv", index=False, float_format="%.6f")
    summary.to_csv(root / "summary.csv", index=False, float_format="%.6f")
    for seed in (0, 1, 2):
        for v in VARIANTS:
            config = reference.reference_config(v, seed, num_iters=123).to_dict()
            (root / "configs" / f"{reference.run_name(seed, v)}.json").write_text(json.dumps(config))
    provenance = {
        "preset": reference.PRESET,
        "command": reference.COMMAND,
        "data_kind": DATA_ANATOMY,
        "train_cases": "0-59",
        "test_cases": "160-171",
        "num_train_cases": 60,
        "num_test_cases": len(cases),
        "test_case_ids": cases,
        "seeds": [0, 1, 2],
        "variants": list(VARIANTS),
        "vote": "ensemble",
        "jobs": 2,
        "overrides": {"num_iters": 123},
        "data_options": {},
        "wall_seconds": 600.0,
        "hardware": "CPU (test fixture)",
        "commit": "fixture0",
        "attribution": reference.ATTRIBUTION,
    }
    (root / "provenance.json").write_text(json.dumps(provenance))
    return root
