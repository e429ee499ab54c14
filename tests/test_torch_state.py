"""kitsmsan.utils.torch_state: process-wide torch settings are set for a block and restored after it,
also when the block fails (training and the benchmarks use it)."""

from __future__ import annotations

import pytest
import torch

from kitsmsan.utils.torch_state import TorchState, torch_settings


def test_settings_hold_inside_and_are_restored_after_an_error():
    before = TorchState.capture()
    threads = 1 if before.threads != 1 else 2
    with pytest.raises(RuntimeError, match="inside"):
        with torch_settings(
            threads=threads,
            cudnn_benchmark=not before.cudnn_benchmark,
            tf32=not before.tf32_matmul,
            deterministic=not before.deterministic,
        ) as inside:
            assert inside.threads == torch.get_num_threads() == threads
            assert torch.backends.cudnn.benchmark is (not before.cudnn_benchmark)
            assert (
                torch.backends.cuda.matmul.allow_tf32
                is torch.backends.cudnn.allow_tf32
                is (not before.tf32_matmul)
            )
            assert torch.are_deterministic_algorithms_enabled() is (not before.deterministic)
            raise RuntimeError("inside")
    assert TorchState.capture() == before


def test_none_leaves_a_setting_alone():
    before = TorchState.capture()
    with torch_settings() as inside:
        assert inside == before
    assert TorchState.capture() == before
