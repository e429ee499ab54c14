"""The GPU fast path, checked on a CPU: kitsmsan.utils.amp's mixed-precision dtype per device (one rule
for training, inference and the benchmark; the GPUs are faked, only the compute capability is read),
and the parameter/gradient layout that fused Adam needs under channels_last_3d (issue #6)."""

from __future__ import annotations

import pytest
import torch

from kitsmsan.errors import ConfigError
from kitsmsan.utils.amp import AMP_MODES, mixed_precision_dtype, resolve_amp


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend a CUDA GPU of the given compute capability is present."""

    def install(major: int, minor: int = 0):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
        # is_bf16_supported() with its default emulation check says True even on a T4: never asked
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        monkeypatch.setattr(torch.version, "hip", None)

    return install


@pytest.mark.parametrize(
    "gpu, capability, dtype",
    [
        ("T4 (Colab free tier)", (7, 5), torch.float16),
        ("V100", (7, 0), torch.float16),
        ("A100", (8, 0), torch.bfloat16),
        ("L4", (8, 9), torch.bfloat16),
        ("H100", (9, 0), torch.bfloat16),
    ],
)
def test_bf16_only_where_native(fake_gpu, gpu, capability, dtype):
    fake_gpu(*capability)
    cuda = torch.device("cuda")
    assert mixed_precision_dtype(cuda) is dtype, gpu
    assert resolve_amp("auto", cuda) is dtype and resolve_amp(None, cuda) is dtype  # the default on CUDA
    assert resolve_amp("on", cuda) is dtype and resolve_amp(True, cuda) is dtype
    # an explicit choice is kept as asked
    assert resolve_amp("bf16", cuda) is torch.bfloat16 and resolve_amp("fp16", cuda) is torch.float16
    assert resolve_amp("off", cuda) is None and resolve_amp(False, cuda) is None


def test_cpu():
    assert mixed_precision_dtype("cpu") is torch.bfloat16
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None and resolve_amp(None, cpu) is None  # "auto": CUDA only
    assert resolve_amp("on", cpu) is torch.bfloat16 and resolve_amp("bf16", cpu) is torch.bfloat16


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
        assert all(p.shape[dim] == 1 for dim in strides), (
            f"{name}: {tuple(p.shape)} {p.stride()} vs {p.grad.stride()}"
        )


@pytest.mark.parametrize("value", AMP_MODES)
def test_train_and_predict_accept_the_same_values(value, tmp_path):
    """One value set: what `predict --amp` takes, `train --set amp=` takes too (and the reverse)."""
    from kitsmsan.inference import predict_case
    from kitsmsan.train import TrainConfig
    from kitsmsan.train.config import parse_overrides

    config = TrainConfig.from_preset("smoke", **parse_overrides([f"amp={value}"]))
    assert config.amp == value
    labels = predict_case(torch.nn.Conv3d(1, 3, 1), torch.zeros(4, 16, 16).numpy(), amp=value)
    assert labels.shape == (4, 16, 16)
    assert resolve_amp(config.amp, torch.device("cpu")) == resolve_amp(value, "cpu")


def test_one_message_for_a_bad_value():
    from kitsmsan.inference import predict_case
    from kitsmsan.train import TrainConfig

    expected = "amp='maybe': expected one of auto, on, off, bf16, fp16"
    with pytest.raises(ConfigError) as train_error:
        TrainConfig.from_preset("smoke", amp="maybe")
    with pytest.raises(ConfigError) as predict_error:
        predict_case(torch.nn.Conv3d(1, 3, 1), torch.zeros(4, 16, 16).numpy(), amp="maybe")
    assert str(train_error.value) == f"config: {expected}" and str(predict_error.value) == expected
