"""The run folder's rules: what a run folder is, one writer at a time, and what a resume may change.

A run folder (``OUT/VARIANT``, see :mod:`kitsmsan.train.loop`) is written by one process at a time.
:class:`RunLock` holds ``run_dir/.lock`` (``{"pid", "hostname", "started"}``) created with
``O_EXCL`` while a process trains; a second writer is refused with one line naming the holder. A
lock whose process is gone (same host, pid not alive — a ``kill -9``) is stale and taken over.

Resume rules (:func:`check_resume_overrides`): on ``--resume`` a setting either does not change the
run's result (logging, progress, workers, device ...: applied and recorded in ``config.json``), may
grow the run (``num_iters``, only at or above the iteration reached), or would make the resumed run
differ from the one that was started (``lr``, ``batch_size``, ``seed``, ``train_cases`` ...): those
are refused, naming the setting. The table is :data:`RESUME_RULES`; the book lists it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from kitsmsan.checkpoint import load_checkpoint
from kitsmsan.errors import ConfigError
from kitsmsan.utils.io import MARKER_FILE, claim_output_dir, only_files

LOCK_FILE = ".lock"

#: files a run folder holds (``recognize`` for folders written before output markers existed)
RUN_FILES = ("config.json", "env.json", "metrics.jsonl", "summary.json", "checkpoints", ".lock", "*.tmp")

#: resume rule per TrainConfig field: "apply" (recorded in config.json, result unchanged or only its
#: speed/logging), "grow" (num_iters: allowed when >= the iteration reached), "refuse" (the resumed
#: run would silently differ from the started one). Fields not listed are refused.
RESUME_RULES: dict[str, str] = {
    "num_iters": "grow",
    "progress": "apply",
    "log_every": "apply",
    "ckpt_every": "apply",
    "eval_every": "apply",
    "projection_after": "apply",
    "workers": "apply",
    "device": "apply",
    "threads": "apply",
    "compile": "apply",
    "cudnn_benchmark": "apply",
    "cache_dir": "apply",
    "data_root": "apply",
    "eval_cases": "apply",
    "eval_stride": "apply",
    "lr": "refuse",
    "lr_step": "refuse",
    "lr_gamma": "refuse",
    "batch_size": "refuse",
    "seed": "refuse",
    "train_cases": "refuse",
    "test_cases": "refuse",
    "num_slices": "refuse",
    "crop_size": "refuse",
    "fg_fraction": "refuse",
    "tumor_fraction": "refuse",
    "variant": "refuse",
    "model": "refuse",
    "loss": "refuse",
    "amp": "refuse",
    "channels_last": "refuse",
    "deterministic": "refuse",
    "run_dir": "refuse",
    "dice_include_background": "refuse",
    "deep_supervision": "refuse",
    "ds_weights": "refuse",
}


def _max_threads() -> int:
    return 4 * (os.cpu_count() or 1)


#: upper bounds of settings that TrainConfig only bounds below; beyond them a run crashes (torch
#: segfaults on 100000 threads, numpy refuses seeds >= 2**32) instead of failing with one line
SETTING_BOUNDS: dict[str, Any] = {
    "seed": 2**32 - 1,
    "threads": _max_threads,  # 4 x the CPU count
    "workers": 256,
    "num_iters": 10**9,
    "batch_size": 4096,
    "num_slices": 1024,
    "crop_size": 8192,
    "eval_cases": 10**5,
}


def check_bounds(config: Any) -> None:
    """Refuse settings past :data:`SETTING_BOUNDS`, and an ``eval_stride`` above ``num_slices`` when the
    run validates (``eval_cases > 0``; without validation the stride is never used).

    Raises:
        ConfigError: naming the setting, its value and the bound.
    """
    for key, bound in SETTING_BOUNDS.items():
        limit = bound() if callable(bound) else bound
        value = getattr(config, key, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
            raise ConfigError(f"config: {key}={value!r} is above the largest accepted value {limit}")
    stride, depth = getattr(config, "eval_stride", None), getattr(config, "num_slices", None)
    validates = bool(getattr(config, "eval_cases", 0))
    if validates and isinstance(stride, int) and isinstance(depth, int) and stride > depth:
        raise ConfigError(
            f"config: eval_stride={stride} is larger than num_slices={depth}: validation "
            "windows would skip slices"
        )


def is_run_folder(path: Path) -> bool:
    """True for a run folder written by ``kitsmsan train`` (its files only, a ``config.json``)."""
    return (path / "config.json").is_file() and only_files(*RUN_FILES)(path)


def check_resume_overrides(overrides: dict[str, Any], iteration: int | None = None) -> None:
    """Refuse resume overrides that would change the run (see :data:`RESUME_RULES`).

    Args:
        overrides: ``{field: value}`` from ``--set`` (dotted ``model.x`` keys count as ``model``).
        iteration: the iteration the run's last checkpoint reached (None: not known; ``num_iters``
            is then only type-checked later by the config).

    Raises:
        ConfigError: naming the first field that may not change on resume.
    """
    for key, value in overrides.items():
        field = key.split(".", 1)[0]
        rule = RESUME_RULES.get(field, "refuse")
        if rule == "refuse":
            raise ConfigError(
                f"--set {key}={value!r}: cannot change on --resume (the resumed run would "
                f"differ from the one started); start a new run with --out instead"
            )
        if rule == "grow" and iteration is not None:
            try:
                ok = int(value) >= iteration
            except (TypeError, ValueError):
                ok = True  # the config's own check names the bad type
            if not ok:
                raise ConfigError(
                    f"--set num_iters={value!r}: below the iteration the run reached "
                    f"({iteration}); give num_iters >= {iteration}"
                )


def changed_run_settings(recorded: dict[str, Any], config: Any) -> list[str]:
    """The settings of ``config`` that differ from a run's recorded ``config.json`` and define the run.

    A setting defines the run when :data:`RESUME_RULES` refuses to change it on resume, and
    ``num_iters`` always does here (a finished run of another length is another run).

    Args:
        recorded: the run's ``config.json`` as a dict.
        config: the requested :class:`~kitsmsan.train.TrainConfig`.

    Returns:
        ``"field: recorded -> requested"`` for each difference, in field order (empty: the same run).
    """
    requested = config.to_dict()
    out = []
    for key, value in requested.items():
        if key == "run_dir" or (RESUME_RULES.get(key, "refuse") != "refuse" and key != "num_iters"):
            continue
        if key in recorded and recorded[key] != value:
            out.append(f"{key}: {recorded[key]!r} -> {value!r}")
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``with RunLock(run_dir):`` — hold ``run_dir/.lock`` while writing the run folder.

    Raises (on enter):
        ConfigError: another live process (or one on another host) holds the lock; one line
            naming the folder, pid and host.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False

    def holder(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _stale(self, info: dict | None) -> bool:
        if info is None:  # unreadable: a writer killed between create and write
            with contextlib.suppress(OSError):
                return time.time() - self.path.stat().st_mtime > 60
            return True
        if info.get("hostname") != socket.gethostname():
            return False  # cannot tell from here
        pid = info.get("pid")
        return not (isinstance(pid, int) and _alive(pid))

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(
            {
                "pid": os.getpid(),
                "hostname": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
        ).encode()
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.holder()
                if not self._stale(info):
                    who = f"pid {info.get('pid')} on {info.get('hostname')}" if info else "another process"
                    raise ConfigError(
                        f"{self.path.parent}: run folder is in use by {who} ({self.path}); "
                        "wait for it to finish, or remove the lock if that process is gone"
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # stale: its process was killed
                continue
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
            self.held = True
            return
        raise ConfigError(f"{self.path}: could not take the run-folder lock")

    def release(self) -> None:
        if self.held:
            info = self.holder()
            if info is None or info.get("pid") == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def reached_iteration(run_dir: str | os.PathLike) -> int | None:
    """The iteration of ``run_dir/checkpoints/last.pt`` (None when there is none); verifies it."""

    last = Path(run_dir) / "checkpoints" / "last.pt"
    if not last.is_file():
        return None
    return int(load_checkpoint(last)["iteration"])


@contextlib.contextmanager
def run_folder(run_dir: str | os.PathLike | None, *, main: bool = True, overwrite: bool = False):
    """Claim (output-folder rule, kind ``run``) and lock ``run_dir`` while training writes it.

    On rank 0 only (``main``; other DDP ranks write nothing). A run folder this call created is
    removed again when the body fails before anything but the marker and lock was written.

    Raises:
        OutputFolderError: ``run_dir`` is another command's folder or holds unrelated files.
        ConfigError: another live process holds the run folder's lock.
    """
    if run_dir is None or not main:
        yield
        return
    run_dir = Path(run_dir)
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    claim_output_dir(run_dir, "run", command="train", overwrite=overwrite, recognize=is_run_folder)
    lock = RunLock(run_dir)
    try:
        with lock:
            yield
    except BaseException:
        if created and [e.name for e in run_dir.iterdir()] == [MARKER_FILE]:
            with contextlib.suppress(OSError):
                (run_dir / MARKER_FILE).unlink()
            for folder in created:
                try:
                    folder.rmdir()
                except OSError:
                    break
        raise


__all__ = [
    "LOCK_FILE",
    "RESUME_RULES",
    "SETTING_BOUNDS",
    "RunLock",
    "check_bounds",
    "check_resume_overrides",
    "is_run_folder",
    "reached_iteration",
    "run_folder",
]
