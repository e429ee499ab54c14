"""The GPU fast path, checked on a CPU: kitsmsan.utils.amp's mixed-precision dtype per device (one rule
for training, inference and the benchmark; the GPUs are faked, only the compute capability is read),
and the parameter/gradient layout that fused Adam needs under channels_last_3d (issue #6)."""

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


@pytest.mark.parametrize("variant", ["unet3d", "msan_v2_ds"])
def test_channels_last_grads_fit_fused_adam(variant):
    """The GPU preset combines channels_last_3d with fused Adam. Fused Adam's CUDA kernel needs every
    parameter and its gradient laid out alike, ignoring size-1 dimensions (PyTorch >= 2.5, pytorch#134546;
    hence the package's torch floor). The 1x1x1 convolutions (attention, Res2Net, heads) get gradients
    whose strides differ from their weights', but only in size-1 dimensions: check that this stays so."""
    from kitsmsan.losses import DeepSupervisionLoss, DiceLoss
    from kitsmsan.models import build_model

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kernels that give the 1x1x1 weights' gradients other size-1 strides
    try:
        net = build_model(variant, base_channels=4).to(memory_format=torch.channels_last_3d)
        x = torch.rand(2, 1, 4, 32, 32).to(memory_format=torch.channels_last_3d)
        y = torch.randint(0, 3, (2, 4, 32, 32))
        loss = (DeepSupervisionLoss(DiceLoss()) if net.config.deep_supervision else DiceLoss())(net(x), y)
        loss.backward()
    finally:
        torch.set_num_threads(threads)
    for name, p in net.named_parameters():
        # whether a size-1 stride differs depends on the CPU kernel chosen (it does on one thread)
        strides = [dim for dim, (a, b) in enumerate(zip(p.stride(), p.grad.stride())) if a != b]
        assert all(p.shape[dim] == 1 for dim in strides), f"{name}: {tuple(p.shape)} {p.stride()} vs {p.grad.stride()}"
