"""The MSAN network family (MSAN paper, §2.2, Fig. 1–3) and its registry of the paper's five networks.

>>> from kitsmsan.models import build_model, list_models
>>> list_models()
['unet3d', 'msan_v1', 'msan_v1_ds', 'msan_v2', 'msan_v2_ds']
>>> model = build_model("msan_v2_ds", base_channels=8)   # model.config is the resolved ModelConfig

Modules: :mod:`~kitsmsan.models.blocks` (``ConvBlock``, ``MultiScaleAttention``, ``Res2NetBlock3d``),
:mod:`~kitsmsan.models.msan` (``ModelConfig``, ``MSAN``), :mod:`~kitsmsan.models.registry` (the five
names), :mod:`~kitsmsan.models.report` (parameters, FLOPs, output shapes). The counted GPU memory of a training
step (what fits which GPU, projected hours) is a benchmark: :mod:`kitsmsan.bench.memory`.
"""

from kitsmsan.models.blocks import ConvBlock, MultiScaleAttention, Res2NetBlock3d
from kitsmsan.models.msan import MSAN, NUM_POOLS, ModelConfig
from kitsmsan.models.registry import (
    MODEL_REGISTRY,
    ModelSpec,
    build_model,
    build_model_from_config,
    describe,
    list_models,
    model_config,
)
from kitsmsan.models.report import PAPER_INPUT, count_flops, count_parameters, count_train_flops, model_report

__all__ = [
    "MSAN",
    "MODEL_REGISTRY",
    "NUM_POOLS",
    "PAPER_INPUT",
    "ConvBlock",
    "ModelConfig",
    "ModelSpec",
    "MultiScaleAttention",
    "Res2NetBlock3d",
    "build_model",
    "build_model_from_config",
    "count_flops",
    "count_train_flops",
    "count_parameters",
    "describe",
    "list_models",
    "model_config",
    "model_report",
]
