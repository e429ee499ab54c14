"""Checkpoints: round trip, RNG states, atomic writes, refusal of corrupt/untrusted/mismatched files."""

from __future__ import annotations

import errno
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from kitsmsan import checkpoint as ckpt
from kitsmsan.errors import CheckpointError, TrainingError
from kitsmsan.models import build_model


def tiny(variant="msan_v1"):
    torch.manual_seed(0)
    return build_model(variant, base_channels=4)


def test_round_trip_restores_weights_and_model(tmp_path):
    model = tiny("msan_v2_ds")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1)
    state = ckpt.make_checkpoint(
        model,
        optimizer=opt,
        scheduler=sched,
        iteration=7,
        train_config={"variant": "msan_v2_ds"},
        best_score=0.5,
    )
    path = ckpt.save_checkpoint(state, tmp_path / "checkpoints" / "last.pt")
    loaded = ckpt.load_checkpoint(path)
    assert loaded["iteration"] == 7 and loaded["best_score"] == 0.5
    assert loaded["model_config"]["name"] == "msan_v2_ds"
    rebuilt = ckpt.load_model(tmp_path, which="last")  # from the run folder, best falls back to last
    assert not rebuilt.training
    for (k, v), (k2, v2) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert ckpt.resolve_checkpoint(tmp_path, "best") == path


