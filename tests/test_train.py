"""The training loop end to end on tiny synthetic cases: run folder, exact resume (also after
``kill -9``), NaN stop, untrusted/mismatched checkpoints, DDP with two gloo processes (issues #4, #7)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kitsmsan import checkpoint as ckpt
from kitsmsan.checkpoint import load_model
from kitsmsan.errors import CheckpointError, ConfigError, TrainingError
from kitsmsan.train import TrainConfig, read_metrics, resume, train
from kitsmsan.train.distributed import sample_indices
from kitsmsan.train.loop import Trainer


def make_cases(root: Path, cache: Path, num_cases: int = 4, size: int = 32, depth: int = 12, seed: int = 0):
    """A few KiTS19-layout cases: an ellipsoid 'kidney' (label 1) holding a ball 'tumour' (label 2)."""
    from kitsmsan.data.kits19 import save_case
    from kitsmsan.data.preprocess import prepare_cache

    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:depth, :size, :size]
    for c in range(num_cases):
        image = (rng.normal(0, 20, (depth, size, size)) - 100).astype(np.float32)
        label = np.zeros((depth, size, size), np.uint8)
        cy, cx = size // 2 + rng.integers(-3, 4), size // 3 + rng.integers(-3, 4)
        kidney = ((y - cy) / (size / 6)) ** 2 + ((x - cx) / (size / 8)) ** 2 + (
            (z - depth / 2) / (depth / 3)
        ) ** 2 < 1
        tumor = ((y - cy) / (size / 14)) ** 2 + ((x - cx) / (size / 14)) ** 2 + (
            (z - depth / 2) / (depth / 5)
        ) ** 2 < 1
        label[kidney], image[kidney] = 1, image[kidney] + 250
        label[tumor], image[tumor] = 2, image[tumor] + 150
        save_case(root, f"case_{c:05d}", image, label, (3.0, 1.0, 1.0))
    prepare_cache(root, cache, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("traindata")
    make_cases(base / "data", base / "cache")
    return base


def tiny_config(data: Path, run_dir: Path, **overrides) -> TrainConfig:
    settings = dict(
        variant="msan_v1",
        data_root=str(data / "data"),
        cache_dir=str(data / "cache"),
        run_dir=str(run_dir),
        train_cases="0-2",
        test_cases="3",
        num_iters=10,
        lr_step=4,
        lr_gamma=0.5,
        log_every=5,
        ckpt_every=5,
        eval_every=0,
        eval_cases=1,
        workers=0,
        model={"base_channels": 4},
        progress=False,
        threads=1,
    )
    settings.update(overrides)
    return TrainConfig.from_preset("smoke", **settings)


def weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(Path(run_dir) / "checkpoints" / f"{which}.pt")["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_end_to_end_smoke_writes_a_self_describing_run(data, tmp_path):
    run = train(tiny_config(data, tmp_path / "run", eval_every=5))
    for name in (
        "config.json",
        "env.json",
        "metrics.jsonl",
        "summary.json",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run / name).is_file(), name
    assert TrainConfig.from_json(run / "config.json").num_iters == 10
    assert "commit" in json.loads((run / "env.json").read_text())
    rows = read_metrics(run)
    losses = [r for r in rows if "loss" in r]
    assert [r["iteration"] for r in losses] == [5, 10]
    assert all(0 <= r["loss"] <= 1 for r in losses)  # 1 - Dice
    assert losses[0]["lr"] == 1e-3 * 0.5 ** (5 // 4) * 3  # smoke lr 3e-3, halved at 4 (and 8)
    vals = [r for r in rows if "val_composite" in r]
    assert [r["iteration"] for r in vals] == [5, 10]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 10
    last = ckpt.load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["iteration"] == 10 and last["train_config"]["variant"] == "msan_v1"
    model = load_model(run)
    assert not model.training and model.config.base_channels == 4
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        train(tiny_config(data, tmp_path / "run"))


def test_resume_equals_uninterrupted_run(data, tmp_path):
    """N straight vs N/2 then resume to N (deep-supervised variant, lr decays in both halves)."""
    straight = train(tiny_config(data, tmp_path / "a", variant="msan_v2_ds", num_iters=8, ckpt_every=2))
    half = train(tiny_config(data, tmp_path / "b", variant="msan_v2_ds", num_iters=4, ckpt_every=2))
    assert ckpt.load_checkpoint(half / "checkpoints" / "last.pt")["iteration"] == 4
    resumed = resume(half, num_iters=8)
    assert_same_weights(weights(straight), weights(resumed))
    a, b = (
        ckpt.load_checkpoint(straight / "checkpoints/last.pt"),
        ckpt.load_checkpoint(resumed / "checkpoints/last.pt"),
    )
    assert a["scheduler"] == b["scheduler"]
    assert [r["iteration"] for r in read_metrics(resumed) if "loss" in r] == [
        4,
        5,
        8,
    ]  # 4 = end of the first half


def test_training_restores_process_wide_torch_state(data, tmp_path):
    """Training runs with its own thread count (and, on CUDA, cuDNN/TF32 settings) and hands the process
    back as it found it: a notebook cell after training is not single-threaded."""
    from kitsmsan.utils.torch_state import TorchState, torch_settings

    with torch_settings(threads=2):
        before = TorchState.capture()
        run = train(tiny_config(data, tmp_path / "state", num_iters=2, eval_cases=0, threads=1))
        assert TorchState.capture() == before and torch.get_num_threads() == 2
    assert json.loads((run / "env.json").read_text())["threads"] == 1  # what training itself ran with


def test_uint8_labels_train_bit_identical_to_int64(data, tmp_path, monkeypatch):
    """The uint8 fast path (labels widened on the device) changes nothing in the weights (issue #6)."""
    import kitsmsan.train.loop as dataset_module  # the loop's SliceWindowDataset

    fast = train(tiny_config(data, tmp_path / "uint8", num_iters=4, eval_cases=0))
    original = dataset_module.SliceWindowDataset
    seen = []

    def int64_dataset(*args, **kwargs):
        seen.append(kwargs.get("label_dtype"))
        kwargs["label_dtype"] = "int64"
        return original(*args, **kwargs)

    monkeypatch.setattr(dataset_module, "SliceWindowDataset", int64_dataset)
    slow = train(tiny_config(data, tmp_path / "int64", num_iters=4, eval_cases=0))
    assert seen == ["uint8"]  # the loop asks for the narrow labels
    assert_same_weights(weights(fast), weights(slow))


@pytest.mark.parametrize("name", ["config.json", "env.json", "metrics.jsonl"])
def test_full_disk_while_writing_run_files_names_the_file(data, tmp_path, monkeypatch, capsys, name):
    """ENOSPC on config.json / env.json / metrics.jsonl: one line naming the file, no traceback."""
    import errno

    import kitsmsan.train.loop as loop

    real = {
        "atomic_write_text": loop.atomic_write_text,
        "atomic_write_json": loop.atomic_write_json,
        "open": open,
    }

    def full(fn_name, path, *args, **kwargs):
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real[fn_name](path, *args, **kwargs)

    for fn_name in real:  # `open` is looked up in the module's globals before the builtins
        monkeypatch.setattr(loop, fn_name, lambda p, *a, _n=fn_name, **k: full(_n, p, *a, **k), raising=False)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError, match=rf"{name}: cannot write \(No space left on device\)"):
        train(tiny_config(data, run_dir, num_iters=2, log_every=1, eval_cases=0))
    if name == "config.json":  # nothing written yet: the new run folder is removed again
        assert not run_dir.exists()
    assert (
        _cli(
            "train",
            "--preset",
            "smoke",
            "--variant",
            "msan_v1",
            "--data",
            data / "data",
            "--cache",
            data / "cache",
            "--out",
            tmp_path / "cli",
            "--no-progress",
            "--set",
            "num_iters=2",
            "--set",
            "log_every=1",
            "--set",
            "model.base_channels=4",
            "--set",
            "train_cases=0-2",
            "--set",
            "test_cases=3",
            "--set",
            "eval_cases=0",
            "--set",
            "threads=1",
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0] and "No space left on device" in err[0]


def test_sample_index_scheme():
    # index = (iteration * world_size + rank) * batch_size + j  (CONTRIBUTING.md)
    assert sample_indices(0, 0, 1, 2) == [0, 1]
    assert sample_indices(3, 1, 2, 2) == [14, 15]
    seen = [i for it in range(5) for r in range(3) for i in sample_indices(it, r, 3, 2)]
    assert sorted(seen) == list(range(30))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    trainer = Trainer(tiny_config(data, tmp_path / "nan", num_iters=10, ckpt_every=2, log_every=100))
    real_loss, calls = trainer.loss_fn, {"n": 0}

    def sometimes_nan(outputs, target):
        calls["n"] += 1
        loss = real_loss(outputs, target)
        return loss * float("nan") if calls["n"] == 3 else loss  # iteration 3 only

    trainer.loss_fn = sometimes_nan
    with pytest.raises(TrainingError, match=r"NaN or infinite.*last good checkpoint.*iteration 2"):
        trainer.fit()
    state = ckpt.load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "summary.json").exists()


