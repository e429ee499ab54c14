"""The CPU reference run: the five networks, three training seeds each, on real-anatomy phantoms.

The book's live run (``make book``) trains each network for a few hundred iterations on a handful of
phantoms, so that a reader can watch every step on a laptop. That run is too short to say anything
about the method: its differences are within noise. The reference run is the same pipeline, long
enough that the networks have learned, repeated over three training seeds, and scored on 30 test
cases — small enough for two CPU cores in about an hour. Its result files are committed under
``book/data/reference/`` and the evaluation and ablation pages compare on them.

Recipe (:data:`kitsmsan.train.config.PRESETS` ``["cpu-reference"]`` and
:data:`kitsmsan.reproduce.REPRODUCE_DATA` ``["cpu-reference"]``): label-conditioned phantoms of the
real KiTS19 segmentations (64 × 64 in-plane, 5 mm slices, each case cropped to its kidneys ± 20 mm),
trained on cases 0–59 and tested on 160–189 (the paper's 180–189 among them); every network with
seeds 0, 1, 2; two single-thread runs at a time. Per seed, the five raw predictions are voted
(nested-region rule) into that seed's ensemble, and every prediction is scored with k = 0, 1, 2
components kept (k = 2 is the headline, as in :mod:`kitsmsan.reproduce`).

Output folder (``out``)::

    out/data/, data.json, cache/            the phantoms and their cache
    out/runs/seed<S>/<variant>/             one run folder per network and seed (with checkpoints)
    out/predictions/seed<S>/<variant>/      raw predictions; .../ensemble/ the seed's vote

Record folder (``record``, committed: no checkpoint, no image)::

    record/per_case.csv        seed, model, postprocess, case_id, kidney, tumor, composite, status;
                               model: the five networks, ``ensemble`` (the nested-region vote),
                               ``ensemble_plurality`` and ``ensemble_average`` (probabilities)
    record/summary.csv         per seed and model: mean Dice (k = 0, 1, 2)
    record/provenance.json     recipe, data, seeds, hardware, commit, wall times, the command
    record/configs/seed<S>_<variant>.json    each run's config.json (paths relative to ``out``)
    record/metrics/seed<S>_<variant>.jsonl   each run's metrics log

The regenerating command is :data:`COMMAND`. :func:`check_record` compares a record with what the
preset gives today, so committed results cannot silently go stale.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd

from kitsmsan.data.dataset import split_cases
from kitsmsan.data.kits19 import list_cases
from kitsmsan.data.preprocess import prepare_cache
from kitsmsan.ensemble import ensemble_folders
from kitsmsan.errors import ConfigError, DataError
from kitsmsan.metrics import evaluate_folder, summarize
from kitsmsan.reproduce import (
    POSTPROCESS_K,
    REPRODUCE_DATA,
    labels_root_from_env,
    make_data,
    predict_and_vote,
    vote_key,
)
from kitsmsan.train import TrainConfig
from kitsmsan.train.config import VARIANTS
from kitsmsan.train.loop import SUMMARY_FILE, run_state, train
from kitsmsan.train.loop import resume as resume_run
from kitsmsan.utils.io import atomic_write_json, atomic_write_text, claim_output_dir
from kitsmsan.utils.provenance import environment

#: the preset of the reference run (training: ``PRESETS``; data: ``REPRODUCE_DATA``)
PRESET = "cpu-reference"

#: training seeds of every network
SEEDS = (0, 1, 2)

#: training runs at a time (one thread each: a 2-core machine runs two at once)
JOBS = 2

#: what "long enough to have learned" means: the seeds' mean ensemble Dice (k = 2) on the test cases
TARGET = {"kidney": 0.90, "tumor": 0.50}

#: where the book keeps the committed record
RECORD_DIR = Path("book") / "data" / "reference"

#: the one command that regenerates the committed record (after ``kitsmsan download --labels-only``)
COMMAND = (
    "kitsmsan download --root kits19/data --labels-only --cases 0-59,160-189 && "
    "kitsmsan reference --labels kits19/data --out runs/reference --record book/data/reference"
)

#: the config fields that are paths (recorded relative to the output folder) or display-only
PATH_FIELDS = ("data_root", "cache_dir", "run_dir")
DISPLAY_FIELDS = ("progress",)

#: the attribution the record carries: its phantoms are shaped by the KiTS19 segmentations
ATTRIBUTION = (
    "Phantoms derived from the KiTS19 challenge segmentations (Heller et al., 'The KiTS19 Challenge "
    "Data', 2019; github.com/neheller/kits19), licensed CC BY-NC-SA 4.0"
)


def run_name(seed: int, variant: str) -> str:
    """``"seed<S>_<variant>"``: the file stem of one run's recorded config and metrics."""
    return f"seed{seed}_{variant}"


