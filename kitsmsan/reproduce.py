"""The whole paper pipeline in one call: data → cache → five networks → predictions → post-processing
→ vote → evaluation → the Table 1 analogue (MSAN paper, §2–3, Table 1).

``reproduce("smoke")`` runs on a laptop CPU in a few minutes on synthetic phantoms; ``reproduce("paper",
data=KITS19_ROOT)`` is the full GPU reproduction. Both are resumable: finished runs are skipped,
unfinished runs resume from their last checkpoint, existing predictions are reused.

Output folder::

    out/data/            phantoms (smoke) — absent when --data points at KiTS19
    out/cache/           the training cache
    out/runs/<variant>/  one run folder per network (config, metrics, checkpoints)
    out/predictions/<variant>/prediction_XXXXX.nii.gz   raw argmax of each network
    out/predictions/ensemble/prediction_XXXXX.nii.gz    nested-region vote of the five raw predictions
                                                        (predictions/vote/ for any other set of networks)
    out/table1.md, table1.csv, table1.json, per_case.csv

Post-processing: the headline columns keep the two largest connected components of the kidney region
(k = 2, :data:`POSTPROCESS_K`, one per kidney); the paper's literal "maximal connected component"
(k = 1) and no post-processing are reported beside them. On the 190 real KiTS19 segmentations a literal
k = 1 caps even a perfect prediction at a mean kidney Dice of 0.73 (it deletes a whole kidney in 187 of
190 cases), below every kidney number of the paper's Table 1, so the paper cannot have applied it
literally to the kidney region; k = 2 costs about nothing (``book/data/postprocess_ceiling.csv``).

The numbers are labelled by their data: a number computed on phantoms is never presented as a KiTS19
number; the paper's KiTS19 numbers sit beside ours in their own columns.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from kitsmsan.data import phantom
from kitsmsan.data.dataset import split_cases
from kitsmsan.data.kits19 import case_id, list_cases, parse_case_range
from kitsmsan.data.preprocess import prepare_cache
from kitsmsan.ensemble import ensemble_folders
from kitsmsan.errors import ConfigError, DataError
from kitsmsan.metrics import evaluate_folder, summarize
from kitsmsan.predict import predict_folder
from kitsmsan.train import TrainConfig
from kitsmsan.train.config import VARIANTS
from kitsmsan.train.loop import SUMMARY_FILE, run_state, train
from kitsmsan.train.loop import resume as resume_run
from kitsmsan.utils.io import atomic_write_json, atomic_write_text, claim_output_dir, only_files
from kitsmsan.utils.provenance import environment

#: the paper's five networks in Table 1 order, with their display names (MSAN paper, §3.1)
MODEL_NAMES = {
    "unet3d": "3D U-Net",
    "msan_v1": "MSAN-V1",
    "msan_v1_ds": "MSAN-V1 with Deep Supervision",
    "msan_v2": "MSAN-V2",
    "msan_v2_ds": "MSAN-V2 with Deep Supervision",
    "ensemble": "Ensembled Model",
    "vote": "Vote of the networks run (not the paper's five)",
}

#: the five networks the paper's "Ensembled Model" votes over (MSAN paper, §3.1)
ENSEMBLE = VARIANTS

#: MSAN paper, Table 1: Dice (%) on the authors' 10 KiTS19 test cases (180-189), after keeping the
#: largest connected component. The paper reports no row for MSAN-V1 with deep supervision. (The
#: abstract gives 94.83 for the ensemble's kidney Dice; Table 1 gives 94.38 — we quote the table.)
PAPER_TABLE1 = {
    "unet3d": {"kidney": 89.70, "tumor": 46.90, "averaged": 68.30},
    "msan_v1": {"kidney": 92.47, "tumor": 56.00, "averaged": 74.23},
    "msan_v1_ds": None,
    "msan_v2": {"kidney": 93.85, "tumor": 58.22, "averaged": 76.03},
    "msan_v2_ds": {"kidney": 93.01, "tumor": 61.41, "averaged": 77.21},
    "ensemble": {"kidney": 94.38, "tumor": 64.89, "averaged": 79.63},
}

#: the pipeline's post-processing: keep the 2 largest kidney-region components (one per kidney).
#: :func:`kitsmsan.postprocess.keep_largest_components` itself defaults to the paper's literal 1.
POSTPROCESS_K = 2

DATA_PURE = "pure phantoms"
DATA_ANATOMY = "real-anatomy phantoms (label-conditioned on KiTS19 segmentations)"
DATA_KITS = "KiTS19 imaging"

#: how each preset gets its data. ``smoke``: phantoms of ``size`` px in-plane. With KiTS19 labels
#: available, phantoms are drawn from the real segmentations of ``anatomy_train`` + the paper's
#: test cases 180-189, each cropped along z to its kidneys plus ``z_margin_mm`` and resampled to
#: ``slice_thickness`` mm (nearest neighbour) so a CPU run stays within minutes (a 611-slice 0.5 mm
#: case becomes ~40 slices); otherwise ``pure_cases`` synthetic cases of ``num_slices`` slices are
#: split ``pure_train``/``pure_test`` (20 test cases: a paired comparison on fewer resolves little, and
#: inference and generation cost little). Their ``pixel_spacing`` of 3.2 mm gives a 205 mm field of view
#: centred on the abdomen (both kidneys inside) instead of the whole 340 mm body at 5.3 mm: a 15 mm
#: tumour then spans ~5 pixels instead of ~3. Measured on the 6 test phantoms 14-19 of an earlier 20-case
#: set, MSAN-V2, 400 iterations:
#: tumour Dice 0.25 vs 0.09 and kidney 0.87 vs 0.82 (k = 2).
REPRODUCE_DATA: dict[str, dict[str, Any]] = {
    "smoke": dict(
        size=64,
        num_slices=24,
        pixel_spacing=3.2,
        seed=0,
        pure_cases=34,
        pure_train="0-13",
        pure_test="14-33",
        anatomy_train="0-13",
        anatomy_test="180-189",
        slice_thickness=5.0,
        z_margin_mm=20.0,
    ),
    "paper": dict(train="0-179", test="180-189"),
    # the reference run (kitsmsan.reference): real-anatomy phantoms only, 60 training and 30 test
    # cases (the paper's 180-189 among them), otherwise as smoke
    "cpu-reference": dict(
        size=64,
        seed=0,
        anatomy_train="0-59",
        anatomy_test="160-189",
        slice_thickness=5.0,
        z_margin_mm=20.0,
    ),
}


def labels_root_from_env(labels: str | os.PathLike | None) -> Path | None:
    """The KiTS19 segmentation folder: ``labels`` or ``$KITSMSAN_LABELS``; None when neither is set.

    Raises:
        DataError: a folder was named but does not exist.
    """
    value = labels if labels is not None else os.environ.get("KITSMSAN_LABELS") or None
    if value is None:
        return None
    path = Path(value)
    if not path.is_dir():
        raise DataError(f"{path}: KiTS19 labels folder not found (from --labels or KITSMSAN_LABELS)")
    return path


def make_data(
    preset: str,
    out: Path,
    *,
    labels: Path | None,
    data: Path | None,
    progress: bool = True,
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Find or write the data of the run; returns ``{"kind", "root", "train", "test", "num_cases"}``.

    Phantoms are written once; a ``data.json`` marker beside them records what was written so a
    re-run reuses them.

    Args:
        spec: the data settings; default ``REPRODUCE_DATA[preset]``.
    """
    spec = spec or REPRODUCE_DATA[preset]
    if data is not None:
        cases = list_cases(data)
        kind = DATA_KITS if preset == "paper" else f"user data ({data})"
        train, test = (spec.get("train", "0-179"), spec.get("test", "180-189"))
        if preset == "smoke":
            train, test = spec["anatomy_train"], spec["anatomy_test"]
        return {"kind": kind, "root": Path(data), "train": train, "test": test, "num_cases": len(cases)}
    if preset == "paper":
        raise ConfigError("reproduce --preset paper needs --data KITS19_ROOT (the KiTS19 data folder)")

    root = out / "data"
    marker = out / "data.json"
    if labels is not None:
        wanted = parse_case_range(spec["anatomy_train"]) + parse_case_range(spec["anatomy_test"])
        available = {int(p.name[5:]) for p in labels.glob("case_*") if (p / "segmentation.nii.gz").is_file()}
        missing = [n for n in parse_case_range(spec["anatomy_test"]) if n not in available]
        if missing:
            raise DataError(
                f"{labels}: the paper's test cases need segmentations; missing "
                f"{', '.join(case_id(n) for n in missing[:5])}"
            )
        wanted = [n for n in wanted if n in available]
        info = {
            "kind": DATA_ANATOMY,
            "labels": str(labels),
            "cases": wanted,
            "size": spec["size"],
            "seed": spec["seed"],
            "train": spec["anatomy_train"],
            "test": spec["anatomy_test"],
            "slice_thickness": spec.get("slice_thickness"),
            "z_margin_mm": spec.get("z_margin_mm"),
        }
    else:
        info = {
            "kind": DATA_PURE,
            "cases": spec["pure_cases"],
            "size": spec["size"],
            "num_slices": spec["num_slices"],
            "pixel_spacing": spec.get("pixel_spacing"),
            "seed": spec["seed"],
            "train": spec["pure_train"],
            "test": spec["pure_test"],
        }
    done = json.loads(marker.read_text()) if marker.is_file() else None
    if done != info:
        if labels is not None:
            phantom.write_label_conditioned_dataset(
                labels,
                root,
                size=spec["size"],
                case_ids=info["cases"],
                seed=spec["seed"],
                progress=progress,
                slice_thickness=info["slice_thickness"],
                z_margin_mm=info["z_margin_mm"],
            )
        else:
            phantom.write_phantom_dataset(
                root,
                spec["pure_cases"],
                spec["seed"],
                size=spec["size"],
                num_slices=spec["num_slices"],
                pixel_spacing=info["pixel_spacing"],
                progress=progress,
            )
        atomic_write_json(marker, info)
    return {
        "kind": info["kind"],
        "root": root,
        "train": info["train"],
        "test": info["test"],
        "num_cases": len(list_cases(root)),
    }


