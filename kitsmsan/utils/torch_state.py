"""Process-wide torch settings (CPU threads, cuDNN autotuning, TF32, deterministic algorithms), set for
the duration of a block and restored afterwards.

Training and the benchmarks change these for speed; a notebook that trains in one cell must not run
every later cell single-threaded or with TF32 on. Use :func:`torch_settings` around such work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TorchState:
    """A snapshot of the settings :func:`torch_settings` manages."""

    threads: int
    cudnn_benchmark: bool
    tf32_matmul: bool
    tf32_conv: bool
    deterministic: bool
    deterministic_warn_only: bool

    @classmethod
    def capture(cls) -> TorchState:
        """The current settings of this process."""
        return cls(
            threads=torch.get_num_threads(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_conv=torch.backends.cudnn.allow_tf32,
            deterministic=torch.are_deterministic_algorithms_enabled(),
            deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
        )

    def apply(self) -> None:
        """Make these the settings of this process."""
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = self.tf32_matmul
        torch.backends.cudnn.allow_tf32 = self.tf32_conv
        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)


@contextlib.contextmanager
def torch_settings(
    *,
    threads: int | None = None,
    cudnn_benchmark: bool | None = None,
    tf32: bool | None = None,
    deterministic: bool | None = None,
) -> Iterator[TorchState]:
    """Set process-wide torch settings inside the block, restore the previous ones on exit (also on error).

    Args:
        threads: CPU threads (:func:`torch.set_num_threads`); default None: unchanged (0 too).
        cudnn_benchmark: ``torch.backends.cudnn.benchmark``; default None: unchanged.
        tf32: TF32 for CUDA matmuls and convolutions; default None: unchanged.
        deterministic: :func:`torch.use_deterministic_algorithms` (with ``warn_only=True``);
            default None: unchanged.

    Yields:
        The settings in force inside the block.
    """
    saved = TorchState.capture()
    try:
        if threads:
            torch.set_num_threads(int(threads))
        if cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
            torch.backends.cudnn.allow_tf32 = bool(tf32)
        if deterministic is not None:
            torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
        yield TorchState.capture()
    finally:
        saved.apply()


__all__ = ["TorchState", "torch_settings"]
