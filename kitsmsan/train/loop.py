"""The training loop (MSAN paper, §3.1): Dice loss, Adam, a step schedule, exact resume.

One optimizer step ("iteration") sees ``batch_size`` windows of ``num_slices`` axial slices per
process. The paper's recipe is batch 2, Adam at lr 1e-3 divided by 10 every 100,000 iterations, for
400,000 iterations, with deep supervision for the ``_ds`` variants (MSAN paper, §3.1).

Exact resume. Sample ``j`` of the batch at ``iteration`` on ``rank`` is window
``(iteration * world_size + rank) * batch_size + j`` of the dataset, and ``ds[i]`` is a pure
function of ``(seed, i)``. The checkpoint stores the model, Adam, the schedule, the fp16 grad scaler,
every RNG state and the iteration; resuming continues the same sample stream, so on CPU an
interrupted run ends with bit-identical weights (tested in ``tests/test_train.py``).

Speed (GPU): fused Adam, bf16/fp16 autocast (fp16 with a grad scaler), ``channels_last_3d``,
optional :func:`torch.compile`, ``cudnn.benchmark``, pinned memory with non-blocking copies,
persistent data-loader workers, and no host synchronisation except every ``log_every`` iterations
(loss, non-finite check) and at checkpoints.

A run folder::

    run_dir/config.json          the resolved TrainConfig
    run_dir/env.json             commit, versions, device (kitsmsan.utils.provenance.environment)
    run_dir/metrics.jsonl        one JSON row per log / validation event
    run_dir/checkpoints/last.pt  written every ckpt_every iterations and at the end
    run_dir/checkpoints/best.pt  highest validation composite Dice (when validation is on)
    run_dir/summary.json         written when the run finishes
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from kitsmsan import checkpoint as ckpt
from kitsmsan.data.dataset import SliceWindowDataset, check_window_fits, split_cases
from kitsmsan.data.preprocess import IMAGE_FILE, LABEL_FILE, load_cache_index
from kitsmsan.errors import CheckpointError, ConfigError, DataError, TrainingError
from kitsmsan.inference import predict_case
from kitsmsan.metrics import kits_dice
from kitsmsan.models import build_model
from kitsmsan.train.config import TrainConfig, validation_cases
from kitsmsan.train.distributed import WindowBatchSampler, all_reduce_sum, barrier, cleanup, init_distributed
from kitsmsan.train.runlock import check_bounds, check_resume_overrides, reached_iteration, run_folder
from kitsmsan.train.step import build_loss, build_optimizer, train_step
from kitsmsan.utils.amp import resolve_amp
from kitsmsan.utils.device import resolve_device
from kitsmsan.utils.io import atomic_write_json, atomic_write_text
from kitsmsan.utils.metrics_log import METRICS_FILE, read_metrics
from kitsmsan.utils.provenance import environment
from kitsmsan.utils.torch_state import torch_settings

CONFIG_FILE = "config.json"
ENV_FILE = "env.json"
SUMMARY_FILE = "summary.json"


@contextlib.contextmanager
def _writing(path: Path):
    """Turn an ``OSError`` (disk full, no permission, read-only) while writing ``path`` into a one-line
    :class:`~kitsmsan.errors.TrainingError` that names the file.

    Raises:
        TrainingError: naming ``path`` and the system's reason (e.g. "No space left on device").
    """
    try:
        yield
    except OSError as exc:
        raise TrainingError(
            f"{path}: cannot write ({exc.strerror or exc}); training stopped, the last "
            "checkpoint (if any) is kept — free space, then run again (--resume RUN_DIR "
            "once the run has a checkpoint)"
        ) from exc


# ---------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (model initialisation)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model_for(config: TrainConfig) -> torch.nn.Module:
    """The network of ``config.variant`` with ``config.model`` overrides (and forced deep supervision)."""
    overrides = dict(config.model)
    if config.deep_supervision is not None:
        overrides["deep_supervision"] = config.deep_supervision
    return build_model(config.variant, **overrides)


def run_state(run_dir: str | Path) -> str:
    """``"done"`` (summary written), ``"partial"`` (a checkpoint, unfinished) or ``"new"``."""
    run_dir = Path(run_dir)
    if (run_dir / SUMMARY_FILE).is_file():
        return "done"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "partial"
    return "new"


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# ---------------------------------------------------------------------------- the trainer
class Trainer:
    """One training run. ``Trainer(config).fit()`` is :func:`train`.

    Args:
        config: the run's :class:`TrainConfig` (``run_dir``, ``cache_dir`` required).
        resume: continue from ``run_dir/checkpoints/last.pt`` if it exists. Default False: a run
            folder that already holds a checkpoint is refused (ConfigError) rather than overwritten.

    Attributes:
        model: the network (wrapped in DDP under torchrun). iteration: steps completed.
    """

    def __init__(self, config: TrainConfig, *, resume: bool = False) -> None:
        if config.run_dir is None:
            raise ConfigError("config: run_dir is not set (where should the run be written?)")
        if config.cache_dir is None:
            raise ConfigError("config: cache_dir is not set (run `kitsmsan prepare` and pass --cache)")
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.last_path = self.ckpt_dir / "last.pt"
        self.best_path = self.ckpt_dir / "best.pt"
        if self.last_path.is_file() and not resume:
            raise ConfigError(
                f"{self.run_dir}: this run folder already holds a checkpoint; resume it "
                f"(--resume {self.run_dir}) or choose another --out"
            )

        self.dist = init_distributed(resolve_device(config.device).type)
        self.device = resolve_device(config.device, local_rank=self.dist.local_rank)
        self.amp_dtype = resolve_amp(config.amp, self.device)
        #: process-wide torch settings of the run, in force during :meth:`fit` only (restored after)
        cuda = self.device.type == "cuda"
        self.process_settings = dict(
            threads=config.threads or None,
            cudnn_benchmark=(config.cudnn_benchmark and not config.deterministic) if cuda else None,
            tf32=True if cuda else None,
            deterministic=True if config.deterministic else None,
        )

        index = load_cache_index(config.cache_dir)
        split = split_cases(index["cases"], train=config.train_cases, test=config.test_cases)
        if not split["train"]:
            raise DataError(
                f"{config.cache_dir}: no cached case falls in train_cases="
                f"{config.train_cases!r} (cached: {len(index['cases'])} cases)"
            )
        self.train_cases, self.test_cases = split["train"], split["test"]
        world, bs = self.dist.world_size, config.batch_size
        self.dataset = SliceWindowDataset(
            config.cache_dir,
            self.train_cases,
            num_slices=config.num_slices,
            crop_size=config.crop_size,
            fg_fraction=config.fg_fraction,
            tumor_fraction=config.tumor_fraction,
            length=config.num_iters * world * bs,
            seed=config.seed,
            label_dtype="uint8",
        )  # 8x fewer bytes to the device; widened there

        seed_everything(config.seed)
        net = build_model_for(config)
        check_window_fits(self.dataset, net.config.divisor)  # a hint that fits the cached planes
        self.loss_fn = build_loss(config, net)
        self.memory_format = torch.channels_last_3d if config.channels_last else torch.contiguous_format
        net = net.to(self.device, memory_format=self.memory_format)
        self.net = net  # the bare network (what checkpoints and validation use)
        self.optimizer = build_optimizer(config, net, self.device)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=config.lr_step, gamma=config.lr_gamma
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.iteration = 0
        self.best_score: float | None = None
        self.elapsed_before = 0.0

        if resume and self.last_path.is_file():
            self._resume()
        model = net
        if self.dist.distributed:
            model = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if config.compile:
            model = torch.compile(model)
        self.model = model

    # -------------------------------------------------------------- resume / checkpoints
    def _resume(self) -> None:
        ckpt.remove_partial_writes(self.ckpt_dir)
        state = ckpt.load_checkpoint(self.last_path)
        ckpt.load_model_state(self.net, state, self.last_path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(
                f"{self.last_path}: optimizer/schedule state does not fit this run ({exc})"
            ) from None
        ckpt.set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        self.best_score = state.get("best_score")
        self.elapsed_before = float(state.get("elapsed_s") or 0.0)
        if self.dist.is_main:  # drop log rows written after this checkpoint by the killed process
            rows = [
                r
                for r in read_metrics(self.run_dir, missing_ok=True)
                if r.get("iteration", 0) <= self.iteration
            ]
            with _writing(self.run_dir / METRICS_FILE):
                atomic_write_text(self.run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._t0)

    def save(self, path: Path) -> None:
        """Write a checkpoint of the current state to ``path`` (rank 0 only; atomic)."""
        if not self.dist.is_main:
            return
        state = ckpt.make_checkpoint(
            self.net,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            iteration=self.iteration,
            train_config=self.config.to_dict(),
            best_score=self.best_score,
        )
        state["elapsed_s"] = self._elapsed()
        ckpt.save_checkpoint(state, path)

    def _log(self, row: dict[str, Any]) -> None:
        if self.dist.is_main:
            with (
                _writing(self.run_dir / METRICS_FILE),
                open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as fh,
            ):
                fh.write(json.dumps(row) + "\n")

    # -------------------------------------------------------------- validation
    def validate(self) -> dict[str, float] | None:
        """Composite Dice on the validation cases (rank 0; None when off): the last ``eval_cases``
        training cases (:func:`kitsmsan.train.config.validation_cases`), never a test case.

        Uses :func:`kitsmsan.inference.predict_case` on the cached (clipped HU) volumes and
        :func:`kitsmsan.metrics.kits_dice`; no post-processing.
        """
        cases = validation_cases(self.train_cases, self.config.eval_cases)
        if not cases or not self.dist.is_main:
            return None
        scores = []
        for cid in cases:
            folder = Path(self.config.cache_dir) / cid
            image = np.load(folder / IMAGE_FILE, allow_pickle=False)
            label = np.load(folder / LABEL_FILE, allow_pickle=False)
            pred = predict_case(
                self.net,
                image,
                num_slices=self.config.num_slices,
                stride=self.config.eval_stride,
                device=self.device,
            )
            scores.append(kits_dice(pred, label))
        self.net.train()
        return {
            k: float(np.nanmean([s[k] for s in scores]))
            if any(not math.isnan(s[k]) for s in scores)
            else float("nan")
            for k in ("kidney", "tumor", "composite")
        }

    def _maybe_best(self, scores: dict[str, float] | None) -> None:
        if scores is None or math.isnan(scores["composite"]):
            return
        if self.best_score is None or scores["composite"] > self.best_score:
            self.best_score = scores["composite"]
            self.save(self.best_path)

    # -------------------------------------------------------------- the loop
    def _loader(self):
        sampler = WindowBatchSampler(
            self.iteration,
            self.config.num_iters,
            self.dist.rank,
            self.dist.world_size,
            self.config.batch_size,
        )
        workers = self.config.workers
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def _check_finite(self, bad: torch.Tensor, where: str) -> None:
        flag = all_reduce_sum(bad.clone().float(), self.dist)
        if flag.item() > 0:
            kept = (
                f"the last good checkpoint {self.last_path} (iteration "
                f"{ckpt.load_checkpoint(self.last_path)['iteration']}) is kept"
                if self.last_path.is_file()
                else "no checkpoint had been written yet"
            )
            raise TrainingError(
                f"{self.run_dir}: the loss became NaN or infinite before iteration {self.iteration} "
                f"({where}); training stopped and {kept}. Lower lr or turn amp off, then --resume."
            )

    def fit(self) -> Path:
        """Train to ``num_iters`` and return the run folder. Safe to call on a resumed run.

        The run's process-wide torch settings (``self.process_settings``: threads, cuDNN autotuning,
        TF32, deterministic algorithms) hold during the call and are restored afterwards.
        """
        with torch_settings(**self.process_settings):
            return self._fit()

    def _fit(self) -> Path:
        cfg = self.config
        if self.dist.is_main:
            created = [p for p in (self.ckpt_dir, self.run_dir) if not p.exists()]  # deepest first
            try:
                with _writing(self.ckpt_dir):
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                    self.ckpt_dir.mkdir(parents=True, exist_ok=True)
                with _writing(self.run_dir / CONFIG_FILE):
                    atomic_write_text(self.run_dir / CONFIG_FILE, cfg.to_json())
            except TrainingError:  # a new run folder with nothing in it: leave no trace
                for folder in created:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                raise
            env = environment(str(self.device))
            env.update(
                world_size=self.dist.world_size, amp=str(self.amp_dtype), threads=torch.get_num_threads()
            )
            with _writing(self.run_dir / ENV_FILE):
                atomic_write_json(self.run_dir / ENV_FILE, env)
        self._t0 = time.perf_counter()
        start_iter = self.iteration
        bar = tqdm(
            total=cfg.num_iters,
            initial=start_iter,
            desc=f"train {cfg.variant}",
            unit="it",
            disable=not (cfg.progress and self.dist.is_main),
            dynamic_ncols=True,
        )
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        n_in_window, t_window, projected = 0, time.perf_counter(), False
        try:
            for image, label in self._loader():
                image = image.to(self.device, non_blocking=True, memory_format=self.memory_format)
                label = label.to(self.device, non_blocking=True).long()
                loss = train_step(
                    self.model,
                    self.loss_fn,
                    self.optimizer,
                    self.scaler,
                    image,
                    label,
                    amp_dtype=self.amp_dtype,
                )
                self.scheduler.step()
                self.iteration += 1
                loss_sum += loss
                bad |= ~torch.isfinite(loss)
                n_in_window += 1
                bar.update(1)

                it = self.iteration
                if it % cfg.log_every == 0 or it == cfg.num_iters:
                    self._check_finite(bad, "log")
                    mean = all_reduce_sum(loss_sum.clone(), self.dist).item() / (
                        n_in_window * self.dist.world_size
                    )
                    now = time.perf_counter()
                    lr = self.optimizer.param_groups[0]["lr"]
                    row = {
                        "iteration": it,
                        "loss": mean,
                        "lr": lr,
                        "seconds": round(self._elapsed(), 3),
                        "it_per_s": round(n_in_window / max(now - t_window, 1e-9), 3),
                    }
                    self._log(row)
                    bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
                    loss_sum.zero_()
                    n_in_window, t_window = 0, now
                if (
                    not projected
                    and cfg.projection_after
                    and it - start_iter >= cfg.projection_after
                    and it < cfg.num_iters
                    and self.dist.is_main
                ):
                    projected = True
                    rate = (it - start_iter) / (time.perf_counter() - self._t0)
                    bar.write(
                        f"[{cfg.variant}] {rate:.2f} it/s: projected time to finish "
                        f"{_format_seconds((cfg.num_iters - it) / rate)} "
                        f"({cfg.num_iters - it} iterations left)"
                    )
                eval_now = (
                    cfg.eval_cases and cfg.eval_every and it % cfg.eval_every == 0 and it < cfg.num_iters
                )
                if eval_now:
                    self._check_finite(bad, "validation")
                    scores = self.validate()
                    if scores is not None:
                        self._log(
                            {
                                "iteration": it,
                                "seconds": round(self._elapsed(), 3),
                                **{f"val_{k}": v for k, v in scores.items()},
                            }
                        )
                        self._maybe_best(scores)
                    barrier(self.dist)
                if it % cfg.ckpt_every == 0 and it < cfg.num_iters:
                    self._check_finite(bad, "checkpoint")
                    self.save(self.last_path)
                    barrier(self.dist)
            # the end
            self._check_finite(bad, "end")
            scores = self.validate() if cfg.eval_cases else None
            if scores is not None:
                self._log(
                    {
                        "iteration": self.iteration,
                        "seconds": round(self._elapsed(), 3),
                        **{f"val_{k}": v for k, v in scores.items()},
                    }
                )
                self._maybe_best(scores)
            self.save(self.last_path)
            if self.dist.is_main:
                with _writing(self.run_dir / SUMMARY_FILE):
                    atomic_write_json(
                        self.run_dir / SUMMARY_FILE,
                        {
                            "variant": cfg.variant,
                            "iterations": self.iteration,
                            "seconds": round(self._elapsed(), 3),
                            "best_val_composite": self.best_score,
                            "final_val": scores,
                            "train_cases": len(self.train_cases),
                            "world_size": self.dist.world_size,
                            "device": str(self.device),
                        },
                    )
            barrier(self.dist)
        finally:
            bar.close()
        return self.run_dir


def train(config: TrainConfig, *, resume: bool = False) -> Path:
    """Train one network as in MSAN paper §3.1 and return its run folder.

    Args:
        config: the resolved :class:`TrainConfig` (``run_dir`` and ``cache_dir`` set).
        resume: continue ``run_dir/checkpoints/last.pt`` if present (exactly: same weights as an
            uninterrupted run on CPU). Default False (refuses a folder that holds a checkpoint).

    Returns:
        ``Path(config.run_dir)``.

    Raises:
        ConfigError, DataError, CheckpointError: bad settings, data or checkpoint (named).
        TrainingError: non-finite loss (last good checkpoint kept) or a failed checkpoint write.
    """
    check_bounds(config)  # settings past their upper bounds: one line, before anything is written
    with run_folder(config.run_dir, main=int(os.environ.get("RANK", "0")) == 0):  # claimed + locked
        trainer = Trainer(config, resume=resume)
        try:
            return trainer.fit()
        finally:
            cleanup(trainer.dist)


def resume(run_dir: str | Path, **overrides: Any) -> Path:
    """Resume the run in ``run_dir`` from its own ``config.json`` (with optional ``overrides``).

    Raises:
        ConfigError: no ``config.json`` in ``run_dir`` or a bad override.
    """
    run_dir = Path(run_dir)
    config = TrainConfig.from_json(run_dir / CONFIG_FILE)
    check_resume_overrides(overrides, reached_iteration(run_dir))  # refuse what would change the run
    if overrides:
        config = config.replace(**overrides)
    if Path(config.run_dir or "").resolve() != run_dir.resolve():
        config = config.replace(run_dir=str(run_dir))
    return train(config, resume=True)


__all__ = [
    "Trainer",
    "train",
    "resume",
    "read_metrics",
    "run_state",
    "build_loss",
    "build_model_for",
    "CONFIG_FILE",
    "ENV_FILE",
    "METRICS_FILE",
    "SUMMARY_FILE",
]