def predict_and_vote(
    variants,
    runs: Path,
    preds: Path,
    data_root: Path,
    test_ids: list[str],
    *,
    num_slices: int,
    device: str,
    progress: bool,
    save_probs: bool = False,
) -> str | None:
    """Each network's raw prediction, then the vote over those raw predictions (§2.2, §3.1).

    Every variant's run is predicted into ``preds/<variant>/`` by
    :func:`kitsmsan.predict.predict_folder` (last checkpoint, no post-processing; files already
    there are kept). With at least two variants their folders are voted by
    :func:`kitsmsan.ensemble.ensemble_folders` (``rule="nested"``, no post-processing) into
    ``preds/ensemble/`` when the variants are exactly the paper's five (:data:`ENSEMBLE`), else into
    ``preds/vote/`` — only the five make the "Ensembled Model". Post-processing (k = 2, 1 or none)
    is applied at evaluation time to every file alike, the vote included, so each column of the
    table is one procedure applied to all rows.

    ``save_probs`` also keeps each network's softmax probabilities (``probs_XXXXX.npy``) for
    probability averaging (:func:`kitsmsan.ensemble.ensemble_folders` ``method="average"``).

    Returns:
        The key of the vote's folder (``"ensemble"`` or ``"vote"``), or None for a single variant.
    """
    for variant in variants:
        predict_folder(
            [runs / variant],
            data_root,
            preds / variant,
            cases=test_ids,
            checkpoint="last",
            num_slices=num_slices,
            device=device,
            skip_existing=True,
            save_probs=save_probs,
            progress=False,
            log=print if progress else None,
        )
    if len(variants) < 2:
        return None
    key = vote_key(variants)
    ensemble_folders(
        [preds / v for v in variants],
        preds / key,
        method="vote",
        rule="nested",
        cases=test_ids,
        postprocess=0,
        log=print if progress else None,
    )
    return key