def reference_config(variant: str, seed: int, out: str | os.PathLike = ".", **overrides: Any) -> TrainConfig:
    """The :class:`~kitsmsan.train.config.TrainConfig` of one reference run: its preset, data and split.

    Args:
        variant: one of :data:`kitsmsan.train.config.VARIANTS`.
        seed: the training seed.
        out: the reference output folder; the config's paths are ``out/data``, ``out/cache`` and
            ``out/runs/seed<S>/<variant>`` (default ``"."``: the relative paths the record holds).
        **overrides: other :class:`~kitsmsan.train.config.TrainConfig` fields (a run with overrides
            is not the reference: :func:`check_record` refuses its record).
    """
    out = Path(out)
    spec = REPRODUCE_DATA[PRESET]
    settings = dict(
        variant=variant,
        seed=seed,
        data_root=os.path.normpath(out / "data"),
        cache_dir=os.path.normpath(out / "cache"),
        run_dir=os.path.normpath(out / "runs" / f"seed{seed}" / variant),
        train_cases=spec["anatomy_train"],
        test_cases=spec["anatomy_test"],
    )
    settings.update(overrides)
    return TrainConfig.from_preset(PRESET, **settings)


def _train_one(config: dict[str, Any]) -> str:
    """Train (or resume, or skip when finished) one run from its config dict; returns its folder."""
    run_dir = Path(config["run_dir"])
    state = run_state(run_dir)
    if state == "partial":
        resume_run(run_dir, progress=False)
    elif state == "new":
        train(TrainConfig.from_dict(config))
    return str(run_dir)


def _recorded_config(config: dict[str, Any], out: Path) -> dict[str, Any]:
    rec = dict(config)
    for key in PATH_FIELDS:
        if rec.get(key) is not None:
            rec[key] = os.path.relpath(rec[key], out)
    for key in DISPLAY_FIELDS:
        rec.pop(key, None)
    return rec