def test_rng_states_round_trip_through_a_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = ckpt.make_checkpoint(tiny(), iteration=0)
    ckpt.save_checkpoint(state, tmp_path / "a.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "a.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


class _Evil:
    """Unpickling this calls ``open(target, "w")``: it would create a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    state = ckpt.make_checkpoint(tiny(), iteration=1)
    state["payload"] = _Evil(str(target))
    torch.save(state, path)
    assert not target.exists()
    with pytest.raises(CheckpointError, match="evil.pt.*refused"):
        ckpt.load_checkpoint(path)
    assert not target.exists()
    with pytest.raises(CheckpointError, match="evil.pt"):
        ckpt.load_model(path)
    assert not target.exists()
    # the same file *would* run code under a plain pickle load: the test is meaningful
    with open(path, "wb") as fh:
        pickle.dump(_Evil(str(target)), fh)
    with pytest.raises(CheckpointError):
        ckpt.load_checkpoint(path)
    assert not target.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_raises_checkpoint_error_naming_the_file(tmp_path, damage):
    path = ckpt.save_checkpoint(ckpt.make_checkpoint(tiny(), iteration=1), tmp_path / "c.pt")
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(2048), "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="c.pt"):
        ckpt.load_checkpoint(path)


@pytest.mark.parametrize("payload", ["random", "text", "zeros"])
def test_garbage_bytes_say_corrupt_not_refused(tmp_path, payload):
    """Random bytes are a damaged file, not an attack: the message must not cry "code"."""
    path = tmp_path / "junk.pt"
    path.write_bytes(
        {"random": np.random.default_rng(0).bytes(4096), "text": b"hello world\n" * 50, "zeros": bytes(1000)}[
            payload
        ]
    )
    with pytest.raises(CheckpointError, match="junk.pt: corrupt") as exc:
        ckpt.load_checkpoint(path)
    assert "refused" not in str(exc.value) and "code" not in str(exc.value)


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_real_pickle_payload_says_refused_not_corrupt(tmp_path, how):
    target, path = tmp_path / "pwned.txt", tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save({"format": ckpt.FORMAT, "x": _Evil(str(target))}, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump({"x": _Evil(str(target))}, fh)
    with pytest.raises(CheckpointError, match="evil.pt: refused.*pickled objects") as exc:
        ckpt.load_checkpoint(path)
    assert "corrupt" not in str(exc.value) and not target.exists()


def test_weights_that_disagree_with_their_own_config_name_the_mismatch(tmp_path):
    state = ckpt.make_checkpoint(tiny("msan_v2"), iteration=1)
    state["model_config"] = tiny("unet3d").config.to_dict()  # claims unet3d, holds msan_v2 weights
    path = ckpt.save_checkpoint(state, tmp_path / "liar.pt")
    with pytest.raises(
        CheckpointError, match=r"liar.pt: architecture mismatch.*'unet3d'.*unexpected key.*res2net"
    ) as exc:
        ckpt.load_model(path)
    assert "do not fit the model ('unet3d')" not in str(exc.value)  # the old, useless wording
    # one tensor of the right name but another shape: named with both shapes
    state = ckpt.make_checkpoint(tiny("msan_v1"), iteration=1)
    name = next(k for k, v in state["model"].items() if v.ndim == 5)
    wrong = state["model"][name][:1].clone()
    state["model"][name] = wrong
    path = ckpt.save_checkpoint(state, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=rf"1 shape mismatch.*{name} \({wrong.shape[0]}, "):
        ckpt.load_model(path)


def test_not_a_kitsmsan_checkpoint(tmp_path):
    torch.save({"state_dict": tiny().state_dict()}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a kitsmsan checkpoint"):
        ckpt.load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_architecture_mismatch_names_both_variants(tmp_path):
    path = ckpt.save_checkpoint(ckpt.make_checkpoint(tiny("msan_v2"), iteration=1), tmp_path / "v2.pt")
    with pytest.raises(CheckpointError, match=r"'msan_v2'.*'unet3d'"):
        ckpt.load_model_state(tiny("unet3d"), ckpt.load_checkpoint(path), path)
    # same variant, other width: also refused
    with pytest.raises(CheckpointError, match="base_channels"):
        ckpt.load_model_state(build_model("msan_v2", base_channels=8), ckpt.load_checkpoint(path), path)


def test_disk_full_while_checkpointing_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(ckpt.make_checkpoint(tiny(), iteration=1), path)
    before = path.read_bytes()

    def full(obj, fh, *a, **k):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(TrainingError, match="No space left on device"):
        ckpt.save_checkpoint(ckpt.make_checkpoint(tiny(), iteration=2), path)
    monkeypatch.undo()
    assert path.read_bytes() == before and ckpt.load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_kill_during_checkpoint_write_leaves_the_last_good_one(tmp_path):
    """SIGKILL a process halfway through writing: the old checkpoint still loads."""
    path = tmp_path / "last.pt"
    marker = tmp_path / "writing"
    script = textwrap.dedent(f"""
        import time, torch
        from kitsmsan.models import build_model
        from kitsmsan import checkpoint as ckpt
        model = build_model("msan_v1", base_channels=4)
        ckpt.save_checkpoint(ckpt.make_checkpoint(model, iteration=1), {str(path)!r})
        real_save = torch.save
        def slow_save(obj, fh, *a, **k):
            fh.write(b"x" * 4096); fh.flush()
            open({str(marker)!r}, "w").close()
            time.sleep(60)
        torch.save = slow_save
        ckpt.save_checkpoint(ckpt.make_checkpoint(model, iteration=2), {str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert proc.poll() is None, "writer died early"
            assert time.time() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    leftovers = [p for p in tmp_path.glob(".last.pt.*.tmp")]
    assert leftovers, "the kill should have left a temporary file behind"
    assert ckpt.load_checkpoint(path)["iteration"] == 1
    assert ckpt.remove_partial_writes(tmp_path) == leftovers
    assert not list(tmp_path.glob(".last.pt.*.tmp"))


# ---------------------------------------------------------------------------- content checks
def _saved(tmp_path, **changes):
    state = ckpt.make_checkpoint(tiny(), iteration=3)
    path = ckpt.save_checkpoint(state, tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)
    raw.update(changes)
    return path, raw


def test_every_checkpoint_carries_a_checksum_of_its_weights(tmp_path):
    path, raw = _saved(tmp_path)
    assert raw["model_sha256"] == ckpt.weights_digest(raw["model"])
    assert len(raw["model_sha256"]) == 64


def test_a_flipped_bit_in_a_weight_is_refused(tmp_path):
    path, raw = _saved(tmp_path)
    name = next(k for k, v in raw["model"].items() if v.is_floating_point() and v.numel())
    flat = raw["model"][name].reshape(-1).view(torch.int32)
    flat[0] ^= 1 << 3  # one bit of one float: a tiny, otherwise invisible change
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"c\.pt: the weights do not match the checkpoint's checksum"):
        ckpt.load_checkpoint(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, bad):
    path, raw = _saved(tmp_path)
    name = next(k for k, v in raw["model"].items() if v.is_floating_point() and v.numel())
    raw["model"][name].reshape(-1)[0] = bad
    raw["model_sha256"] = ckpt.weights_digest(raw["model"])  # consistent checksum: still refused
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=f"weight '{name}' holds NaN or infinite values"):
        ckpt.load_checkpoint(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"iteration": "7"}, "'iteration' is '7'"),
        ({"iteration": -1}, "'iteration' is -1"),
        ({"iteration": True}, "'iteration' is True"),
        ({"rng": {}}, "RNG state"),
        ({"rng": {"torch": torch.zeros(0, dtype=torch.uint8)}}, "RNG state"),
        ({"rng": {"torch": torch.get_rng_state()}}, "RNG state .* malformed"),
        ({"model": {"w": "not a tensor"}}, "not a state dict of tensors"),
    ],
)
def test_malformed_values_are_refused_naming_the_file(tmp_path, changes, message):
    path, raw = _saved(tmp_path, **changes)
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=message) as info:
        ckpt.load_checkpoint(path)
    assert str(path) in str(info.value)


def test_a_checkpoint_without_checksum_still_loads(tmp_path):
    """Checkpoints written before the checksum existed load (nothing to compare)."""
    path, raw = _saved(tmp_path)
    del raw["model_sha256"]
    torch.save(raw, path)
    assert ckpt.load_checkpoint(path)["iteration"] == 3


def test_torch_runtime_error_while_writing_is_a_training_error(tmp_path, monkeypatch):
    """A full disk inside torch's archive writer raises RuntimeError, not OSError: still one
    TrainingError naming the file, and the previous checkpoint is kept."""
    path = ckpt.save_checkpoint(ckpt.make_checkpoint(tiny(), iteration=1), tmp_path / "last.pt")
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(TrainingError, match=r"last\.pt: could not write checkpoint"):
        ckpt.save_checkpoint(ckpt.make_checkpoint(tiny(), iteration=2), path)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