def _cli(*argv) -> int:
    from kitsmsan.cli import main

    return main([str(a) for a in argv])


def test_resume_refuses_a_malicious_checkpoint_and_runs_nothing(data, tmp_path, capsys):
    run = train(tiny_config(data, tmp_path / "run", num_iters=2, ckpt_every=1))
    (run / "summary.json").unlink()
    target = tmp_path / "created-by-pickle.txt"

    class Evil:
        def __reduce__(self):
            return (open, (str(target), "w"))

    state = ckpt.load_checkpoint(run / "checkpoints" / "last.pt")
    state["optimizer"] = Evil()
    torch.save(state, run / "checkpoints" / "last.pt")
    assert _cli("train", "--resume", run, "--no-progress") == 2
    err = capsys.readouterr().err
    assert "last.pt" in err and "refused" in err
    assert not target.exists()


def test_resume_with_a_checkpoint_of_another_variant_is_refused(data, tmp_path):
    other = train(tiny_config(data, tmp_path / "v2", variant="msan_v2", num_iters=2))
    run = train(tiny_config(data, tmp_path / "v1", variant="msan_v1", num_iters=2))
    (run / "summary.json").unlink()
    (run / "checkpoints" / "last.pt").write_bytes((other / "checkpoints" / "last.pt").read_bytes())
    with pytest.raises(CheckpointError, match=r"'msan_v2'.*'msan_v1'"):
        resume(run, num_iters=4)


