"""The MSAN network family: one 3D U-Net with three switches (MSAN paper, §2.2, Fig. 1–3; §3.1).

The five networks of the paper's ensemble are one class, :class:`MSAN`, configured by one dataclass,
:class:`ModelConfig`:

======================  =========  =========  ================
variant                 attention  res2net    deep_supervision
======================  =========  =========  ================
3D U-Net (``unet3d``)   off        off        off
MSAN-V1                 on         off        off
MSAN-V1 + DS            on         off        on
MSAN-V2                 on         on         off
MSAN-V2 + DS            on         on         on
======================  =========  =========  ================

The named configs live in :mod:`kitsmsan.models.registry`. The shape of the U (decided here, since
the paper leaves it open; see ``book/fragments/decisions-models.md``):

* five levels, four max-poolings; widths ``base · (1, 2, 4, 8, 16)`` capped at ``max_channels``
  (32, 64, 128, 256, 512 at the default base 32);
* pooling halves H and W at every level; it halves D (the paper's 4 slices) only in the first
  ``pool_depth`` poolings (default 0: the slice axis is never pooled, so 4 slices reach the bottleneck);
* each stage is two ``3×3×3 conv → instance norm → LeakyReLU(0.01)``; upsampling by transposed
  convolution with kernel = stride = the pooling window; skip connections by concatenation;
  a ``1×1×1`` convolution gives the logits of the 3 classes (background, kidney, tumour).

Input ``(B, 1, D, H, W)`` (D = 4 in the paper), output logits ``(B, 3, D, H, W)``. Accepted sizes:
H and W divisible by 16; D divisible by ``2**pool_depth`` (see :meth:`MSAN.check_input`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kitsmsan.errors import ConfigError, DataError
from kitsmsan.models.blocks import (
    ACTIVATIONS,
    NORMS,
    ConvBlock,
    MultiScaleAttention,
    Res2NetBlock3d,
)

#: number of max-poolings of the encoder (five levels, x0 … x4)
NUM_POOLS = 4

#: where the deep-supervision heads read their features (:attr:`ModelConfig.ds_placement`), and the
#: two maps each reading uses, finest first. ``"pooling"`` (default) is the paper's literal "last two
#: max pooling of the encoding part" (§2.2): the resolutions those poolings produce, ⅛ and 1/16 —
#: the decoder stage u3 and the bottleneck output x4 (after the Res2Net fusion in MSAN-V2).
#: ``"decoder"`` reads the decoder stages u2 (¼) and u3 (⅛), the package's earlier placement.
DS_PLACEMENTS = {"pooling": ("u3", "x4"), "decoder": ("u2", "u3")}


@dataclass
class ModelConfig:
    """Everything that defines an :class:`MSAN` network; saved in every checkpoint (nanoGPT style).

    Attributes:
        name: the registry name this config came from (``"unet3d"``, ``"msan_v1"``, …) or
            ``"custom"``. Informational only. Default ``"custom"``.
        in_channels: input channels (1: one CT intensity channel). Default 1.
        num_classes: output classes (3: background, kidney, tumour). Default 3.
        base_channels: width of the first level; level ``l`` has ``base_channels * 2**l`` channels.
            Default 32.
        max_channels: cap on any level's width. Default 512 (no cap at base 32).
        pool_depth: how many of the first poolings also halve D (0–4). Default 0: pool ``(1, 2, 2)``
            everywhere, so the 4 input slices are never pooled away.
        norm: ``"instance"``, ``"group"`` or ``"batch"``. Default ``"instance"``.
        activation: ``"leakyrelu"`` or ``"relu"``. Default ``"leakyrelu"``.
        negative_slope: LeakyReLU slope (also the gain of the Kaiming initialisation). Default 0.01.
        attention: multi-scale attention on every skip connection (MSAN, §2.2, Fig. 1). Default False.
        res2net: a 3D Res2Net block parallel to the bottleneck (MSAN-V2, §2.2, Fig. 2–3). Default False.
        res2net_scale: number of groups ``s`` of the Res2Net block (≥ 2, must divide the bottleneck
            width). Default 4 (Gao et al.'s usual setting; the MSAN paper states none).
        deep_supervision: two auxiliary heads (§2.2, §3.1); in training mode the forward returns
            ``[logits, aux_1, aux_2]``, finest first. Default False.
        ds_placement: where those heads read (:data:`DS_PLACEMENTS`): ``"pooling"`` (default, the
            paper's literal "last two max pooling": u3 at ⅛ and the bottleneck x4 at 1/16 of H, W) or
            ``"decoder"`` (u2 at ¼ and u3 at ⅛).

    Raises:
        ConfigError: on construction, naming the field, for a wrong type or out-of-range value.
    """

    name: str = "custom"
    in_channels: int = 1
    num_classes: int = 3
    base_channels: int = 32
    max_channels: int = 512
    pool_depth: int = 0
    norm: str = "instance"
    activation: str = "leakyrelu"
    negative_slope: float = 0.01
    attention: bool = False
    res2net: bool = False
    res2net_scale: int = 4
    deep_supervision: bool = False
    ds_placement: str = "pooling"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"{f.name}={value!r}: expected an integer")
            elif f.type in ("bool", bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"{f.name}={value!r}: expected true or false")
            elif f.type in ("str", str):
                if not isinstance(value, str):
                    raise ConfigError(f"{f.name}={value!r}: expected a string")
            elif f.type in ("float", float):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"{f.name}={value!r}: expected a number")
        for key in ("in_channels", "base_channels"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)}: must be at least 1")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes={self.num_classes}: must be at least 2")
        if self.max_channels < self.base_channels:
            raise ConfigError(
                f"max_channels={self.max_channels}: must be at least base_channels={self.base_channels}"
            )
        if not 0 <= self.pool_depth <= NUM_POOLS:
            raise ConfigError(f"pool_depth={self.pool_depth}: must be between 0 and {NUM_POOLS}")
        if self.norm not in NORMS:
            raise ConfigError(f"norm={self.norm!r}: unknown normalisation, expected one of {NORMS}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"activation={self.activation!r}: unknown activation, expected one of {ACTIVATIONS}"
            )
        if self.negative_slope < 0:
            raise ConfigError(f"negative_slope={self.negative_slope}: must be non-negative")
        if self.ds_placement not in DS_PLACEMENTS:
            raise ConfigError(
                f"ds_placement={self.ds_placement!r}: expected one of {', '.join(DS_PLACEMENTS)}"
            )
        if self.res2net_scale < 2:
            raise ConfigError(f"res2net_scale={self.res2net_scale}: must be at least 2")
        if self.res2net and self.channels[-1] % self.res2net_scale:
            raise ConfigError(
                f"res2net_scale={self.res2net_scale}: must divide the bottleneck width {self.channels[-1]}"
            )

    @property
    def channels(self) -> tuple[int, ...]:
        """Widths of the five levels, ``min(base · 2**l, max_channels)`` for ``l = 0 … 4``."""
        return tuple(min(self.base_channels * 2**level, self.max_channels) for level in range(NUM_POOLS + 1))

    @property
    def pool_sizes(self) -> tuple[tuple[int, int, int], ...]:
        """The four pooling (and transposed-conv) windows: ``(2, 2, 2)`` for the first ``pool_depth``, else ``(1, 2, 2)``."""
        return tuple((2, 2, 2) if level < self.pool_depth else (1, 2, 2) for level in range(NUM_POOLS))

    @property
    def divisor(self) -> tuple[int, int, int]:
        """``(d_D, d_H, d_W)``: D, H and W of the input must be multiples of these (``(2**pool_depth, 16, 16)``)."""
        return (2**self.pool_depth, 2**NUM_POOLS, 2**NUM_POOLS)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (what checkpoints store)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Rebuild a config from :meth:`to_dict` output.

        Raises:
            ConfigError: if ``data`` is not a mapping, has a key that is not a field (named in the
                message), or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"model config: expected a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f"model config: unknown key {key!r} (known: {', '.join(sorted(known))})")
        return cls(**dict(data))


class MSAN(nn.Module):
    """3D U-Net / MSAN-V1 / MSAN-V2, with or without deep supervision (MSAN paper, §2.2, Fig. 1–3).

    The forward is written out level by level — ``x0 … x4`` down, ``u3 … u0`` up:

    * encoder: ``x0 = enc0(image)``, ``x_l = enc_l(pool(x_{l-1}))``; bottleneck ``x4 = enc4(pool(x3))``;
    * MSAN-V2: ``x4 = enc4(p3) + res2net(p3)`` with ``p3 = pool(x3)`` — the Res2Net block runs
      parallel to the bottom branch, fed only the smallest feature maps, fused by a sum;
    * decoder: ``u_l = dec_l(cat(up_l(u_{l+1}), skip_l))`` with ``u4 = x4``; the skip is ``x_l``, or
      with attention ``MultiScaleAttention(x_l, u_{l+1})``: the encoder features recalibrated by the
      coarser decoder features one level deeper;
    * heads: ``logits = head(u0)``; with deep supervision two ``1×1×1`` auxiliary heads more, placed
      by ``config.ds_placement`` (:data:`DS_PLACEMENTS`): ``"pooling"`` (default) —
      ``aux_1 = aux_head_u3(u3)`` (⅛ of H, W) and ``aux_2 = aux_head_x4(x4)`` (1/16, the bottleneck
      output after the Res2Net fusion), the resolutions of the encoder's last two max-poolings (§2.2);
      ``"decoder"`` — ``aux_1 = aux_head_u2(u2)`` (¼) and ``aux_2 = aux_head_u3(u3)`` (⅛).

    Convolutions are initialised with Kaiming-normal (``a = negative_slope``), biases with zeros.

    Args:
        config: the :class:`ModelConfig`; kept as ``self.config``.

    Shape:
        input ``(B, in_channels, D, H, W)``; output logits ``(B, num_classes, D, H, W)``, or in training
        mode with deep supervision ``[(B, K, D, H, W), (B, K, D/a, H/8, W/8), (B, K, D/b, H/16, W/16)]``
        (``"pooling"``) or ``[…, (B, K, D/a, H/4, W/4), (B, K, D/b, H/8, W/8)]`` (``"decoder"``);
        ``a``, ``b`` are 1 unless ``pool_depth`` > 0.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ConfigError(f"config: expected a ModelConfig, got {type(config).__name__}")
        self.config = config
        c0, c1, c2, c3, c4 = config.channels
        s0, s1, s2, s3 = config.pool_sizes
        kw = dict(norm=config.norm, activation=config.activation, negative_slope=config.negative_slope)

        # encoder (left side of the U)
        self.enc0 = ConvBlock(config.in_channels, c0, **kw)
        self.pool0, self.enc1 = nn.MaxPool3d(s0, s0), ConvBlock(c0, c1, **kw)
        self.pool1, self.enc2 = nn.MaxPool3d(s1, s1), ConvBlock(c1, c2, **kw)
        self.pool2, self.enc3 = nn.MaxPool3d(s2, s2), ConvBlock(c2, c3, **kw)
        self.pool3, self.enc4 = nn.MaxPool3d(s3, s3), ConvBlock(c3, c4, **kw)  # the bottom branch
        self.res2net = (
            Res2NetBlock3d(c3, c4, config.res2net_scale, **kw) if config.res2net else None
        )  # MSAN-V2 (Fig. 2)

        # decoder (right side of the U)
        self.up3, self.dec3 = nn.ConvTranspose3d(c4, c3, s3, s3), ConvBlock(2 * c3, c3, **kw)
        self.up2, self.dec2 = nn.ConvTranspose3d(c3, c2, s2, s2), ConvBlock(2 * c2, c2, **kw)
        self.up1, self.dec1 = nn.ConvTranspose3d(c2, c1, s1, s1), ConvBlock(2 * c1, c1, **kw)
        self.up0, self.dec0 = nn.ConvTranspose3d(c1, c0, s0, s0), ConvBlock(2 * c0, c0, **kw)
        if config.attention:  # MSAN (Fig. 1): one attention layer per skip connection
            self.att3 = MultiScaleAttention(c3, c4)
            self.att2 = MultiScaleAttention(c2, c3)
            self.att1 = MultiScaleAttention(c1, c2)
            self.att0 = MultiScaleAttention(c0, c1)

        self.head = nn.Conv3d(c0, config.num_classes, kernel_size=1)
        if config.deep_supervision:  # one 1x1x1 head per map of DS_PLACEMENTS[ds_placement]
            width = {"u2": c2, "u3": c3, "x4": c4}
            for source in DS_PLACEMENTS[config.ds_placement]:
                setattr(
                    self, f"aux_head_{source}", nn.Conv3d(width[source], config.num_classes, kernel_size=1)
                )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convolution weights (``a = negative_slope``, fan-in), zero biases; norms at 1/0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(module.weight, a=self.config.negative_slope)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse an input the network cannot take, before any computation.

        Rule: a floating-point ``(B, in_channels, D, H, W)`` tensor with ``B ≥ 1``; H and W multiples
        of 16 (four poolings of 2); D a multiple of ``2**pool_depth``; with instance norm the
        bottleneck must keep more than one voxel (``D/2**pool_depth · H/16 · W/16 > 1``).

        Raises:
            DataError: (a ``ValueError``) naming the shape and the rule it breaks.
        """
        if not isinstance(x, torch.Tensor):
            raise DataError(f"model input: expected a torch.Tensor, got {type(x).__name__}")
        shape = tuple(x.shape)
        if x.ndim != 5:
            raise DataError(f"model input of shape {shape}: expected 5 dimensions (B, C, D, H, W)")
        if not x.is_floating_point():
            raise DataError(f"model input of shape {shape}: expected a floating-point tensor, got {x.dtype}")
        b, c, d, h, w = shape
        if b < 1:
            raise DataError(f"model input of shape {shape}: empty batch")
        if c != self.config.in_channels:
            raise DataError(
                f"model input of shape {shape}: expected {self.config.in_channels} channel(s) in dimension 1"
            )
        dd, dh, dw = self.config.divisor
        if d < dd or d % dd or h < dh or h % dh or w < dw or w % dw:
            raise DataError(
                f"model input of shape {shape}: D must be a positive multiple of {dd} "
                f"(pool_depth={self.config.pool_depth}) and H, W positive multiples of {dh} "
                f"({NUM_POOLS} poolings of 2); e.g. crop to (B, {c}, {max(dd, d - d % dd)}, "
                f"{max(dh, h - h % dh)}, {max(dw, w - w % dw)})"
            )
        if self.config.norm == "instance" and (d // dd) * (h // dh) * (w // dw) <= 1:
            raise DataError(
                f"model input of shape {shape}: the bottleneck would hold a single voxel, "
                "which instance norm cannot normalise; use a larger input"
            )

    def _skip(self, level: int, x: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
        """The skip features of ``level``: ``x`` itself, or recalibrated by the coarser map with attention."""
        if not self.config.attention:
            return x
        return getattr(self, f"att{level}")(x, coarser)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits of every voxel (see the class docstring for the wiring).

        Args:
            x: image windows ``(B, in_channels, D, H, W)``; see :meth:`check_input` for the sizes.

        Returns:
            logits ``(B, num_classes, D, H, W)``; in training mode with deep supervision the list
            ``[logits, aux_1, aux_2]`` (from u3 and x4, or u2 and u3: see ``ds_placement``).
        """
        self.check_input(x)
        # encoder: widths c_l, in-plane size H / 2**l (D halved only by the first pool_depth poolings)
        x0 = self.enc0(x)  # (B, c0, D, H, W)
        x1 = self.enc1(self.pool0(x0))  # (B, c1, D, H/2, W/2)
        x2 = self.enc2(self.pool1(x1))  # (B, c2, D, H/4, W/4)
        x3 = self.enc3(self.pool2(x2))  # (B, c3, D, H/8, W/8)
        p3 = self.pool3(x3)  # (B, c3, D, H/16, W/16): the smallest feature maps
        x4 = self.enc4(p3)  # (B, c4, D, H/16, W/16): the bottom branch
        if self.res2net is not None:
            x4 = x4 + self.res2net(p3)  # MSAN-V2: parallel Res2Net branch, fused by a sum

        # decoder: upsample, concatenate the (recalibrated) skip, two convolutions
        u3 = self.dec3(torch.cat([self.up3(x4), self._skip(3, x3, x4)], dim=1))  # (B, c3, D, H/8, W/8)
        u2 = self.dec2(torch.cat([self.up2(u3), self._skip(2, x2, u3)], dim=1))  # (B, c2, D, H/4, W/4)
        u1 = self.dec1(torch.cat([self.up1(u2), self._skip(1, x1, u2)], dim=1))  # (B, c1, D, H/2, W/2)
        u0 = self.dec0(torch.cat([self.up0(u1), self._skip(0, x0, u1)], dim=1))  # (B, c0, D, H, W)

        logits = self.head(u0)  # (B, num_classes, D, H, W)
        if self.config.deep_supervision and self.training:
            maps = {"u2": u2, "u3": u3, "x4": x4}  # x4: after the Res2Net fusion in MSAN-V2
            # "pooling": (B, K, D, H/8, W/8) from u3, (B, K, D, H/16, W/16) from x4
            # "decoder": (B, K, D, H/4, W/4) from u2, (B, K, D, H/8, W/8) from u3
            aux_1, aux_2 = (
                getattr(self, f"aux_head_{m}")(maps[m]) for m in DS_PLACEMENTS[self.config.ds_placement]
            )
            return [logits, aux_1, aux_2]
        return logits

    @property
    def attention_layers(self) -> dict[int, MultiScaleAttention]:
        """``{level: layer}`` for the four attention layers (empty without attention)."""
        if not self.config.attention:
            return {}
        return {level: getattr(self, f"att{level}") for level in range(NUM_POOLS)}

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Run one forward (no gradients) and return the recalibration weights of every attention layer.

        Args:
            x: image windows ``(B, in_channels, D, H, W)``.

        Returns:
            ``{level: weights}``, ``weights`` of shape ``(B, c_level, D, H / 2**level, W / 2**level)``
            with values in (0, 1) — level 0 is the full-resolution skip. The mode (train/eval) of the
            model is left as it is.

        Raises:
            ConfigError: if the model has no attention layers (``config.attention`` is False).
        """
        layers = self.attention_layers
        if not layers:
            raise ConfigError(f"model {self.config.name!r}: has no attention layers (attention=False)")
        try:
            for layer in layers.values():
                layer.record, layer.last_weights = True, None
            self(x)
            return {level: layer.last_weights for level, layer in layers.items()}
        finally:
            for layer in layers.values():
                layer.record, layer.last_weights = False, None