def vote_key(variants) -> str:
    """``"ensemble"`` when ``variants`` are the paper's five networks (in any order), else ``"vote"``."""
    return "ensemble" if sorted(variants) == sorted(ENSEMBLE) else "vote"


def _fmt(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def table1_scores(per_case, *, headline_k: int = POSTPROCESS_K) -> dict[str, dict[str, float]]:
    """The ``per_model`` input of :func:`table1` from a per-case Dice table.

    Args:
        per_case: a DataFrame with one row per (model, post-processing, case): columns ``model``,
            ``postprocess`` (0 = none, 1, 2 components kept), ``kidney``, ``tumor`` (as written by
            :func:`kitsmsan.metrics.evaluate_folder` / :func:`kitsmsan.metrics.dice_table`).
        headline_k: the post-processing of the headline columns (default :data:`POSTPROCESS_K`).

    Returns:
        ``{model: {"kidney", "tumor", "averaged" (headline k), "kidney_k1", "averaged_k1",
        "averaged_k2", "averaged_raw"}}`` in fractions, models in their order of appearance.

    Raises:
        DataError: a model lacks the rows of one of the post-processing levels 0, 1, 2.
    """
    scores = {}
    for key in dict.fromkeys(per_case["model"]):
        scored = {}
        for k in (0, 1, 2):
            rows = per_case[(per_case["model"] == key) & (per_case["postprocess"] == k)]
            if rows.empty:
                raise DataError(f"table1_scores: no per-case rows for model {key!r} with postprocess={k}")
            scored[k] = summarize(rows).iloc[0]
        head = scored[headline_k]
        scores[key] = {
            "kidney": float(head["kidney"]),
            "tumor": float(head["tumor"]),
            "averaged": float(head["averaged"]),
            "kidney_k1": float(scored[1]["kidney"]),
            "averaged_k1": float(scored[1]["averaged"]),
            "averaged_k2": float(scored[2]["averaged"]),
            "averaged_raw": float(scored[0]["averaged"]),
        }
    return scores


def table1(
    per_model: dict[str, dict[str, float]],
    *,
    data_kind: str,
    iterations: dict[str, int],
    preset: str,
    headline_k: int = 1,
) -> tuple[str, list[dict[str, Any]]]:
    """The Table 1 analogue: our Dice (%) beside the paper's KiTS19 Dice (%).

    Args:
        per_model: ``{variant|"ensemble": {...}}`` in fractions: ``"kidney"``, ``"tumor"``,
            ``"averaged"`` after post-processing with ``headline_k`` components, plus
            ``"averaged_raw"`` (no post-processing) and the average with the other k:
            ``"averaged_k2"`` when ``headline_k == 1``, ``"averaged_k1"`` (and optionally
            ``"kidney_k1"``) when ``headline_k == 2``.
        data_kind: what our numbers were computed on (:data:`DATA_PURE`, ...).
        iterations: training iterations per variant. preset: the preset name.
        headline_k: the post-processing of the headline columns: 1 (the paper's literal "maximal
            connected component"; then a k = 2 column sits beside it) or 2 (one component per kidney,
            :data:`POSTPROCESS_K`, what :func:`reproduce` uses; then k = 1 sits beside it). Default 1
            (backward compatible with callers that pass k = 1 headline numbers).

    Returns:
        ``(markdown, rows)``; each row holds our and the paper's numbers in percent. Row keys:
        ``ours_kidney``, ``ours_tumor``, ``ours_averaged`` (headline k), ``ours_averaged_k1`` and
        ``ours_averaged_k2`` (where known), ``ours_averaged_no_postprocess``, ``postprocess_k``,
        ``paper_kits19_*``.

    Raises:
        ConfigError: ``headline_k`` is not 1 or 2.
    """
    if headline_k not in (1, 2):
        raise ConfigError(f"headline_k={headline_k!r}: expected 1 or 2")
    other = 2 if headline_k == 1 else 1

    def pct(value):
        return None if value is None else 100 * value

    rows = []
    for key, name in MODEL_NAMES.items():
        if key not in per_model:
            continue
        ours = per_model[key]
        paper = PAPER_TABLE1.get(key) or {}
        by_k = {headline_k: ours["averaged"], other: ours.get(f"averaged_k{other}")}
        rows.append(
            {
                "model": name,
                "key": key,
                "postprocess_k": headline_k,
                "ours_kidney": 100 * ours["kidney"],
                "ours_tumor": 100 * ours["tumor"],
                "ours_averaged": 100 * ours["averaged"],
                "ours_averaged_k1": pct(by_k[1]),
                "ours_averaged_k2": pct(by_k[2]),
                **({"ours_kidney_k1": pct(ours.get("kidney_k1"))} if headline_k == 2 else {}),
                "ours_averaged_no_postprocess": 100 * ours["averaged_raw"],
                "paper_kits19_kidney": paper.get("kidney"),
                "paper_kits19_tumor": paper.get("tumor"),
                "paper_kits19_averaged": paper.get("averaged"),
            }
        )
    iters = sorted(set(iterations.values()))
    iters_text = ", ".join(str(i) for i in iters)
    kits = data_kind == DATA_KITS
    ours_label = "Ours, KiTS19" if kits else f"Ours, {data_kind.split(' (')[0]} — not KiTS19"
    if headline_k == 1:
        how = (
            "after keeping the largest connected component (k = 1, the paper's step; two more columns "
            "give the average with k = 2 — both kidneys — and without post-processing)"
        )
        extra_head = "Averaged, k = 2 | Averaged, no post-proc."
        extra_align = "---:|---:|"
    else:
        how = (
            "after keeping the two largest connected components of the kidney region (k = 2, one per "
            "kidney; the paper's literal k = 1 would delete a whole kidney in 187 of 190 real KiTS19 "
            "cases and cap even a perfect prediction at a kidney Dice of 0.73, below every kidney "
            "number of the paper's Table 1). Beside it: kidney and average with k = 1 (paper, "
            "literal) and the average without post-processing"
        )
        extra_head = "Kidney, k = 1 (paper, literal) | Averaged, k = 1 | Averaged, no post-proc."
        extra_align = "---:|---:|---:|"
    lines = [
        f"## Table 1 analogue — preset `{preset}`",
        "",
        f"Dice (%) on the test cases {how}. "
        f"**Ours**: {data_kind}, {iters_text} training iterations per network. **Paper**: the "
        f"authors' KiTS19 numbers (MSAN paper, Table 1; 400,000 iterations), copied for reference"
        + ("." if kits else " — they are not comparable with phantom numbers."),
        "",
        f"| Model | {ours_label}: Kidney | Tumor | Averaged | Paper (KiTS19): Kidney | Tumor | Averaged |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    # the post-processing columns in a table of their own, so ours and the paper's fit side by side
    post = [
        "",
        f"Post-processing, ours (Dice %, {data_kind.split(' (')[0]}):",
        "",
        f"| Model | Averaged, k = {headline_k} (above) | {extra_head} |",
        f"|---|---:|{extra_align}",
    ]
    for r in rows:
        if headline_k == 1:
            extra = f"| {_fmt(r['ours_averaged_k2'])} | {_fmt(r['ours_averaged_no_postprocess'])} |"
        else:
            extra = (
                f"| {_fmt(r['ours_kidney_k1'])} | {_fmt(r['ours_averaged_k1'])} "
                f"| {_fmt(r['ours_averaged_no_postprocess'])} |"
            )
        lines.append(
            f"| {r['model']} | {_fmt(r['ours_kidney'])} | {_fmt(r['ours_tumor'])} | {_fmt(r['ours_averaged'])} "
            f"| {_fmt(r['paper_kits19_kidney'])} "
            f"| {_fmt(r['paper_kits19_tumor'])} | {_fmt(r['paper_kits19_averaged'])} |"
        )
        post.append(f"| {r['model']} | {_fmt(r['ours_averaged'])} {extra}")
    return "\n".join(lines + post) + "\n", rows


def reproduce(
    preset: str = "smoke",
    out: str | os.PathLike = "reproduce",
    *,
    data: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    variants: tuple[str, ...] | None = None,
    overrides: dict[str, Any] | None = None,
    data_options: dict[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Run the paper's pipeline end to end and write the Table 1 analogue.

    Steps (MSAN paper, §2.1–§3.2): data (phantoms for ``smoke``: label-conditioned on the real KiTS19
    segmentations when ``labels`` / ``$KITSMSAN_LABELS`` is available, else pure phantoms; KiTS19
    imaging for ``paper``) → :func:`~kitsmsan.data.preprocess.prepare_cache` → train the five
    networks → predict the test cases → vote of the raw predictions (``rule="nested"``;
    the "Ensembled Model" only when all five took part) → keep the two largest connected components of
    the kidney region (k = 2, :data:`POSTPROCESS_K`; also reported: the paper's literal k = 1, and
    none) → Dice → ``table1.{md,csv,json}``.

    Args:
        preset: ``"smoke"`` (CPU, minutes) or ``"paper"`` (GPU, the paper's recipe). Default ``"smoke"``.
        out: output folder. Default ``"reproduce"``.
        data: a KiTS19-layout data folder (required for ``paper``; for ``smoke`` it replaces the
            phantoms). Default ``None``.
        labels: KiTS19 segmentations folder for label-conditioned phantoms. Default ``None``
            (then ``$KITSMSAN_LABELS``; if unset, pure phantoms).
        variants: networks to train. Default: all five.
        overrides: :class:`~kitsmsan.train.TrainConfig` overrides for every run (e.g.
            ``{"num_iters": 20}``; ``train_cases``/``test_cases`` replace the data's split).
            Default ``None``.
        data_options: changes to :data:`REPRODUCE_DATA` ``[preset]`` (phantom ``size``,
            ``pure_cases``, splits ...). Default ``None``.
        progress: progress bars. Default ``True``.
        overwrite: take over an ``out`` folder that is not a reproduction (default False: refused;
            its files are kept, never deleted — :func:`kitsmsan.utils.io.claim_output_dir`).

    Returns:
        ``{"table_md", "table_csv", "table_json", "per_case"}`` paths.

    Raises:
        ConfigError: unknown preset/variant or bad overrides.
        DataError: missing data.
        TrainingError: a run diverged (its last good checkpoint is kept; re-run to resume).
    """
    if preset not in ("smoke", "paper"):  # cpu-reference has its own command (kitsmsan.reference)
        raise ConfigError(f"preset={preset!r}: choose 'smoke' or 'paper'")
    variants = VARIANTS if variants is None else tuple(variants)
    if not variants:
        raise ConfigError(
            'variants: empty selection (e.g. --variants ""); name at least one network, or leave it out for all five'
        )
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ConfigError(f"variants: unknown {bad[0]!r} (choose from {', '.join(VARIANTS)})")
    t_start = time.perf_counter()
    settings = dict(overrides or {})
    for variant in variants:  # bad overrides (model.<typo>=...) fail before any data is written
        TrainConfig.from_preset(
            preset,
            variant=variant,
            **{k: v for k, v in settings.items() if k not in ("train_cases", "test_cases")},
        ).check_model()
    out = claim_output_dir(
        out,
        "reproduce",
        command="reproduce",
        overwrite=overwrite,
        recognize=only_files("data", "data.json", "cache", "runs", "predictions", "table1.*", "per_case.csv"),
    )
    labels_root = labels_root_from_env(labels) if data is None else None
    unknown = sorted(set(data_options or {}) - set(REPRODUCE_DATA[preset]))
    if unknown:
        raise ConfigError(
            f"data_options: unknown key {unknown[0]!r} (known: {', '.join(REPRODUCE_DATA[preset])})"
        )
    spec = {**REPRODUCE_DATA[preset], **(data_options or {})}
    info = make_data(
        preset, out, labels=labels_root, data=Path(data) if data else None, progress=progress, spec=spec
    )
    info["train"] = str(settings.pop("train_cases", info["train"]))
    info["test"] = str(settings.pop("test_cases", info["test"]))
    data_root = Path(info["root"])
    split = split_cases(list_cases(data_root), train=info["train"], test=info["test"])
    if not split["train"] or not split["test"]:
        raise DataError(
            f"{data_root}: need cases in train {info['train']!r} and test {info['test']!r}; "
            f"found {len(split['train'])} and {len(split['test'])}"
        )
    cache = out / "cache"
    prepare_cache(data_root, cache, case_ids=split["train"] + split["test"], progress=progress)
    t_data = time.perf_counter() - t_start

    runs, preds = out / "runs", out / "predictions"
    base = TrainConfig.from_preset(
        preset,
        data_root=str(data_root),
        cache_dir=str(cache),
        train_cases=info["train"],
        test_cases=info["test"],
        progress=progress,
        **settings,
    )
    iterations, train_seconds = {}, {}
    for variant in variants:
        config = base.replace(variant=variant, run_dir=str(runs / variant))
        state = run_state(runs / variant)
        if state == "partial":
            resume_run(runs / variant, progress=progress)
        elif state == "new":
            train(config)
        summary = json.loads((runs / variant / SUMMARY_FILE).read_text())
        iterations[variant] = int(summary["iterations"])
        train_seconds[variant] = float(summary["seconds"])

    t_pred = time.perf_counter()
    test_ids = split["test"]
    device = "cuda" if base.device in ("auto", "cuda") and _cuda() else "cpu"
    vote = predict_and_vote(
        variants,
        runs,
        preds,
        data_root,
        test_ids,
        num_slices=base.num_slices,
        device=device,
        progress=progress,
    )
    t_pred = time.perf_counter() - t_pred

    frames = []
    for key in (*variants, *([vote] if vote else [])):
        for k in (0, 1, 2):
            df = evaluate_folder(preds / key, data_root, case_ids=test_ids, postprocess=k)
            df.insert(0, "model", key)
            frames.append(df)
    per_case = pd.concat(frames, ignore_index=True)
    per_model = table1_scores(per_case, headline_k=POSTPROCESS_K)
    markdown, rows = table1(
        per_model, data_kind=info["kind"], iterations=iterations, preset=preset, headline_k=POSTPROCESS_K
    )
    env = environment(device)
    wall = time.perf_counter() - t_start
    provenance = {
        "data_kind": info["kind"],
        "data_root": str(data_root),
        "labels": str(labels_root) if labels_root else None,
        "train_cases": info["train"],
        "test_cases": info["test"],
        "num_train_cases": len(split["train"]),
        "num_test_cases": len(test_ids),
        "preset": preset,
        "iterations": iterations,
        "train_seconds": {k: round(v, 1) for k, v in train_seconds.items()},
        "data_seconds": round(t_data, 1),
        "predict_seconds": round(t_pred, 1),
        "wall_seconds": round(wall, 1),
        "hardware": env["device"],
        "commit": env["commit"],
        "torch": env["torch"],
        "kitsmsan": env["kitsmsan"],
        "postprocess": (
            f"largest connected components of the kidney region, k={POSTPROCESS_K} "
            "(headline; k=1 'paper, literal' and none reported beside it)"
        ),
        "ensemble": (
            ("Ensembled Model: " if vote == "ensemble" else f"{vote}: ") + "nested-region vote "
            f"(kidney region and tumour each by a strict majority) of the raw predictions of "
            f"{', '.join(variants)}, post-processed like the rest"
        )
        if vote
        else None,
        "checkpoint": "last (no checkpoint, threshold or setting is chosen on the test cases)",
        "train_config": base.to_dict(),
    }
    markdown += (
        "\n"
        + "\n".join(f"- {k.replace('_', ' ')}: {v}" for k, v in provenance.items() if k != "train_config")
        + "\n"
    )
    paths = {
        "table_md": out / "table1.md",
        "table_csv": out / "table1.csv",
        "table_json": out / "table1.json",
        "per_case": out / "per_case.csv",
    }
    atomic_write_text(paths["table_md"], markdown)
    atomic_write_text(paths["table_csv"], pd.DataFrame(rows).to_csv(index=False, float_format="%.2f"))
    atomic_write_json(paths["table_json"], {"rows": rows, "provenance": provenance})
    atomic_write_text(paths["per_case"], per_case.to_csv(index=False, float_format="%.6f"))
    return paths


def _cuda() -> bool:
    return torch.cuda.is_available()