def test_cli_train_and_bad_set(data, tmp_path, capsys):
    assert (
        _cli(
            "train",
            "--preset",
            "smoke",
            "--variant",
            "unet3d",
            "--data",
            data / "data",
            "--cache",
            data / "cache",
            "--out",
            tmp_path,
            "--no-progress",
            "--set",
            "num_iters=3",
            "--set",
            "model.base_channels=4",
            "--set",
            "train_cases=0-2",
            "--set",
            "test_cases=3",
            "--set",
            "eval_cases=0",
            "--set",
            "threads=1",
        )
        == 0
    )
    assert weights(tmp_path / "unet3d")
    assert _cli("train", "--data", data / "data", "--out", tmp_path / "x", "--set", "num_iters=-5") == 2
    assert "num_iters=-5" in capsys.readouterr().err
    assert not (tmp_path / "x" / "msan_v1").exists()


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_gives_identical_weights(data, tmp_path):
    """SIGKILL the training process 3 times at random moments; resuming each time ends exactly
    where an uninterrupted run ends."""
    n = 40
    straight = train(tiny_config(data, tmp_path / "straight", num_iters=n, ckpt_every=1, log_every=3))
    out = tmp_path / "killed"
    common = [
        "--set",
        f"num_iters={n}",
        "--set",
        "ckpt_every=1",
        "--set",
        "log_every=3",
        "--set",
        "lr_step=4",
        "--set",
        "lr_gamma=0.5",
        "--set",
        "train_cases=0-2",
        "--set",
        "test_cases=3",
        "--set",
        "eval_cases=1",
        "--set",
        "eval_every=0",
        "--set",
        "model.base_channels=4",
        "--set",
        "threads=1",
    ]
    first = [
        sys.executable,
        "-m",
        "kitsmsan",
        "train",
        "--preset",
        "smoke",
        "--variant",
        "msan_v1",
        "--data",
        str(data / "data"),
        "--cache",
        str(data / "cache"),
        "--out",
        str(out),
        "--no-progress",
        *common,
    ]
    again = [sys.executable, "-m", "kitsmsan", "train", "--resume", str(out / "msan_v1"), "--no-progress"]
    rng = random.Random(1234)
    last = out / "msan_v1" / "checkpoints" / "last.pt"
    kills, iteration = 0, 0
    for attempt in range(3):
        proc = subprocess.Popen(
            first if attempt == 0 else again, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            deadline = time.time() + 60
            while True:  # wait for training to make progress past the previous kill
                assert time.time() < deadline, "no progress"
                if proc.poll() is not None:
                    break
                try:
                    it = ckpt.load_checkpoint(last)["iteration"] if last.is_file() else -1
                except CheckpointError:  # caught between replace and read: retry
                    it = -1
                if it > iteration:
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                kills += 1
        finally:
            if proc.poll() is None:
                proc.kill()
        iteration = ckpt.load_checkpoint(last)["iteration"]
        assert iteration < n or proc.returncode == 0
    assert kills >= 2, "training finished before it could be killed"
    done = subprocess.run(again, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert_same_weights(weights(straight), weights(out / "msan_v1"))
    assert not list((out / "msan_v1" / "checkpoints").glob(".*.tmp"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, config_json: str, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    from kitsmsan.data import dataset as ds_mod
    from kitsmsan.train.distributed import cleanup

    seen: list[int] = []
    original = ds_mod.SliceWindowDataset.__getitem__

    def recording(self, i):
        seen.append(int(i))
        return original(self, i)

    ds_mod.SliceWindowDataset.__getitem__ = recording
    torch.set_num_threads(1)
    trainer = Trainer(TrainConfig.from_dict(json.loads(config_json)))
    try:
        trainer.fit()
        torch.save(trainer.net.state_dict(), Path(out_dir) / f"rank{rank}.pt")
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(seen))
    finally:
        cleanup(trainer.dist)


@pytest.mark.slow
def test_ddp_two_gloo_processes_shard_samples_and_agree_on_weights(data, tmp_path):
    import torch.multiprocessing as mp

    config = tiny_config(data, tmp_path / "ddp", num_iters=4, batch_size=2, eval_cases=0)
    mp.spawn(
        _ddp_worker, args=(2, _free_port(), json.dumps(config.to_dict()), str(tmp_path)), nprocs=2, join=True
    )
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert seen[0] == [i for it in range(4) for i in sample_indices(it, 0, 2, 2)]
    assert seen[1] == [i for it in range(4) for i in sample_indices(it, 1, 2, 2)]
    assert not set(seen[0]) & set(seen[1])
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert_same_weights(w0, w1)
    assert_same_weights(w0, weights(tmp_path / "ddp"))  # rank 0 wrote the run folder
    assert json.loads((tmp_path / "ddp" / "env.json").read_text())["world_size"] == 2


def test_validation_never_reads_a_test_case(data, tmp_path):
    """Validation scores the last training cases; with the test case's cache gone it still runs."""
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(data / "cache", copy)
    trainer = Trainer(tiny_config(data, tmp_path / "run", cache_dir=str(copy), eval_cases=2))
    assert trainer.test_cases == ["case_00003"]
    shutil.rmtree(copy / "case_00003")  # a validation that touched the test case would fail now
    scores = trainer.validate()
    assert scores is not None and 0 <= scores["composite"] <= 1
