"""Checkpoints: atomic to write, safe to load, enough to resume exactly.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts — nothing else — so it can
be read with ``torch.load(..., weights_only=True)``: the restricted unpickler refuses any pickled
object that would run code on load (an untrusted file cannot run code). It holds:

========================  ==============================================================
key                       what
========================  ==============================================================
``format``                ``"kitsmsan-checkpoint"``, ``version`` 1
``model``                 the model's ``state_dict`` (without any ``_orig_mod.``/``module.`` prefix)
``model_config``          ``model.config.to_dict()`` — the model is rebuilt from this alone
``train_config``          ``TrainConfig.to_dict()``
``optimizer``             the Adam ``state_dict``
``scheduler``             the learning-rate schedule ``state_dict``
``scaler``                the fp16 ``GradScaler`` ``state_dict`` (or ``None``)
``iteration``             optimizer steps completed; training resumes at this iteration
``rng``                   torch / CUDA / numpy / python RNG states (numpy's as a tensor)
``best_score``            the best validation composite Dice so far (``None`` without validation)
``model_sha256``          SHA-256 of the weights (names, dtypes, shapes, bytes), written by
                          :func:`save_checkpoint` and verified by :func:`load_checkpoint`
========================  ==============================================================

On load, a checkpoint whose weights do not match their checksum (a flipped bit), whose weights
are not finite (NaN / inf), whose ``iteration`` is not a non-negative integer or whose RNG state
is empty is refused with a :class:`~kitsmsan.errors.CheckpointError` naming the file.

Writes go through :func:`kitsmsan.utils.io.atomic_write`: a crash or a full disk during a write
leaves the previous checkpoint in place.
"""

from __future__ import annotations

import hashlib
import pickle
import pickletools
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kitsmsan.errors import CheckpointError, TrainingError
from kitsmsan.models import build_model_from_config
from kitsmsan.utils.io import atomic_write

FORMAT = "kitsmsan-checkpoint"
VERSION = 1


