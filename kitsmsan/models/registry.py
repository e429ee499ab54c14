"""The five named networks of the paper's ensemble (MSAN paper, §3.1) and how to build them.

Each name is a set of switches on :class:`~kitsmsan.models.msan.ModelConfig`; every other field keeps
its default unless overridden: ``build_model("msan_v2_ds", base_channels=16)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kitsmsan.errors import ConfigError
from kitsmsan.models.msan import MSAN, ModelConfig


@dataclass(frozen=True)
class ModelSpec:
    """A registered variant.

    Attributes:
        name: registry name.
        title: the paper's name of the network (Table 1).
        description: one line on what it adds.
        switches: the :class:`ModelConfig` fields it sets.
    """

    name: str
    title: str
    description: str
    switches: Mapping[str, Any] = field(default_factory=dict)


#: the paper's five networks (§3.1), in the order of the ensemble list
MODEL_REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("unet3d", "3D U-Net", "baseline 3D U-Net (Cicek et al. 2016)", {}),
        ModelSpec(
            "msan_v1",
            "MSAN-V1",
            "3D U-Net + multi-scale attention on every skip (Fig. 1)",
            {"attention": True},
        ),
        ModelSpec(
            "msan_v1_ds",
            "MSAN-V1 with deep supervision",
            "MSAN-V1 + auxiliary heads at the last two poolings",
            {"attention": True, "deep_supervision": True},
        ),
        ModelSpec(
            "msan_v2",
            "MSAN-V2",
            "MSAN-V1 + 3D Res2Net block parallel to the bottleneck (Fig. 2-3)",
            {"attention": True, "res2net": True},
        ),
        ModelSpec(
            "msan_v2_ds",
            "MSAN-V2 with deep supervision",
            "MSAN-V2 + auxiliary heads at the last two poolings",
            {"attention": True, "res2net": True, "deep_supervision": True},
        ),
    )
}


def list_models() -> list[str]:
    """The registered names, in the paper's order: ``["unet3d", "msan_v1", "msan_v1_ds", "msan_v2", "msan_v2_ds"]``."""
    return list(MODEL_REGISTRY)


def _spec(name: str) -> ModelSpec:
    if not isinstance(name, str) or name not in MODEL_REGISTRY:
        raise ConfigError(f"model {name!r}: unknown name, expected one of {', '.join(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[name]


def describe(name: str) -> str:
    """``"<title>: <description>"`` of a registered variant.

    Raises:
        ConfigError: for an unknown name.
    """
    spec = _spec(name)
    return f"{spec.title}: {spec.description}"


def model_config(name: str, /, **overrides: Any) -> ModelConfig:
    """The resolved :class:`ModelConfig` of a registered variant with ``overrides`` applied.

    Args:
        name: a name from :func:`list_models`.
        **overrides: any :class:`ModelConfig` field except ``name`` (e.g. ``base_channels=16``).

    Raises:
        ConfigError: (a ``ValueError``) naming an unknown model name, an unknown override or a bad value.
    """
    spec = _spec(name)
    known = {f.name for f in dataclasses.fields(ModelConfig)} - {"name"}
    for key in overrides:
        if key not in known:
            raise ConfigError(f"model {name!r}: unknown override {key!r} (known: {', '.join(sorted(known))})")
    try:
        return ModelConfig(name=name, **{**spec.switches, **overrides})
    except ConfigError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None


def build_model(name: str, /, **overrides: Any) -> MSAN:
    """Build a registered network (weights from the current torch RNG state: seed before calling).

    Args:
        name: ``"unet3d"``, ``"msan_v1"``, ``"msan_v1_ds"``, ``"msan_v2"`` or ``"msan_v2_ds"``.
        **overrides: :class:`ModelConfig` fields to change, e.g. ``base_channels=16``.

    Returns:
        The :class:`MSAN`; ``model.config`` is the resolved config.

    Raises:
        ConfigError: (a ``ValueError``) naming an unknown name or override, or a bad value.
    """
    return MSAN(model_config(name, **overrides))


def build_model_from_config(config: ModelConfig | Mapping[str, Any]) -> MSAN:
    """Rebuild a network from a :class:`ModelConfig` or its :meth:`~ModelConfig.to_dict` form (checkpoints).

    Raises:
        ConfigError: for an unknown key or bad value in a dict, or another type.
    """
    if isinstance(config, ModelConfig):
        return MSAN(config)
    if isinstance(config, Mapping):
        return MSAN(ModelConfig.from_dict(config))
    raise ConfigError(f"model config: expected a ModelConfig or a dict, got {type(config).__name__}")
