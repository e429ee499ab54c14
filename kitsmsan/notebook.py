"""What the book's notebooks share: the page's data, the trained runs, and small scoring helpers.

Every notebook of ``notebooks/`` starts the same way — find the repository root, write or find the
data, split it, build the training cache — and the results pages load the five trained runs. Those
steps live here, once, so each notebook cell shows what its page teaches::

    page = page_data(smoke=True, work_dir="data/book")            # phantoms, split, cache
    runs = load_runs("runs/book", "unet3d,msan_v1", page)          # {variant: config, summary, env}
    config = train_config(page, "msan_v1", "runs/book/msan_v1")    # the TrainConfig a page trains with
    preds = predict_cases(runs.models["msan_v1"], cases)            # {case_id: label map}
    compare_arms({"a": preds_a, "b": preds_b}, cases, [("a", "b")])  # paired bootstrap, with sentences

The data comes from :func:`kitsmsan.reproduce.make_data`, the same data as ``kitsmsan reproduce``:
pure phantoms, label-conditioned phantoms when real KiTS19 segmentations are available
(``labels_dir`` or ``$KITSMSAN_LABELS``), or a KiTS19-layout folder named by ``data_root`` (KiTS19
imaging on a GPU).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kitsmsan.data.dataset import split_cases
from kitsmsan.data.kits19 import list_cases
from kitsmsan.data.preprocess import CacheIndex, prepare_cache
from kitsmsan.errors import ConfigError, DataError
from kitsmsan.inference import load_model, predict_case
from kitsmsan.metrics import dice_table, kits_dice, summarize
from kitsmsan.postprocess import keep_largest_components
from kitsmsan.reference import COMMAND, Reference, load_reference
from kitsmsan.reproduce import MODEL_NAMES, PAPER_TABLE1, POSTPROCESS_K, labels_root_from_env, make_data
from kitsmsan.train import TrainConfig, train
from kitsmsan.train.loop import run_state
from kitsmsan.train.runlock import changed_run_settings
from kitsmsan.uncertainty import ci_table, paired_table, seed_table

__all__ = [
    "PageData",
    "TrainedRuns",
    "bullets",
    "case_scores",
    "ci_points",
    "compare_arms",
    "load_runs",
    "mean_dice",
    "page_data",
    "page_root",
    "postprocess",
    "predict_cases",
    "reference_comparisons",
    "reference_record",
    "reference_table1",
    "score_model",
    "to_plain",
    "train_config",
    "train_once",
]


def page_root(cwd: str | os.PathLike | None = None) -> Path:
    """The folder a notebook's relative paths start from: the repository root.

    papermill (the book) runs notebooks from the repository root; Jupyter and nbval run them from
    ``notebooks/``; Colab from ``/content``.

    Args:
        cwd: the working directory (default ``None``: :func:`os.getcwd`).

    Returns:
        The parent of ``cwd`` when ``cwd`` is a folder named ``notebooks``, else ``cwd`` itself.
    """
    cwd = Path(cwd if cwd is not None else os.getcwd())
    return cwd.parent if cwd.name == "notebooks" else cwd


@dataclass(frozen=True)
class PageData:
    """The data a notebook page works on (made by :func:`page_data`).

    Attributes:
        root: the repository root; every path a page prints is relative to it.
        data: the KiTS19-layout data folder.
        cache: the training cache folder (:func:`kitsmsan.data.preprocess.prepare_cache`).
        kind: what the data is, in words (``"pure phantoms"``, ``"KiTS19"``, ...); every figure says it.
        train_cases, test_cases: the split as case ranges (``"0-13"``), as :class:`TrainConfig` takes it.
        split: ``{"train": [case_id, ...], "test": [case_id, ...]}``.
        index: the cache's :class:`~kitsmsan.data.preprocess.CacheIndex`.
        smoke: whether the page runs the ``smoke`` preset (else ``paper``).
        seed: the page's seed.
    """

    root: Path
    data: Path
    cache: Path
    kind: str
    train_cases: str
    test_cases: str
    split: dict[str, list[str]]
    index: CacheIndex = field(repr=False)
    smoke: bool = True
    seed: int = 0

    @property
    def preset(self) -> str:
        """``"smoke"`` or ``"paper"``."""
        return "smoke" if self.smoke else "paper"

    def rel(self, path: str | os.PathLike) -> str:
        """``path`` relative to :attr:`root` (how pages print paths)."""
        return os.path.relpath(path, self.root)

    def describe(self) -> str:
        """One Markdown line: what the data is, where, and its split."""
        return (
            f"**Data on this page: {self.kind}** (`{self.rel(self.data)}`): {len(self.split['train'])} "
            f"training cases, {len(self.split['test'])} test cases ({', '.join(self.split['test'])})."
        )

    def _repr_markdown_(self) -> str:
        return self.describe()


def page_data(
    *,
    smoke: bool = True,
    work_dir: str = "data/book",
    data_root: str = "",
    labels_dir: str = "",
    cache_dir: str = "",
    train_cases: str = "",
    test_cases: str = "",
    seed: int = 0,
    root: str | os.PathLike | None = None,
) -> PageData:
    """Write or find a page's data, split it, build its cache and seed torch.

    The arguments are the notebooks' parameters of the same names (all strings: papermill passes
    primitives); an empty string means "the default".

    Args:
        smoke: ``True`` (default): the CPU demonstration on phantoms (``smoke`` preset); ``False``: the
            paper's settings, which need ``data_root`` (KiTS19).
        work_dir: phantoms are written to ``work_dir/data`` once, the cache to ``work_dir/cache``
            (default ``"data/book"``, relative to ``root``).
        data_root: an existing KiTS19-layout folder to use instead of phantoms (default ``""``: none).
        labels_dir: real KiTS19 segmentations, for label-conditioned phantoms (default ``""``:
            ``$KITSMSAN_LABELS``, else pure phantoms); ignored when ``data_root`` is given.
        cache_dir: the cache folder (default ``""``: ``work_dir/cache``).
        train_cases, test_cases: case ranges (default ``""``: the split that comes with the data —
            phantoms 0-13 / 14-33, KiTS19 0-179 / 180-189 as in the paper, §3.1).
        seed: passed to :func:`torch.manual_seed` (default 0).
        root: where relative paths start (default ``None``: :func:`page_root`).

    Returns:
        The :class:`PageData`; displayed in a notebook it prints :meth:`PageData.describe`.

    Raises:
        ConfigError: ``smoke=False`` without ``data_root``.
        DataError: a named folder does not exist or holds no cases.
    """
    base = Path(root) if root is not None else page_root()
    work = base / work_dir
    info = make_data(
        "smoke" if smoke else "paper",
        work,
        data=base / data_root if data_root else None,
        labels=None if data_root else labels_root_from_env(labels_dir or None),
        progress=False,
    )
    data = Path(info["root"])
    cache = base / cache_dir if cache_dir else work / "cache"
    train_range, test_range = train_cases or info["train"], test_cases or info["test"]
    split = split_cases(list_cases(data), train=train_range, test=test_range)
    index = prepare_cache(data, cache, case_ids=split["train"] + split["test"], progress=False)
    torch.manual_seed(seed)
    return PageData(
        root=base,
        data=data,
        cache=cache,
        kind=info["kind"],
        train_cases=train_range,
        test_cases=test_range,
        split=split,
        index=index,
        smoke=smoke,
        seed=seed,
    )


def train_config(
    page: PageData,
    variant: str,
    run_dir: str | os.PathLike,
    *,
    num_iters: int = 0,
    eval_every: int = 0,
    device: str = "",
    **overrides: Any,
) -> TrainConfig:
    """The :class:`TrainConfig` a page trains ``variant`` with: its preset on its data and split.

    Args:
        page: the page's data (:func:`page_data`).
        variant: ``unet3d``, ``msan_v1``, ``msan_v1_ds``, ``msan_v2`` or ``msan_v2_ds``.
        run_dir: the run folder.
        num_iters: iterations (default 0: as the preset — smoke 400, paper 400,000, §3.1).
        eval_every: validation every N iterations (default 0: as the preset).
        device: ``cpu``, ``cuda`` or ``auto`` (default ``""``: as the preset — smoke cpu, paper auto).
        **overrides: any other :class:`TrainConfig` field.

    Returns:
        ``TrainConfig.from_preset(page.preset, ...)``.
    """
    chosen = {
        k: v for k, v in (("num_iters", num_iters), ("eval_every", eval_every), ("device", device)) if v
    }
    return TrainConfig.from_preset(
        page.preset,
        variant=variant,
        data_root=str(page.data),
        cache_dir=str(page.cache),
        run_dir=str(run_dir),
        train_cases=page.train_cases,
        test_cases=page.test_cases,
        seed=page.seed,
        **chosen,
        **overrides,
    )


class TrainedRuns(Mapping):
    """The finished runs of a results page: ``runs[variant]`` is ``{"config", "summary", "env"}``.

    The three dicts are the run folder's ``config.json``, ``summary.json`` and ``env.json``
    (results are files: reading them never trains).

    Attributes:
        root: the folder holding ``<root>/<variant>``.
        variants: the variants, in order.
        models: ``{variant: model}`` from each run's last checkpoint, in eval mode, when loaded
            (``load_runs(..., models=True)``); else empty.
    """

    def __init__(self, root: Path, info: dict[str, dict[str, Any]], models: dict[str, torch.nn.Module]):
        self.root = root
        self._info = info
        self.variants = list(info)
        self.models = models

    def __getitem__(self, variant: str) -> dict[str, Any]:
        return self._info[variant]

    def __iter__(self) -> Iterator[str]:
        return iter(self._info)

    def __len__(self) -> int:
        return len(self._info)

    def table(self, root: str | os.PathLike | None = None) -> pd.DataFrame:
        """One row per run: iterations, training seconds, device, commit and folder (relative to ``root``)."""
        start = root if root is not None else self.root
        return pd.DataFrame(
            [
                {
                    "variant": v,
                    "iterations": r["summary"]["iterations"],
                    "train seconds": r["summary"]["seconds"],
                    "device": r["env"].get("device"),
                    "commit": r["env"].get("commit"),
                    "run folder": os.path.relpath(self.root / v, start),
                }
                for v, r in self.items()
            ]
        ).set_index("variant")


def _read_run(run: Path) -> dict[str, Any]:
    out = {}
    for key in ("config", "summary", "env"):
        path = run / f"{key}.json"
        try:
            out[key] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read the run's {key} ({exc})") from None
    return out


def load_runs(
    runs_dir: str | os.PathLike,
    variants: str,
    page: PageData,
    *,
    train_missing: bool = True,
    missing_iters: int = 0,
    eval_every: int = 0,
    device: str = "cpu",
    models: bool = True,
) -> TrainedRuns:
    """The finished runs ``<runs_dir>/<variant>`` of a results page, trained first where missing if allowed.

    Args:
        runs_dir: the folder of the run folders, relative to ``page.root`` (or absolute).
        variants: comma-separated variants (``"unet3d,msan_v1,msan_v1_ds,msan_v2,msan_v2_ds"``).
        page: the page's data (:func:`page_data`); a missing run is trained on it.
        train_missing: train a missing or unfinished run (default ``True``: what a reader running the
            notebook on its own needs); ``False`` (the book) makes a missing run an error.
        missing_iters: iterations of such a run (default 0: as the preset, the same runs as the
            training chapter's).
        eval_every: validation every N iterations of such a run (default 0: as the preset).
        device: where to load (and train) the models (default ``"cpu"``; ``"auto"`` loads on the CPU).
        models: load each run's last checkpoint into :attr:`TrainedRuns.models` (default ``True``).
            The last checkpoint: the test cases never choose a checkpoint (as ``kitsmsan reproduce``).

    Returns:
        The :class:`TrainedRuns`.

    Raises:
        ConfigError: ``variants`` names no variant.
        DataError: a run is missing and ``train_missing`` is ``False`` (the message says how to make it).
    """
    root = page.root / runs_dir
    names = [v.strip() for v in variants.split(",") if v.strip()]
    if not names:
        raise ConfigError(f"variants={variants!r}: names no variant")
    missing = [v for v in names if run_state(root / v) != "done"]
    if missing and not train_missing:
        raise DataError(
            f"{root}: no finished run for {', '.join(missing)}. Make them with the training notebook "
            f"(03_training_compared.ipynb trains all five), `make book`, or for each variant: "
            f"kitsmsan train --variant VARIANT --data {page.rel(page.data)} --cache {page.rel(page.cache)} "
            f"--out {runs_dir}"
        )
    for v in missing:
        config = train_config(
            page, v, root / v, num_iters=missing_iters, eval_every=eval_every, device=device, progress=False
        )
        print(
            f"{page.rel(root / v)}: no finished run; training it now ({config.num_iters} iterations, "
            "train_missing=True)"
        )
        train(config, resume=True)
    info = {v: _read_run(root / v) for v in names}
    where = device if device not in ("", "auto") else "cpu"
    loaded = {v: load_model(root / v, device=where, checkpoint="last") for v in names} if models else {}
    return TrainedRuns(root, info, loaded)


def train_once(
    config: TrainConfig,
    run_dir: str | os.PathLike | None = None,
    *,
    root: str | os.PathLike | None = None,
    **changes: Any,
) -> torch.nn.Module:
    """Train a run unless it is finished (an interrupted run continues); return its model.

    A run folder that holds a run of other settings (a different learning rate, length, network ...,
    :func:`kitsmsan.train.runlock.changed_run_settings`) is refused, never silently reused.

    Re-running a page therefore reuses its extra runs (the ablations) instead of training them again.

    Args:
        config: the recipe.
        run_dir: the run folder (default ``None``: ``config.run_dir``).
        root: printed paths are relative to it (default ``None``: :func:`page_root`).
        **changes: other :class:`TrainConfig` fields changed for this run (``variant=...``).

    Returns:
        The model of the run's last checkpoint, on the CPU, in eval mode.
    """
    if run_dir is not None:
        changes["run_dir"] = str(run_dir)
    config = config.replace(**changes) if changes else config
    run = Path(config.run_dir)
    recorded = run / "config.json"
    if recorded.is_file():  # a run of other settings is never reused (nor resumed) in its place
        changed = changed_run_settings(json.loads(recorded.read_text(encoding="utf-8")), config)
        if changed:
            raise ConfigError(
                f"{run}: this run was made with other settings ({'; '.join(changed)}); "
                "choose another runs_dir (or remove that run folder) to train these"
            )
    if run_state(run) != "done":
        print(
            f"training {os.path.relpath(run, root if root is not None else page_root())} "
            f"({config.num_iters} iterations)"
        )
        train(config, resume=True)
    return load_model(run, checkpoint="last")


def postprocess(label: np.ndarray, k: int | None) -> np.ndarray:
    """Keep the ``k`` largest connected components of the kidney region (§3.1); ``k=None`` keeps all.

    Args:
        label: a label map ``(D, H, W)`` in {0, 1, 2}.
        k: components kept (the paper: 1; the book's headline: 2), or ``None`` for no post-processing.

    Returns:
        ``label`` itself when ``k`` is ``None``, else
        :func:`kitsmsan.postprocess.keep_largest_components` of it.
    """
    return label if k is None else keep_largest_components(label, num_components=k)


def predict_cases(
    model: torch.nn.Module, cases: Mapping[str, Any], num_slices: int = 4, *, return_probs: bool = False
) -> dict[str, np.ndarray]:
    """Predict every case with ``model`` (no post-processing), as the results pages do (§3.1).

    Args:
        model: a network mapping ``(B, 1, num_slices, H, W)`` to logits.
        cases: ``{case_id: Case}`` (:func:`kitsmsan.data.kits19.load_case`); only ``.image`` is read.
        num_slices: the window depth the model was trained with (default 4, §3.1); windows overlap
            by half (stride ``min(2, num_slices)``).
        return_probs: return softmax probabilities ``(C, D, H, W)`` instead of label maps (default
            ``False``), for probability averaging.

    Returns:
        ``{case_id: label map (D, H, W)}`` (uint8) in the order of ``cases``, or probabilities.
    """
    return {
        cid: predict_case(
            model, c.image, num_slices=num_slices, stride=min(2, num_slices), return_probs=return_probs
        )
        for cid, c in cases.items()
    }


def case_scores(preds: Mapping[str, np.ndarray], truth: Mapping[str, Any], **columns: Any) -> pd.DataFrame:
    """The per-case KiTS19 Dice table of ``{case_id: label map}`` (kidney region, tumour, composite).

    Args:
        preds: ``{case_id: predicted label map (D, H, W)}``.
        truth: ``{case_id: ground truth}``; each value a label map or a :class:`kitsmsan.data.kits19.Case`.
        **columns: constant columns added to every row (``model="msan_v1"``, ``postprocess=2``,
            ``arm="vote"``).

    Returns:
        :func:`kitsmsan.metrics.dice_table` of :func:`kitsmsan.metrics.kits_dice` per case, one row per
        case of ``preds`` in its order.

    Raises:
        DataError: a case of ``preds`` has no ground truth in ``truth``.
    """
    missing = [cid for cid in preds if cid not in truth]
    if missing:
        raise DataError(f"case_scores: no ground truth for {', '.join(missing)}")
    return dice_table(
        [
            {"case_id": cid, **kits_dice(p, getattr(truth[cid], "label", truth[cid])), **columns}
            for cid, p in preds.items()
        ]
    )


def mean_dice(preds: Mapping[str, np.ndarray], truth: Mapping[str, Any]) -> dict[str, float]:
    """Mean kidney and tumour Dice (KiTS19 regions) of ``{case_id: label map}`` over the cases.

    Args:
        preds: ``{case_id: predicted label map (D, H, W)}``.
        truth: ``{case_id: ground truth}``; each value a label map or a :class:`kitsmsan.data.kits19.Case`.

    Returns:
        ``{"kidney": mean Dice, "tumor": mean Dice}`` of :func:`case_scores`, as
        :func:`kitsmsan.metrics.summarize` averages them (NaN cases skipped).
    """
    s = summarize(case_scores(preds, truth))
    return {"kidney": float(s["kidney"].iloc[0]), "tumor": float(s["tumor"].iloc[0])}


def score_model(model: torch.nn.Module, cases: Mapping[str, Any], *, num_slices: int = 4) -> dict[str, float]:
    """Predict every case with ``model`` and return the mean kidney and tumour Dice (no post-processing).

    Args:
        model: a network mapping ``(B, 1, num_slices, H, W)`` to logits.
        cases: ``{case_id: Case}`` with image and label.
        num_slices: the window depth the model was trained with (default 4, §3.1).

    Returns:
        :func:`mean_dice` of :func:`predict_cases`.
    """
    return mean_dice(predict_cases(model, cases, num_slices), cases)


def compare_arms(
    arms: Mapping[str, Mapping[str, np.ndarray]],
    truth: Mapping[str, Any],
    pairs: Sequence[tuple[str, str]],
    **options: Any,
) -> pd.DataFrame:
    """Paired bootstrap intervals of ``a − b`` for pairs of arms predicted on the same cases.

    Args:
        arms: ``{arm name: {case_id: label map}}``, every arm on the same cases.
        truth: ``{case_id: ground truth}`` (label maps or cases).
        pairs: ``[(a, b), ...]`` arm names; each gives ``a − b`` per region.
        **options: passed to :func:`kitsmsan.uncertainty.paired_table` (``names``, ``n_resamples``
            (default 10,000), ``seed`` (default 0), ...).

    Returns:
        :func:`kitsmsan.uncertainty.paired_table` of the per-case tables (:func:`case_scores`) with
        ``by="arm"``: columns ``a, b, region, difference, low, high, n, verdict, sentence``.

    Raises:
        DataError: a pair names an arm not in ``arms``, or two arms were scored on different cases.
    """
    table = pd.concat(
        [case_scores(preds, truth, arm=name) for name, preds in arms.items()], ignore_index=True
    )
    return paired_table(table, pairs, by="arm", **options)


def ci_points(row: Mapping[str, Any], digits: int = 1) -> str:
    """A difference with its interval in Dice points: ``"+2.8 [+1.1, +4.6]"``.

    Args:
        row: a row of :func:`kitsmsan.uncertainty.paired_table` (``difference``, ``low``, ``high``
            as fractions).
        digits: decimals (default 1).
    """
    return (
        f"{100 * row['difference']:+.{digits}f} "
        f"[{100 * row['low']:+.{digits}f}, {100 * row['high']:+.{digits}f}]"
    )


def bullets(sentences: Any) -> str:
    """A Markdown bullet list, one item per sentence.

    Args:
        sentences: strings, or a :func:`kitsmsan.uncertainty.paired_table` (its ``sentence`` column).

    Returns:
        ``"* first\\n* second"`` (empty for no sentences).
    """
    if isinstance(sentences, pd.DataFrame):
        sentences = sentences["sentence"]
    return "\n".join(f"* {s}" for s in sentences)


def to_plain(obj: Any) -> Any:
    """Nested dicts of numbers (numpy scalars included) as plain JSON-ready dicts of floats."""
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, str):
        return obj
    return float(obj)


# --------------------------------------------------------------------------------------------
# the committed reference run (kitsmsan.reference), as the results pages show it
# --------------------------------------------------------------------------------------------


def reference_record(root: str | os.PathLike, reference_dir: str) -> Reference | None:
    """The reference record a results page compares on, or ``None`` (with one printed line why).

    Args:
        root: where relative paths start (:attr:`PageData.root`).
        reference_dir: the record folder (the pages' parameter; default there
            ``"book/data/reference"``); ``""`` skips the reference sections.

    Returns:
        :func:`kitsmsan.reference.load_reference` of ``root / reference_dir``; ``None`` when
        ``reference_dir`` is empty or holds no ``provenance.json`` (e.g. a notebook opened outside
        the repository), after printing where the record is expected and the command that makes it.

    Raises:
        DataError: the folder holds a record that cannot be read (the file is named).
    """
    if not reference_dir:
        print("reference_dir is empty: the reference sections are skipped")
        return None
    folder = Path(root) / reference_dir
    if not (folder / "provenance.json").is_file():
        print(
            f"{os.path.relpath(folder, root)}: no reference record there (the repository commits it under "
            f"book/data/reference; regenerate it with: {COMMAND}); the reference sections are skipped"
        )
        return None
    return load_reference(folder)


def _seed_difference(rows: pd.DataFrame, a: Any, b: Any, by: str, region: str) -> float:
    """Mean over the cases both define of ``a − b`` in one seed's rows (status ``"ok"`` only)."""
    if "status" in rows.columns:
        rows = rows[rows["status"] == "ok"]
    va = rows[rows[by] == a].set_index("case_id")[region]
    vb = rows[rows[by] == b].set_index("case_id")[region]
    diff = (pd.to_numeric(va, errors="coerce") - pd.to_numeric(vb, errors="coerce")).dropna()
    return float(diff.mean()) if len(diff) else float("nan")


def reference_comparisons(
    ref: Reference,
    pairs: Sequence[tuple[Any, Any]],
    *,
    by: str = "model",
    k: int = POSTPROCESS_K,
    model: str | None = None,
    names: Mapping[Any, str] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Paired comparisons ``a − b`` on a reference record, with how many training seeds agree.

    The interval is :func:`kitsmsan.uncertainty.paired_table` over the seed-averaged per-case Dice
    (:meth:`Reference.cases`: each case's Dice averaged over the seeds, so the cases are resampled
    with the seed-to-seed variation averaged out of each); beside it, each seed's own difference of
    the two means (over the cases both define) and how many of the seeds give it the sign of the
    seed-averaged difference.

    Args:
        ref: from :func:`reference_record` / :func:`kitsmsan.reference.load_reference`.
        pairs: ``(a, b)`` keys of ``by``: models (``("msan_v1", "unet3d")``) or post-processing
            levels (``(2, 1)``).
        by: ``"model"`` (default: every model with ``k`` components kept) or ``"postprocess"``
            (the levels 0, 1, 2 of one ``model``).
        k: components kept when ``by="model"`` (default :data:`kitsmsan.reproduce.POSTPROCESS_K` = 2).
        model: the model whose post-processing levels are compared (``by="postprocess"`` only).
        names: display names of the keys, for the sentences (default: the keys).
        **options: passed to :func:`kitsmsan.uncertainty.paired_table` (``n_resamples``, ``seed``, ...).

    Returns:
        :func:`kitsmsan.uncertainty.paired_table`'s columns (``a, b, region, difference, low, high, n,
        verdict, sentence``) plus ``seed_differences`` (a tuple, one per seed, fractions),
        ``seeds_agree``, ``n_seeds`` and ``seeds`` (``"2 of 3"``, or ``"identical in all 3"`` when
        every seed gives exactly no difference: such a row agrees in no sign); each sentence ends with the seeds' count, e.g. "3 of 3
        points (3 of 3 training seeds with the same sign)."

    Raises:
        ConfigError: ``by`` is neither ``"model"`` nor ``"postprocess"``, or ``by="postprocess"``
            without ``model``.
        DataError: a key is absent from the record (from ``paired_table``).
    """
    if by == "model":
        averaged = ref.cases(k)
        per_seed = {s: ref.cases(k, seed=s) for s in ref.seeds}
    elif by == "postprocess":
        if model is None:
            raise ConfigError(
                "reference_comparisons: by='postprocess' needs the model whose levels to compare"
            )
        averaged = pd.concat([ref.cases(level) for level in (0, 1, 2)], ignore_index=True)
        averaged = averaged[averaged["model"] == model]
        per_seed = {}
        for s in ref.seeds:
            rows = pd.concat([ref.cases(level, seed=s) for level in (0, 1, 2)], ignore_index=True)
            per_seed[s] = rows[rows["model"] == model]
    else:
        raise ConfigError(f"reference_comparisons: by={by!r}; expected 'model' or 'postprocess'")
    table = paired_table(averaged, pairs, by=by, names=names, **options)
    diffs, agree, seeds, sentences = [], [], [], []
    n = len(ref.seeds)
    for _, row in table.iterrows():
        ds = tuple(_seed_difference(per_seed[s], row["a"], row["b"], by, row["region"]) for s in ref.seeds)
        diffs.append(ds)
        if row["difference"] == 0 and all(d == 0 for d in ds):
            # no difference has no sign: such a row counts among no "seeds agree" tally
            agree.append(0)
            seeds.append(f"identical in all {n}")
            sentences.append(f"{row['sentence']} The same in every training seed.")
            continue
        m = sum(1 for d in ds if np.sign(d) == np.sign(row["difference"]) != 0)
        agree.append(m)
        seeds.append(f"{m} of {n}")
        sentences.append(
            f"{row['sentence']} Seed by seed: "
            + ", ".join(f"{100 * d:+.1f}" for d in ds)
            + f" points ({m} of {n} training seeds with the same sign)."
        )
    table["seed_differences"] = diffs
    table["seeds_agree"] = agree
    table["n_seeds"] = n
    table["seeds"] = seeds
    table["sentence"] = sentences
    return table


def reference_table1(ref: Reference, k: int = POSTPROCESS_K, *, digits: int = 1) -> str:
    """The Table 1 analogue of a reference record, beside the paper's KiTS19 column, as Markdown.

    Per model (the networks of the record, then its vote): the paper's Dice on its ten KiTS19 test
    cases (MSAN paper, Table 1; "—" where it has no row), the record's mean ± SD over the training
    seeds (:func:`kitsmsan.uncertainty.seed_table` of :meth:`Reference.seed_summary`), and the 95 %
    bootstrap interval over the seed-averaged per-case Dice (:func:`kitsmsan.uncertainty.ci_table`
    of :meth:`Reference.cases`). All in percent; the header names the record's data kind.

    Args:
        ref: the record.
        k: components kept (default 2).
        digits: decimals of the record's columns (default 1).
    """
    seeds = seed_table(ref.seed_summary(k))
    ci = ci_table(ref.cases(k))
    kind, n_seeds = ref.provenance["data_kind"], len(ref.seeds)
    vote = ref.provenance.get("vote")
    models = [m for m in [*ref.variants, vote] if m and m in seeds.index]

    def pct(x: float) -> str:
        return f"{100 * x:.{digits}f}"

    head = (
        f"| model | kidney, paper (KiTS19) | kidney, ours: mean ± SD ({n_seeds} seeds) | kidney, ours: 95 % CI "
        f"| tumour, paper (KiTS19) | tumour, ours: mean ± SD ({n_seeds} seeds) | tumour, ours: 95 % CI | cases |"
    )
    lines = [
        f"**Dice (%), k = {k}: the paper on KiTS19 beside ours on {kind}** (ours: mean ± SD over the "
        "seeds of each seed's mean; 95 % CI: percentile bootstrap over the cases of the seed-averaged "
        "per-case Dice)",
        "",
        head,
        "|---|" + "---:|" * 7,
    ]
    for m in models:
        paper, s, c = PAPER_TABLE1.get(m), seeds.loc[m], ci.loc[m]
        cells = []
        for region in ("kidney", "tumor"):
            cells += [
                "—" if paper is None else f"{paper[region]:.2f}",
                f"{pct(s[f'{region}_mean'])} ± {pct(s[f'{region}_sd'])}",
                f"[{pct(c[f'{region}_low'])}, {pct(c[f'{region}_high'])}]",
            ]
        n = max(int(c["kidney_n"]), int(c["tumor_n"]))
        lines.append(f"| {MODEL_NAMES.get(m, m)} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines) + "\n"