def run_reference(
    out: str | os.PathLike = "runs/reference",
    *,
    labels: str | os.PathLike | None = None,
    record: str | os.PathLike | None = RECORD_DIR,
    seeds: Sequence[int] = SEEDS,
    variants: Sequence[str] = VARIANTS,
    jobs: int = JOBS,
    overrides: dict[str, Any] | None = None,
    data_options: dict[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Run the reference: data → cache → every (seed, network) run → predictions → votes → Dice.

    Re-running is cheap: finished runs are skipped, unfinished ones resume, predictions are reused.

    Args:
        out: the working folder (data, cache, runs with checkpoints, predictions).
        labels: the KiTS19 segmentations (``kitsmsan download --labels-only``); default
            ``$KITSMSAN_LABELS``. Required: the reference runs on real-anatomy phantoms.
        record: the folder the result files are written to (default ``book/data/reference``);
            ``None`` writes none.
        seeds: training seeds (default :data:`SEEDS`).
        variants: networks (default all five; the vote is the "Ensembled Model" only with all five).
        jobs: runs trained at a time, one thread each (default :data:`JOBS`).
        overrides: :class:`~kitsmsan.train.config.TrainConfig` changes for every run (tests shrink
            the run with these; the provenance records them and :func:`check_record` refuses such a
            record).
        data_options: changes to :data:`kitsmsan.reproduce.REPRODUCE_DATA` ``["cpu-reference"]``
            (likewise recorded).
        progress: print one line per finished run.
        overwrite: take over ``out`` or ``record`` folders that are not this command's (their
            files are kept, never deleted).

    Returns:
        ``{"per_case", "summary", "provenance"}`` paths in ``record`` (empty without a record).

    Raises:
        DataError: no labels folder, or labels missing the test cases.
        ConfigError: bad seeds, variants, jobs or overrides.
    """
    t_start = time.perf_counter()
    seeds, variants = [int(s) for s in seeds], list(variants)
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"seeds: need distinct non-negative seeds, got {seeds}")
    if not variants or any(v not in VARIANTS for v in variants) or len(set(variants)) != len(variants):
        raise ConfigError(f"variants: need distinct networks from {', '.join(VARIANTS)}, got {variants}")
    if not 1 <= int(jobs) <= 64:
        raise ConfigError(f"jobs: must be between 1 and 64, got {jobs}")
    overrides = dict(overrides or {})
    for key in ("variant", "seed", *PATH_FIELDS, "train_cases", "test_cases"):
        if key in overrides:
            raise ConfigError(f"overrides: {key!r} is set by the reference run itself")
    for variant in variants:  # bad overrides fail before any data is written
        reference_config(variant, seeds[0], out, **overrides).check_model()
    labels_root = labels_root_from_env(labels)
    if labels_root is None:
        raise DataError(
            "reference: needs the KiTS19 segmentations (--labels DIR or KITSMSAN_LABELS); get them with "
            "'kitsmsan download --root kits19/data --labels-only'"
        )
    unknown = sorted(set(data_options or {}) - set(REPRODUCE_DATA[PRESET]))
    if unknown:
        raise ConfigError(
            f"data_options: unknown key {unknown[0]!r} (known: {', '.join(REPRODUCE_DATA[PRESET])})"
        )
    spec = {**REPRODUCE_DATA[PRESET], **(data_options or {})}
    out = claim_output_dir(out, "reference", command="reference", overwrite=overwrite)
    record_dir = None
    if record is not None:
        record_dir = claim_output_dir(record, "reference record", command="reference", overwrite=overwrite)
    info = make_data(PRESET, out, labels=labels_root, data=None, progress=False, spec=spec)
    data_root = Path(info["root"])
    split = split_cases(list_cases(data_root), train=spec["anatomy_train"], test=spec["anatomy_test"])
    if not split["train"] or not split["test"]:
        raise DataError(
            f"{data_root}: no cases in train {spec['anatomy_train']!r} or test {spec['anatomy_test']!r}"
        )
    prepare_cache(data_root, out / "cache", case_ids=split["train"] + split["test"], progress=False)
    t_data = time.perf_counter() - t_start

    def config_for(seed: int, variant: str) -> TrainConfig:
        return reference_config(
            variant,
            seed,
            out,
            train_cases=spec["anatomy_train"],
            test_cases=spec["anatomy_test"],
            progress=False,
            **overrides,
        )

    configs = {(s, v): config_for(s, v).to_dict() for s in seeds for v in variants}
    t_train = time.perf_counter()
    # slowest first, so the last job to start is a short one
    order = sorted(configs, key=lambda sv: (-("msan_v2" in sv[1]), -("_ds" in sv[1]), sv[0]))
    with ProcessPoolExecutor(max_workers=int(jobs), mp_context=get_context("spawn")) as pool:
        futures = {key: pool.submit(_train_one, configs[key]) for key in order}
        for key in order:
            futures[key].result()
            if progress:
                print(
                    f"reference: trained {run_name(*key)} [{time.perf_counter() - t_train:.0f} s]", flush=True
                )
    t_train = time.perf_counter() - t_train

    t_pred = time.perf_counter()
    frames = []
    for seed in seeds:
        runs, preds = out / "runs" / f"seed{seed}", out / "predictions" / f"seed{seed}"
        vote = predict_and_vote(
            variants,
            runs,
            preds,
            data_root,
            split["test"],
            num_slices=configs[(seed, variants[0])]["num_slices"],
            device="cpu",
            progress=False,
            save_probs=True,
        )
        keys = [*variants]
        if vote:  # the paper's vote, and the two named alternatives beside it
            keys.append(vote)
            for key, method, rule in (
                (f"{vote}_plurality", "vote", "plurality"),
                (f"{vote}_average", "average", "nested"),
            ):
                ensemble_folders(
                    [preds / v for v in variants],
                    preds / key,
                    method=method,
                    rule=rule,
                    cases=split["test"],
                    postprocess=0,
                    log=None,
                )
                keys.append(key)
        for key in keys:
            for k in (0, 1, 2):
                df = evaluate_folder(preds / key, data_root, case_ids=split["test"], postprocess=k)
                df.insert(0, "model", key)
                df.insert(0, "seed", seed)
                frames.append(df)
    per_case = pd.concat(frames, ignore_index=True)
    t_pred = time.perf_counter() - t_pred
    if record_dir is None:
        return {}

    summary = summarize(per_case, by=["seed", "model", "postprocess"]).reset_index()
    env = environment("cpu")
    runs_info = {}
    for (seed, variant), config in configs.items():
        run = Path(config["run_dir"])
        done = json.loads((run / SUMMARY_FILE).read_text(encoding="utf-8"))
        runs_info[run_name(seed, variant)] = {
            "iterations": int(done["iterations"]),
            "seconds": round(float(done["seconds"]), 1),
        }
        atomic_write_json(
            record_dir / "configs" / f"{run_name(seed, variant)}.json", _recorded_config(config, out)
        )
        atomic_write_text(
            record_dir / "metrics" / f"{run_name(seed, variant)}.jsonl",
            (run / "metrics.jsonl").read_text(encoding="utf-8"),
        )
    provenance = {
        "preset": PRESET,
        "command": COMMAND,
        "data_kind": info["kind"],
        "data": spec,
        "train_cases": spec["anatomy_train"],
        "test_cases": spec["anatomy_test"],
        "num_train_cases": len(split["train"]),
        "num_test_cases": len(split["test"]),
        "test_case_ids": split["test"],
        "seeds": seeds,
        "variants": variants,
        "vote": vote_key(variants) if len(variants) > 1 else None,
        "jobs": int(jobs),
        "overrides": overrides,
        "data_options": dict(data_options or {}),
        "headline_postprocess": POSTPROCESS_K,
        "runs": runs_info,
        "data_seconds": round(t_data, 1),
        "train_seconds": round(t_train, 1),
        "predict_seconds": round(t_pred, 1),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "cpu_count": os.cpu_count(),
        "hardware": env["device"],
        "platform": env["platform"],
        "commit": env["commit"],
        "torch": env["torch"],
        "kitsmsan": env["kitsmsan"],
        "checkpoint": "last (no checkpoint, threshold or setting is chosen on the test cases)",
        "attribution": ATTRIBUTION,
    }
    paths = {
        "per_case": record_dir / "per_case.csv",
        "summary": record_dir / "summary.csv",
        "provenance": record_dir / "provenance.json",
    }
    atomic_write_text(paths["per_case"], per_case.to_csv(index=False, float_format="%.6f"))
    atomic_write_text(paths["summary"], summary.to_csv(index=False, float_format="%.6f"))
    atomic_write_json(paths["provenance"], provenance)
    return paths


# --------------------------------------------------------------------------------------------
# reading a record, and checking it against the preset
# --------------------------------------------------------------------------------------------


class Reference:
    """A reference record read back (:func:`load_reference`).

    Attributes:
        root: the record folder.
        per_case: the per-case table (``seed, model, postprocess, case_id, kidney, tumor, ...``).
        summary: mean Dice per seed, model and post-processing.
        provenance: the recipe, data, hardware, commit and wall times.
        configs: ``{"seed<S>_<variant>": config dict}``.
    """

    def __init__(
        self, root: Path, per_case: pd.DataFrame, summary: pd.DataFrame, provenance: dict, configs: dict
    ):
        self.root, self.per_case, self.summary = root, per_case, summary
        self.provenance, self.configs = provenance, configs

    @property
    def seeds(self) -> list[int]:
        return list(self.provenance["seeds"])

    @property
    def variants(self) -> list[str]:
        return list(self.provenance["variants"])

    @property
    def num_iters(self) -> int:
        return int(next(iter(self.configs.values()))["num_iters"])

    def cases(self, k: int = POSTPROCESS_K, seed: int | None = None) -> pd.DataFrame:
        """Per-case rows with ``k`` components kept, of one seed, or averaged over the seeds (default).

        Averaging a case's Dice over the seeds gives one number per (model, case): the paired
        comparisons then resample cases with the seed-to-seed variation averaged out of each.
        """
        rows = self.per_case[self.per_case["postprocess"] == k]
        if seed is not None:
            return rows[rows["seed"] == seed].drop(columns="seed").reset_index(drop=True)
        ok = rows[rows["status"] == "ok"]
        mean = ok.groupby(["model", "case_id"], sort=False)[["kidney", "tumor", "composite"]].mean()
        mean = mean.reset_index()
        mean["postprocess"], mean["status"] = k, "ok"
        return mean

    def seed_summary(self, k: int = POSTPROCESS_K) -> pd.DataFrame:
        """Mean Dice of every (seed, model) with ``k`` components kept."""
        s = self.summary[self.summary["postprocess"] == k]
        return s.reset_index(drop=True)

    def target_sentence(self, k: int = POSTPROCESS_K) -> str:
        """Whether the seeds' mean vote reached :data:`TARGET`, region by region, as one sentence.

        Returns:
            e.g. ``"The seeds' mean vote scores kidney 92.3 % (target 90 %: reached) and tumour
            47.3 % (target 50 %: not reached, 2.7 points short)."``; an empty string without a vote.
        """
        vote = self.provenance.get("vote")
        rows = self.seed_summary(k)
        rows = rows[rows["model"] == vote]
        if rows.empty:
            return ""
        parts = []
        for region, target in TARGET.items():
            value = float(rows[region].mean())
            status = (
                "reached" if value >= target else f"not reached, {100 * (target - value):.1f} points short"
            )
            name = "tumour" if region == "tumor" else region
            parts.append(f"{name} {100 * value:.1f} % (target {100 * target:.0f} %: {status})")
        goal = ", ".join(f"{100 * t:.0f} % ({'tumour' if r == 'tumor' else r})" for r, t in TARGET.items())
        return (
            f"The run's target, set before it ran, is a vote of the five networks at a Dice of at least "
            f"{goal} — the level at which we call its networks trained. The seeds' mean vote scores "
            f"{' and '.join(parts)}."
        )

    def describe(self) -> str:
        """One line: data kind, cases, iterations, seeds, hardware, commit, wall time."""
        p = self.provenance
        return (
            f"{p['data_kind']}; train {p['train_cases']} ({p['num_train_cases']} cases), test "
            f"{p['test_cases']} ({p['num_test_cases']} cases); {self.num_iters:,} iterations per run; "
            f"seeds {', '.join(map(str, self.seeds))}; {p['hardware']}, {p['jobs']} runs at a time; "
            f"{p['wall_seconds'] / 60:.0f} min in all; commit {p['commit']}"
        )


def load_reference(record: str | os.PathLike = RECORD_DIR) -> Reference:
    """Read a reference record (the committed one by default).

    Raises:
        DataError: a file of the record is missing or unreadable (named).
    """
    root = Path(record)
    try:
        per_case = pd.read_csv(root / "per_case.csv", dtype={"case_id": str})
        summary = pd.read_csv(root / "summary.csv")
        provenance = json.loads((root / "provenance.json").read_text(encoding="utf-8"))
        configs = {
            p.stem: json.loads(p.read_text(encoding="utf-8"))
            for p in sorted((root / "configs").glob("*.json"))
        }
    except (OSError, ValueError) as exc:
        raise DataError(f"{root}: not a readable reference record ({exc})") from exc
    return Reference(root, per_case, summary, provenance, configs)


def check_record(record: str | os.PathLike = RECORD_DIR) -> list[str]:
    """What differs between a record and what ``kitsmsan reference`` would run today.

    Compares every recorded run config with :func:`reference_config` of its seed and network, the
    recorded data settings with :data:`kitsmsan.reproduce.REPRODUCE_DATA` ``["cpu-reference"]``, and the seeds and
    networks with :data:`SEEDS` and all five; a record made with overrides is stale by definition.

    Returns:
        One line per difference; empty when the record is what the preset produces.
    """
    ref = load_reference(record)
    p = ref.provenance
    problems = []
    if p.get("preset") != PRESET:
        problems.append(f"preset: recorded {p.get('preset')!r}, expected {PRESET!r}")
    if p.get("overrides") or p.get("data_options"):
        problems.append(f"made with overrides {p.get('overrides')} / data options {p.get('data_options')}")
    if list(p.get("seeds", [])) != list(SEEDS):
        problems.append(f"seeds: recorded {p.get('seeds')}, expected {list(SEEDS)}")
    if list(p.get("variants", [])) != list(VARIANTS):
        problems.append(f"variants: recorded {p.get('variants')}, expected {list(VARIANTS)}")
    if p.get("data") != REPRODUCE_DATA[PRESET]:
        problems.append(f"data: recorded {p.get('data')}, preset gives {REPRODUCE_DATA[PRESET]}")
    expected = {run_name(s, v) for s in SEEDS for v in VARIANTS}
    if set(ref.configs) != expected:
        problems.append(f"configs: recorded {sorted(ref.configs)}, expected {sorted(expected)}")
    for name, recorded in ref.configs.items():
        today = _recorded_config(
            reference_config(recorded.get("variant", ""), int(recorded.get("seed", -1))).to_dict(), Path(".")
        )
        for key in sorted(set(today) | set(recorded)):
            if today.get(key) != recorded.get(key):
                problems.append(
                    f"{name}: {key} recorded {recorded.get(key)!r}, preset gives {today.get(key)!r}"
                )
    return problems
