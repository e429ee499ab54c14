"""kitsmsan.utils.device: the one device resolver. Training, inference and the benchmark call it, so a
bad or unavailable device gets the same answer and the same message everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kitsmsan.bench
from kitsmsan.bench import bench_inference
from kitsmsan.errors import ConfigError
from kitsmsan.inference import predict_case
from kitsmsan.train import TrainConfig
from kitsmsan.train.loop import Trainer
from kitsmsan.utils.device import resolve_device


@pytest.mark.parametrize(
    "given, expected",
    [
        ("cpu", torch.device("cpu")),
        (torch.device("cpu"), torch.device("cpu")),
    ],
)
def test_explicit_devices(given, expected):
    assert resolve_device(given) == expected


def test_auto_and_none_follow_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)  # torchrun: the local GPU
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)  # an explicit index wins


@pytest.mark.parametrize(
    "bad, match",
    [
        ("tpu", "device='tpu': not a torch device"),
        ("meta", "device='meta': kitsmsan runs on cpu or cuda only"),
    ],
)
def test_bad_devices(bad, match):
    with pytest.raises(ConfigError, match=match):
        resolve_device(bad)


def _messages(device: str, tmp_path) -> list[str]:
    """The error each entry point gives for ``device``: inference, the benchmark, training."""
    messages = []
    calls = [
        lambda: predict_case(torch.nn.Conv3d(1, 3, 1), np.zeros((4, 16, 16)), device=device),
        lambda: bench_inference(device=device, verbose=False),
        lambda: Trainer(
            TrainConfig.from_preset(
                "smoke", device=device, run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache")
            )
        ),
    ]
    for call in calls:
        with pytest.raises(ConfigError) as info:
            call()
        messages.append(str(info.value))
    return messages


def test_one_resolver_one_message(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert kitsmsan.bench.resolve_device is resolve_device
    assert _messages("cuda", tmp_path) == ["device='cuda': CUDA is not available on this machine"] * 3
