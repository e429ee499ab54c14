"""kitsmsan.utils.amp: the mixed-precision dtype per device, one rule for training, inference and
the benchmark. The GPUs are faked (this suite runs on CPUs): only the compute capability is read."""

from __future__ import annotations

import pytest
import torch

from kitsmsan.inference import resolve_amp as inference_amp
from kitsmsan.train.loop import resolve_amp as train_amp
from kitsmsan.utils.amp import mixed_precision_dtype


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend a CUDA GPU of the given compute capability is present."""
    def install(major: int, minor: int = 0):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
        # is_bf16_supported() with its default emulation check says True even on a T4: never asked
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        monkeypatch.setattr(torch.version, "hip", None)
    return install


@pytest.mark.parametrize("gpu, capability, dtype", [
    ("T4 (Colab free tier)", (7, 5), torch.float16),
    ("V100", (7, 0), torch.float16),
    ("A100", (8, 0), torch.bfloat16),
    ("L4", (8, 9), torch.bfloat16),
    ("H100", (9, 0), torch.bfloat16),
])
def test_bf16_only_where_native(fake_gpu, gpu, capability, dtype):
    fake_gpu(*capability)
    cuda = torch.device("cuda")
    assert mixed_precision_dtype(cuda) is dtype, gpu
    assert train_amp("auto", cuda) is dtype          # training's "auto"
    assert inference_amp("on", cuda) is dtype        # inference's "on"
    assert inference_amp(None, cuda) is dtype        # inference's default on CUDA
    # an explicit choice is kept as asked
    assert train_amp("bf16", cuda) is torch.bfloat16 and train_amp("fp16", cuda) is torch.float16
    assert train_amp("off", cuda) is None


def test_cpu():
    assert mixed_precision_dtype("cpu") is torch.bfloat16
    assert train_amp("auto", torch.device("cpu")) is None  # training never autocasts on CPU
    assert inference_amp(None, torch.device("cpu")) is None and inference_amp("on", torch.device("cpu")) is torch.bfloat16
