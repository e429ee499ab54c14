"""The training configuration: one dataclass, two presets, strict validation.

The ``paper`` preset holds the paper's training recipe (MSAN paper, §3.1): windows of 4 axial slices of
512 × 512, batch 2, Dice loss, Adam with lr 1e-3 divided by 10 every 100,000 iterations, 400,000
iterations, deep supervision for the ``_ds`` variants — plus the settings the paper does not state
(foreground oversampling 0.5 / 0.25, background counted in the Dice loss, validation on the last
training cases, mixed precision, ...), each listed with its reason in :data:`PAPER_UNSTATED`. The
``smoke`` preset is the same recipe shrunk until it learns kidney on CPU phantoms in under a minute
per model.

A :class:`TrainConfig` is the only thing the training loop reads. It is saved as ``config.json`` in
every run folder and inside every checkpoint, so a run is self-describing and can be resumed or
re-evaluated from its folder alone (nanoGPT style).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kitsmsan.errors import ConfigError
from kitsmsan.models.registry import model_config
from kitsmsan.utils.amp import check_amp

#: the five networks of the paper's ensemble (MSAN paper, §3.1); kept here so a config can be
#: validated without importing torch. Checked against :func:`kitsmsan.models.list_models` too.
VARIANTS = ("unet3d", "msan_v1", "msan_v1_ds", "msan_v2", "msan_v2_ds")


@dataclass
class TrainConfig:
    """Everything one training run needs (MSAN paper, §3.1).

    Attributes:
        variant: network name, one of :data:`VARIANTS`. Default ``"msan_v1"``.
        data_root: KiTS19-layout data folder (``case_XXXXX/imaging.nii.gz``). Default ``None``
            (must be set before training).
        cache_dir: preprocessed cache made by :func:`kitsmsan.data.preprocess.prepare_cache`.
            Default ``None`` (then ``<data_root>/.kitsmsan-cache`` is not assumed: it must be set).
        run_dir: the run folder this run writes (config, metrics, checkpoints). Default ``None``.
        train_cases: case numbers to train on, as a range string. Default ``"0-179"`` (§2.1).
        test_cases: held-out case numbers, scored once after training (Table 1) and never used to
            choose a checkpoint, threshold or setting. Default ``"180-189"`` (§2.1).
        num_slices: axial slices per window. Default 4 (§3.1: "every 4 images").
        crop_size: in-plane crop (square) or ``None`` for the full slice. Default ``None``.
        fg_fraction: probability that a window contains kidney (foreground oversampling; the
            paper states none). Default 0.5.
        tumor_fraction: share of those foreground windows that contain tumour. Default 0.25.
        batch_size: windows per step and per process. Default 2 (§3.1).
        loss: ``"dice"`` (the paper's loss, §3.1). Default ``"dice"``.
        dice_include_background: count the background class in the Dice mean. Default ``True``
            (without it, a batch that holds no tumour gives no gradient against tumour false
            positives; see ``book/fragments/decisions-training.md``).
        lr: initial Adam learning rate. Default 1e-3 (§3.1).
        lr_step: iterations between learning-rate decays. Default 100,000 (§3.1).
        lr_gamma: the decay factor. Default 0.1 ("decrease ... by 10", §3.1).
        num_iters: total optimizer steps. Default 400,000 (§3.1). Must be > 0.
        deep_supervision: ``None`` follows the variant (on for ``_ds``), or force on/off.
        ds_weights: weights of the deep-supervision heads (full, aux1, aux2) or ``None`` for the
            loss module's default.
        model: extra keyword arguments for :func:`kitsmsan.models.build_model` (e.g. widths).
            Default ``{}`` (the package's paper-scale model).
        seed: seeds the model initialisation and the window sampler. Default 0.
        amp: mixed precision, one of :data:`kitsmsan.utils.amp.AMP_MODES`: ``"auto"`` (bf16 on GPUs
            that support it, else fp16; off on CPU), ``"on"`` (the same, bf16 on CPU too), ``"bf16"``,
            ``"fp16"`` or ``"off"``. Default ``"auto"``.
        channels_last: use the ``channels_last_3d`` memory format. Default ``True``.
        compile: wrap the model in :func:`torch.compile`. Default ``False``.
        cudnn_benchmark: let cuDNN pick the fastest kernels (GPU only). Default ``True``.
        deterministic: ask torch for deterministic kernels (slower on GPU). Default ``False``.
        ckpt_every: iterations between ``last.pt`` checkpoints. Default 1000.
        eval_every: iterations between validation Dice runs (0 = only at the end, if
            ``eval_cases`` > 0). Default 10,000.
        eval_cases: number of validation cases scored during training (0 = no validation): the
            last ``eval_cases`` cases of the training range (:func:`validation_cases`; 177–179 for
            the ``paper`` preset), still trained on — the score is a fit monitor and the choice of
            ``best.pt``, never a test-set number. Default 3.
        eval_stride: slice stride of the sliding window during validation. Default 2.
        log_every: iterations between ``metrics.jsonl`` rows (the only host syncs). Default 100.
        projection_after: iteration after which the projected time to finish is printed.
            Default 200.
        workers: data-loader processes (0 = load in the main process). Default 4.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: torch intra-op threads on CPU, 0 = torch's default. Default 0.
        progress: show the tqdm progress bar. Default ``True``.
    """

    variant: str = "msan_v1"
    data_root: str | None = None
    cache_dir: str | None = None
    run_dir: str | None = None
    train_cases: str = "0-179"
    test_cases: str = "180-189"
    num_slices: int = 4
    crop_size: int | None = None
    fg_fraction: float = 0.5
    tumor_fraction: float = 0.25
    batch_size: int = 2
    loss: str = "dice"
    dice_include_background: bool = True
    lr: float = 1e-3
    lr_step: int = 100_000
    lr_gamma: float = 0.1
    num_iters: int = 400_000
    deep_supervision: bool | None = None
    ds_weights: list | None = None
    model: dict = field(default_factory=dict)
    seed: int = 0
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    cudnn_benchmark: bool = True
    deterministic: bool = False
    ckpt_every: int = 1000
    eval_every: int = 10_000
    eval_cases: int = 3
    eval_stride: int = 2
    log_every: int = 100
    projection_after: int = 200
    workers: int = 4
    device: str = "auto"
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build a config from a plain dict (e.g. ``config.json``), refusing unknown keys.

        Args:
            data: key → value; keys must be field names.
            source: what to name in error messages (a file name, ``"--set"``). Default ``"config"``.

        Raises:
            ConfigError: unknown key, wrong type or out-of-range value, naming the key and value.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object of settings, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(names))})"
            )
        hints = typing.get_type_hints(cls)
        data = dict(data)
        for key in ("train_cases", "test_cases"):  # `--set test_cases=185` parses as an int
            if isinstance(data.get(key), int) and not isinstance(data[key], bool):
                data[key] = str(data[key])
        for key, value in data.items():
            _check_type(key, value, hints[key], source)
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """The named preset (a key of :data:`PRESETS`) with ``overrides`` applied.

        A ``model`` override is merged into the preset's ``model`` dict, so ``--set
        model.ds_placement=decoder`` changes that key and keeps the preset's ``base_channels``.

        Raises:
            ConfigError: unknown preset, or a bad override (named).
        """
        if name not in PRESETS:
            raise ConfigError(f"preset: unknown preset {name!r} (choose from {', '.join(PRESETS)})")
        data = copy.deepcopy(PRESETS[name])  # a config never shares the preset's model dict
        overrides = dict(overrides)
        if isinstance(overrides.get("model"), dict) and isinstance(data.get("model"), dict):
            overrides["model"] = {**data["model"], **overrides["model"]}
        data.update(overrides)
        return cls.from_dict(data, source=f"preset {name!r}")

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        """Read a config from a JSON file (a run folder's ``config.json``).

        Raises:
            ConfigError: unreadable or invalid JSON, or a bad setting, naming the file.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable JSON config ({exc})") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The config as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes`` applied (unknown keys refused)."""
        data = self.to_dict()
        data.update(changes)
        return type(self).from_dict(data, source="replace()")

    # ------------------------------------------------------------------ derived values
    @property
    def use_deep_supervision(self) -> bool:
        """Deep supervision on? Follows the variant name (``*_ds``) unless forced (§2.2)."""
        if self.deep_supervision is not None:
            return self.deep_supervision
        return self.variant.endswith("_ds")

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check ranges and enumerations.

        Raises:
            ConfigError: naming the offending key and value.
        """
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name], "config")

        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"config: {key}={getattr(self, key)!r} {why}")

        if self.variant not in VARIANTS:
            raise bad("variant", f"is not a known variant ({', '.join(VARIANTS)})")
        try:
            check_amp(self.amp)
        except ConfigError as exc:
            raise ConfigError(f"config: {exc}") from None
        if self.loss != "dice":
            raise bad("loss", "is not supported (only 'dice', the paper's loss)")
        for key in (
            "num_iters",
            "batch_size",
            "num_slices",
            "lr_step",
            "ckpt_every",
            "log_every",
            "eval_stride",
        ):
            if getattr(self, key) <= 0:
                raise bad(key, "must be a positive integer")
        for key in ("eval_every", "eval_cases", "workers", "seed", "threads", "projection_after"):
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        if self.crop_size is not None and self.crop_size <= 0:
            raise bad("crop_size", "must be a positive integer or None")
        if not self.lr > 0:
            raise bad("lr", "must be > 0")
        if not 0 < self.lr_gamma <= 1:
            raise bad("lr_gamma", "must be in (0, 1]")
        for key in ("fg_fraction", "tumor_fraction"):
            if not 0 <= getattr(self, key) <= 1:
                raise bad(key, "must be in [0, 1]")
        if self.ds_weights is not None and not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in self.ds_weights
        ):
            raise bad("ds_weights", "must be a list of non-negative numbers")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise bad("device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")

    def check_model(self) -> None:
        """Check ``model`` overrides against the variant's :class:`~kitsmsan.models.ModelConfig`.

        Resolves the network's config (no weights are allocated) so a misspelt ``model.<key>`` or a
        bad value fails before anything is written (cache, run folder). Kept apart from
        :meth:`validate`, which checks the fields alone, without building anything.

        Raises:
            ConfigError: naming the unknown or bad ``model.<key>``.
        """
        overrides = dict(self.model)
        if self.deep_supervision is not None:
            overrides["deep_supervision"] = self.deep_supervision
        try:
            model_config(self.variant, **overrides)
        except ConfigError as exc:
            raise ConfigError(f"config: model: {exc}") from None


def validation_cases(train_cases: list[str], eval_cases: int) -> list[str]:
    """The validation cases of a run: the last ``eval_cases`` of its (sorted) training cases.

    They come from the training range, never from the test range, so neither the validation curve
    nor the choice of ``best.pt`` ever sees a test case (the paper's 180–189 stay untouched until
    the final evaluation). They stay in the training set: the paper trains on all of 0–179 (§2.1)
    and states no validation split, so validation here monitors the fit and holds nothing out.

    Args:
        train_cases: the run's training case ids, sorted (``"case_XXXXX"``).
        eval_cases: how many to validate on (``TrainConfig.eval_cases``); 0 = none.

    Returns:
        ``train_cases[-eval_cases:]`` (all of them when there are fewer), or ``[]`` for 0.
    """
    if eval_cases <= 0:
        return []
    return list(train_cases)[-eval_cases:]


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``--set key=value`` strings into a dict of overrides.

    Values are read as JSON when they parse (``100``, ``1e-3``, ``true``, ``null``,
    ``{"base_channels": 8}``), else kept as strings (``amp=bf16``). A dotted key sets one entry of
    a dict field: ``model.base_channels=8`` → ``{"model": {"base_channels": 8}}``.

    Raises:
        ConfigError: an item without ``=`` or with an empty key, naming the item.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. num_iters=1000)")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if "." in key:
            head, _, sub = key.partition(".")
            if not isinstance(out.setdefault(head, {}), dict):
                raise ConfigError(f"--set {item!r}: {head!r} was already set to a non-dict value")
            out[head][sub] = value
        else:
            out[key] = value
    return out


def _check_type(key: str, value: Any, hint: Any, source: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` matches the annotation ``hint``."""
    if _matches(value, hint):
        return
    want = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
    raise ConfigError(
        f"{source}: {key}={value!r} has the wrong type ({type(value).__name__}; expected {want})"
    )


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an int is a fine float (lr=1 is lr=1.0)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (list, dict):
        return isinstance(value, hint)
    return isinstance(value, origin or hint)


#: the ``paper`` preset (also the base of ``colab``, which changes only what it lists)
PAPER_RECIPE: dict[str, Any] = dict(
    num_slices=4,
    crop_size=None,
    batch_size=2,
    loss="dice",
    lr=1e-3,
    lr_step=100_000,
    lr_gamma=0.1,
    num_iters=400_000,
    train_cases="0-179",
    test_cases="180-189",
    amp="auto",
    channels_last=True,
    compile=False,
    ckpt_every=1000,
    eval_every=10_000,
    eval_cases=3,
    log_every=100,
    projection_after=200,
    workers=4,
    device="auto",
    model={},
)

#: the ``smoke`` preset (also the base of ``cpu-reference``, which changes only what it lists)
SMOKE_RECIPE: dict[str, Any] = dict(
    num_slices=4,
    crop_size=None,
    batch_size=2,
    loss="dice",
    lr=3e-3,
    lr_step=300,
    lr_gamma=0.3,
    num_iters=400,
    train_cases="0-13",
    test_cases="14-33",
    amp="off",
    channels_last=True,
    compile=False,
    ckpt_every=100,
    eval_every=0,
    eval_cases=2,
    log_every=20,
    projection_after=50,
    workers=0,
    device="cpu",
    fg_fraction=0.8,
    tumor_fraction=0.5,
    threads=1,
    model={"base_channels": 8},
)

#: Named presets (paths stay ``None``: the CLI fills them in).
#:
#: ``paper`` — the settings the MSAN paper states (§2.1, §3.1; :data:`PAPER_STATED`) plus the ones it
#: does not state, each with our value and the reason (:data:`PAPER_UNSTATED`; ``book/decisions.md``).
#: It is *not* §3.1 verbatim: foreground oversampling, the counted background of the Dice loss, the
#: validation cases, mixed precision and the network's inner sizes are ours.
#: ``smoke`` — the CPU demonstration: the same recipe shrunk until it learns kidney on CPU phantoms in
#: under a minute per model (``book/fragments/decisions-training.md`` says why each value was chosen).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": PAPER_RECIPE,
    "smoke": SMOKE_RECIPE,
    # ``colab``: the paper's recipe shortened to fit one Colab GPU session per network. Target: at
    # most 4 hours per network on Colab's free T4 (fp16 autocast) at the assumed 30 % of its datasheet
    # peak (kitsmsan.bench.memory.EFFICIENCY): 40,000 iterations of the slowest network (MSAN-V2,
    # 6.84 TFLOP per iteration, counted) are 3.9 h. The learning-rate schedule keeps the paper's
    # shape, scaled to the length: lr 1e-3 divided by 10 at 1/4, 2/4 and 3/4 of the run.
    # Deviations from the paper (MSAN paper, §3.1), each also in book/fragments/decisions-performance.md:
    #   num_iters 400,000 -> 40,000 (1/10: each window is seen ~10x less; expect lower Dice than Table 1);
    #   lr_step 100,000 -> 10,000 (same 4-step shape);
    #   ckpt_every 1000 -> 500 (a killed session loses at most ~3 minutes on a T4);
    #   eval_every 10,000 -> 5,000 (eight validations on the 3 validation cases per run; 10,000 would give four);
    #   workers 4 -> 2 (a Colab VM has 2 CPU cores).
    # Unchanged: batch 2 of 4 x 512 x 512 windows, Dice loss, Adam, lr 1e-3, gamma 0.1, cases 0-179 /
    # 180-189, amp "auto" (fp16 on a T4, bf16 from compute capability 8.0).
    "colab": dict(
        PAPER_RECIPE,
        lr_step=10_000,
        num_iters=40_000,
        ckpt_every=500,
        eval_every=5_000,
        workers=2,
        model={},
    ),
    # ``cpu-reference``: the reference run the book's results pages compare on (kitsmsan.reference):
    # the smoke recipe made long enough to learn, on real-anatomy phantoms (64 px in-plane, 5 mm
    # slices), one thread per run so a 2-core machine trains two at once. Every value was chosen on
    # tuning cases 50-59 held out of training cases 0-49 (never on the test cases 160-189); the
    # search is in book/fragments/decisions-reference.md. Changing a value makes the committed
    # record in book/data/reference/ stale (tests/test_reference.py; `kitsmsan reference --check`).
    "cpu-reference": dict(
        SMOKE_RECIPE,
        lr_step=3000,
        lr_gamma=0.1,
        num_iters=5000,
        train_cases="0-59",
        test_cases="160-189",
        ckpt_every=500,
        eval_cases=0,
        log_every=50,
        projection_after=200,
    ),
}

#: ``paper`` preset settings the paper states (MSAN paper), with where.
PAPER_STATED: dict[str, str] = {
    "num_slices": "4 — §3.1 'every 4 images' (read as 4 consecutive axial slices)",
    "crop_size": "None (the whole 512 × 512 slice) — §3.1 'of size 512×512'",
    "batch_size": "2 — §3.1",
    "loss": "'dice' — §3.1 'a dice loss' (its form is ours: dice_include_background below)",
    "lr": "1e-3 — §3.1 (Adam, §3.1; Adam's betas and eps are torch's defaults, not stated)",
    "lr_step": "100,000 — §3.1",
    "lr_gamma": "0.1 — §3.1 'decrease the learning rate by 10'",
    "num_iters": "400,000 — §3.1",
    "train_cases": "'0-179' — §2.1 'the first 180'",
    "test_cases": "'180-189' — §2.1 'ten samples of the 180-190 serial number'",
}

#: ``paper`` preset settings the paper does not state: value and reason (the decisions, once).
PAPER_UNSTATED: dict[str, str] = {
    "fg_fraction": "0.5 — half the windows forced onto a kidney slice (≈ 70 % of windows hold kidney "
    "instead of ≈ 45 % with uniform sampling; nnU-Net oversamples foreground likewise)",
    "tumor_fraction": "0.25 — a quarter of those onto a tumour slice (tumour is on a median 10 % of slices)",
    "dice_include_background": "True — background counted in the Dice mean (a batch without tumour "
    "otherwise gives no gradient against tumour false positives)",
    "eval_cases": "3 — validation on the last 3 training cases, 177–179 (still trained on); never a "
    "test case",
    "eval_every": "10,000 — validation interval",
    "eval_stride": "2 — sliding-window step in validation",
    "deep_supervision": "None — on for the _ds variants; heads at 1/8 and 1/16 (ds_placement 'pooling'), "
    "weights 4/7, 2/7, 1/7 (ds_weights None)",
    "ds_weights": "None — nnU-Net's halving weights 4/7, 2/7, 1/7",
    "model": "{} — the package's network: base width 32, instance norm, LeakyReLU(0.01), D never pooled, "
    "Res2Net scale s = 4 (Gao et al.'s default; the paper gives none), deep supervision 'pooling'",
    "seed": "0",
    "amp": "'auto' — bf16/fp16 autocast on CUDA, off on CPU",
    "channels_last": "True",
    "compile": "False",
    "cudnn_benchmark": "True",
    "deterministic": "False",
    "ckpt_every": "1000",
    "log_every": "100",
    "projection_after": "200",
    "workers": "4",
    "device": "'auto'",
    "threads": "0 (torch's default)",
}