# ---------------------------------------------------------------------------- RNG states
def get_rng_state() -> dict[str, Any]:
    """Snapshot every RNG the training loop might touch, in a ``weights_only``-safe form."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states saved by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if state.get("cuda") and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


# ---------------------------------------------------------------------------- save
def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare network under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def make_checkpoint(
    model: torch.nn.Module,
    *,
    optimizer=None,
    scheduler=None,
    scaler=None,
    iteration: int = 0,
    train_config: dict | None = None,
    best_score: float | None = None,
) -> dict[str, Any]:
    """Assemble the checkpoint dict described in the module docstring.

    Args:
        model: the network (wrappers are removed); must carry ``.config`` with ``to_dict()``.
        optimizer, scheduler, scaler: their ``state_dict`` is stored when given. Default ``None``.
        iteration: optimizer steps completed. Default 0.
        train_config: ``TrainConfig.to_dict()``. Default ``None``.
        best_score: best validation composite Dice so far. Default ``None``.
    """
    net = unwrap_model(model)
    config = getattr(net, "config", None)
    model_config = config.to_dict() if hasattr(config, "to_dict") else None
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "model_config": model_config,
        "train_config": train_config,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "iteration": int(iteration),
        "rng": get_rng_state(),
        "best_score": None if best_score is None else float(best_score),
    }


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a state dict: every entry's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name]
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}:{type(t).__name__}:{t!r};".encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically, with the weights' checksum ``model_sha256``.

    Args:
        checkpoint: from :func:`make_checkpoint`.
        path: destination file (``.../checkpoints/last.pt``).

    Returns:
        ``path``.

    Raises:
        TrainingError: the write failed (e.g. disk full: an ``OSError``, or the ``RuntimeError``
            torch's archive writer raises); ``path`` keeps its previous content.
    """
    path = Path(path)
    if isinstance(checkpoint.get("model"), dict):
        checkpoint = {**checkpoint, "model_sha256": weights_digest(checkpoint["model"])}
    try:
        with atomic_write(path, "wb") as fh:
            torch.save(checkpoint, fh)
    except (OSError, RuntimeError) as exc:
        raise TrainingError(
            f"{path}: could not write checkpoint ({getattr(exc, 'strerror', None) or exc}); "
            f"the previous checkpoint at this path is kept"
        ) from None
    return path


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete temporary files left by a process killed while writing a checkpoint.

    Returns:
        The removed files.
    """
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for tmp in folder.glob(".*.pt.*.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:
                pass
    return removed


# ---------------------------------------------------------------------------- load
def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``torch.load(weights_only=True)``) and check its structure.

    Args:
        path: the ``.pt`` file.
        map_location: where tensors go. Default ``"cpu"``.

    Returns:
        The checkpoint dict.

    Raises:
        CheckpointError: missing file; corrupt/truncated file; a file whose pickle carries code or
            objects other than tensors and plain containers (refused without running anything);
            a file that is not a kitsmsan checkpoint. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _holds_pickled_objects(path):  # random bytes, a truncated or foreign file
            raise CheckpointError(
                f"{path}: corrupt or not a checkpoint (neither a torch archive nor a well-formed pickle)"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused — the file holds pickled objects that are not plain weights (possibly "
            f"code that would run on load); only tensors and plain containers are accepted "
            f"[{first[:200]}]"
        ) from None
    except (
        RuntimeError,
        EOFError,
        OSError,
        zipfile.BadZipFile,
        ValueError,
        KeyError,
        AttributeError,
        TypeError,
        IndexError,
        UnicodeDecodeError,
    ) as exc:
        raise CheckpointError(
            f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a kitsmsan checkpoint (no 'format': {FORMAT!r} entry)")
    version = checkpoint.get("version")
    if version != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is not supported "
            f"(this kitsmsan reads version {VERSION})"
        )
    for key in ("model", "model_config", "iteration"):
        if key not in checkpoint:
            raise CheckpointError(f"{path}: checkpoint lacks the {key!r} entry")
    _check_content(checkpoint, path)
    return checkpoint


def _check_content(checkpoint: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose values are of the right kinds but wrong (see the module docstring)."""
    it = checkpoint["iteration"]
    if isinstance(it, bool) or not isinstance(it, int) or it < 0:
        raise CheckpointError(f"{path}: 'iteration' is {it!r}; expected an integer >= 0")
    weights = checkpoint["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: the 'model' entry is not a state dict of tensors")
    expected = checkpoint.get("model_sha256")
    if expected is not None and weights_digest(weights) != expected:
        raise CheckpointError(
            f"{path}: the weights do not match the checkpoint's checksum (model_sha256): "
            "the file was corrupted after it was written; use another checkpoint"
        )
    for name, t in weights.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"{path}: weight {name!r} holds NaN or infinite values; refused "
                "(a model with non-finite weights predicts nonsense)"
            )
    rng = checkpoint.get("rng", {})
    if "rng" in checkpoint and not (
        isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].numel() > 0
    ):
        raise CheckpointError(f"{path}: the RNG state ('rng') is empty or malformed; cannot resume exactly")
    if "rng" in checkpoint:  # the full state must restore: try it, then put the current one back
        current = get_rng_state()
        try:
            set_rng_state(rng)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
            raise CheckpointError(
                f"{path}: the RNG state ('rng') is malformed ({type(exc).__name__}: "
                f"{str(exc)[:120]}); cannot resume exactly"
            ) from None
        finally:
            set_rng_state(current)


def _holds_pickled_objects(path: Path) -> bool:
    """Whether a file that ``weights_only`` refused really is a pickle naming objects (possibly code).

    Tells the two reasons :class:`pickle.UnpicklingError` has apart without unpickling anything: a
    torch zip archive (its ``data.pkl`` failed the allow-list), or a well-formed pickle stream
    (parsed with :func:`pickletools.genops`, which only reads opcodes) that uses an object-building
    opcode (``GLOBAL``, ``STACK_GLOBAL``, ``REDUCE``, ...). Random bytes, text and truncated files are
    neither.

    Returns:
        True for a pickled-objects payload, False for garbage.
    """
    if zipfile.is_zipfile(path):
        return True
    objects = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"}
    found = False
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(0)
            while fh.tell() < size:  # legacy torch files hold several pickles in a row
                uses_objects = False
                for op, _arg, _pos in pickletools.genops(fh):  # stops after STOP; raises on garbage
                    uses_objects = uses_objects or op.name in objects
                found = found or uses_objects
    except Exception:  # noqa: BLE001 - any parse failure means "not (or no longer) a pickle"
        return found
    return found


def _state_mismatch(net: torch.nn.Module, weights: Any) -> str:
    """Describe how ``weights`` (a state dict) and ``net``'s parameters differ: keys and shapes."""
    if not isinstance(weights, dict):
        return f"the 'model' entry is a {type(weights).__name__}, not a state dict"
    expected = net.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in weights
        and hasattr(weights[k], "shape")
        and tuple(weights[k].shape) != tuple(expected[k].shape)
    ]

    def few(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {few(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es), checkpoint vs model: {few(shapes)}")
    return "; ".join(parts)


def load_model_state(
    model: torch.nn.Module, checkpoint: dict[str, Any], path: str | Path = "checkpoint"
) -> None:
    """Load the checkpoint's weights into ``model``, refusing another architecture.

    Raises:
        CheckpointError: the checkpoint's model config differs from ``model.config`` (the message
            names both variants and the differing settings), or its tensors do not fit the model
            (the message names the missing/unexpected keys and the mismatched shapes). Always
            names the file.
    """
    net = unwrap_model(model)
    saved = checkpoint.get("model_config") or {}
    current = net.config.to_dict() if hasattr(getattr(net, "config", None), "to_dict") else {}
    saved_name, current_name = _variant_name(saved), _variant_name(current)
    if saved and current and saved != current:
        diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise CheckpointError(
            f"{path}: architecture mismatch — the checkpoint holds {saved_name!r}, the model is "
            f"{current_name!r} (differing settings: {', '.join(diff)})"
        )
    try:
        net.load_state_dict(checkpoint["model"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        detail = _state_mismatch(net, checkpoint["model"]) or str(exc).strip().splitlines()[0][:300]
        raise CheckpointError(
            f"{path}: architecture mismatch — the checkpoint's weights do not fit its own model config "
            f"{saved_name!r} (damaged or edited checkpoint?): {detail}"
        ) from None


def _variant_name(model_config: dict) -> str:
    for key in ("name", "variant"):
        if isinstance(model_config.get(key), str):
            return model_config[key]
    return "unknown"


def resolve_checkpoint(run_dir_or_checkpoint: str | Path, which: str = "best") -> Path:
    """The checkpoint file of a run folder (``checkpoints/<which>.pt``) or the file itself.

    Falls back from ``best`` to ``last`` when a run has no validation (hence no ``best.pt``).

    Raises:
        CheckpointError: ``which`` is not ``"best"``/``"last"`` or no checkpoint exists.
    """
    if which not in ("best", "last"):
        raise CheckpointError(f"which={which!r}: choose 'best' or 'last'")
    p = Path(run_dir_or_checkpoint)
    if p.is_dir():
        for name in (which, "last") if which == "best" else (which,):
            candidate = p / "checkpoints" / f"{name}.pt"
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{p}: no checkpoints/{which}.pt in this run folder")
    if not p.exists():
        raise CheckpointError(f"{p}: no such run folder or checkpoint file")
    return p


def load_model(
    run_dir_or_checkpoint: str | Path, device: str | torch.device = "cpu", which: str = "best"
) -> torch.nn.Module:
    """Rebuild a trained network from a run folder or checkpoint file, in eval mode.

    The architecture comes from the checkpoint's own ``model_config``, so no code or settings
    outside the file are needed (nanoGPT style).

    Args:
        run_dir_or_checkpoint: a run folder (``checkpoints/{best,last}.pt`` inside) or a ``.pt`` file.
        device: where to put the model. Default ``"cpu"``.
        which: ``"best"`` (highest validation Dice; falls back to ``"last"``) or ``"last"``.
            Default ``"best"``.

    Returns:
        The model (``kitsmsan.models.MSAN``) in eval mode on ``device``.

    Raises:
        CheckpointError: missing, corrupt or untrusted file, or unusable model config.
    """
    path = resolve_checkpoint(run_dir_or_checkpoint, which)
    checkpoint = load_checkpoint(path)
    try:
        model = build_model_from_config(checkpoint["model_config"])
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model from its saved config ({exc})") from None
    load_model_state(model, checkpoint, path)
    return model.to(device).eval()


__all__ = [
    "FORMAT",
    "VERSION",
    "get_rng_state",
    "set_rng_state",
    "unwrap_model",
    "make_checkpoint",
    "save_checkpoint",
    "remove_partial_writes",
    "load_checkpoint",
    "load_model_state",
    "resolve_checkpoint",
    "load_model",
]
