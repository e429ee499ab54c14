"""Building blocks of the MSAN family: the U-Net stage, the multi-scale attention layer, the 3D Res2Net block.

Classes in growing scope (nanoGPT style): :func:`make_norm` / :func:`make_activation` →
:class:`ConvBlock` (one U-Net stage) → :class:`MultiScaleAttention` (MSAN paper, §2.2, Fig. 1) →
:class:`Res2NetBlock3d` (MSAN paper, §2.2, Fig. 3; Gao et al. 2019). The network that wires them
into a U is :class:`kitsmsan.models.msan.MSAN`.

All tensors are ``(B, C, D, H, W)``: batch, channels, slices (z), rows, columns.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kitsmsan.errors import ConfigError

#: normalisation layers a :class:`~kitsmsan.models.msan.ModelConfig` may name
NORMS = ("instance", "group", "batch")
#: activations a :class:`~kitsmsan.models.msan.ModelConfig` may name
ACTIVATIONS = ("leakyrelu", "relu")


def make_norm(kind: str, channels: int, num_groups: int = 8) -> nn.Module:
    """A 3D normalisation layer over ``channels`` feature maps.

    Args:
        kind: ``"instance"`` (``InstanceNorm3d`` with learnable affine, the default of the package),
            ``"group"`` (``GroupNorm`` with ``gcd(num_groups, channels)`` groups) or ``"batch"``
            (``BatchNorm3d``).
        channels: number of channels ``C`` of the ``(B, C, D, H, W)`` input.
        num_groups: groups for ``"group"``; reduced to a divisor of ``channels``. Default 8.

    Raises:
        ConfigError: for an unknown ``kind``.
    """
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(math.gcd(num_groups, channels), channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    raise ConfigError(f"norm={kind!r}: unknown normalisation, expected one of {NORMS}")


def make_activation(kind: str, negative_slope: float = 0.01) -> nn.Module:
    """The nonlinearity after every normalisation.

    Args:
        kind: ``"leakyrelu"`` (default of the package, slope ``negative_slope``, as nnU-Net) or
            ``"relu"`` (as the original 3D U-Net).
        negative_slope: slope of LeakyReLU for negative inputs. Default 0.01.

    Raises:
        ConfigError: for an unknown ``kind``.
    """
    if kind == "leakyrelu":
        return nn.LeakyReLU(negative_slope, inplace=True)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    raise ConfigError(f"activation={kind!r}: unknown activation, expected one of {ACTIVATIONS}")


class ConvNormAct(nn.Sequential):
    """``Conv3d → norm → activation``; the convolution has no bias (the norm's shift replaces it).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: cubic kernel size, ``3`` (padding 1, size-preserving) or ``1``. Default 3.
        norm: see :func:`make_norm`. Default ``"instance"``.
        activation: see :func:`make_activation`. Default ``"leakyrelu"``.
        negative_slope: LeakyReLU slope. Default 0.01.

    Shape:
        ``(B, in_channels, D, H, W) → (B, out_channels, D, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        norm: str = "instance",
        activation: str = "leakyrelu",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            make_norm(norm, out_channels),
            make_activation(activation, negative_slope),
        )


class ConvBlock(nn.Sequential):
    """One U-Net stage: two ``3×3×3 conv → norm → activation`` (Çiçek et al. 2016; MSAN paper, Fig. 1).

    Args:
        in_channels: input channels.
        out_channels: channels of both convolutions' outputs.
        norm: see :func:`make_norm`. Default ``"instance"``.
        activation: see :func:`make_activation`. Default ``"leakyrelu"``.
        negative_slope: LeakyReLU slope. Default 0.01.

    Shape:
        ``(B, in_channels, D, H, W) → (B, out_channels, D, H, W)`` (padding keeps the size).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str = "instance",
        activation: str = "leakyrelu",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, 3, norm, activation, negative_slope),
            ConvNormAct(out_channels, out_channels, 3, norm, activation, negative_slope),
        )


class MultiScaleAttention(nn.Module):
    """The multi-scale attention layer of MSAN (MSAN paper, §2.2, Fig. 1).

    The paper adds the larger (finer) feature maps element-wise to the smaller (coarser) ones, passes
    the sum through a sigmoid to get recalibration weights, multiplies the finer features by those
    weights, and concatenates the enhanced features into the deeper layers. The paper leaves the
    alignment open; here:

    * the coarser map ``g`` is brought to the finer map's channels by a ``1×1×1`` convolution (with
      bias) and to its size by trilinear interpolation (``align_corners=False``), so the finer
      features ``x`` themselves enter the sum unchanged, as the figure describes;
    * the weights are element-wise — one weight per channel and voxel, the same shape as ``x``:

      ``weights = sigmoid(x + upsample(conv1x1(g)))``, ``enhanced = x * weights``.

    With a zero gating input (``g = 0`` and a zero bias) the layer reduces to ``x · σ(x)``, the SiLU
    (swish) of the skip features: the recalibration is then a fixed self-gating, and everything the
    layer adds beyond it comes from the coarser map.

    Inspecting the weights: set ``record = True`` (or use :meth:`kitsmsan.models.msan.MSAN.attention_maps`)
    and every forward stores the detached weights in ``last_weights`` (``None`` until then).

    Args:
        fine_channels: channels ``C_f`` of the finer map ``x`` (the encoder's skip features).
        coarse_channels: channels ``C_c`` of the coarser map ``g`` (the decoder features one level
            deeper).

    Shape:
        ``x``: ``(B, C_f, D, H, W)``; ``g``: ``(B, C_c, D', H', W')`` with any smaller (or equal)
        size; returns ``(B, C_f, D, H, W)``.
    """

    def __init__(self, fine_channels: int, coarse_channels: int) -> None:
        super().__init__()
        self.project = nn.Conv3d(coarse_channels, fine_channels, kernel_size=1, bias=True)
        self.record = False
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        g = self.project(g)  # (B, C_c, D', H', W') -> (B, C_f, D', H', W')
        if g.shape[2:] != x.shape[2:]:
            g = F.interpolate(
                g, size=x.shape[2:], mode="trilinear", align_corners=False
            )  # -> (B, C_f, D, H, W)
        weights = torch.sigmoid(x + g)  # (B, C_f, D, H, W), in (0, 1)
        if self.record:
            self.last_weights = weights.detach()
        return x * weights


class Res2NetBlock3d(nn.Module):
    """A 3D Res2Net block (Gao et al. 2019, "Res2Net"; MSAN paper, §2.2, Fig. 3).

    ``1×1×1 conv`` to ``out_channels``, split into ``scale`` groups ``x_1 … x_s`` of
    ``out_channels / scale`` channels, hierarchical ``3×3×3`` convolutions as in Gao et al.:
    ``y_1 = x_1``, ``y_2 = K_2(x_2)``, ``y_i = K_i(x_i + y_{i-1})`` for ``2 < i ≤ s``; concatenation,
    ``1×1×1 conv``, residual addition, activation. Every convolution is followed by a normalisation;
    all but the last by the activation (the activation follows the residual sum, as in ResNet). The
    shortcut is the identity when ``in_channels == out_channels``, else a ``1×1×1 conv → norm``
    projection.

    Each group after the first sees a receptive field one ``3×3×3`` step wider than its predecessor,
    so the block mixes several scales inside one stage: the "implicit" multi-scale design the paper
    places beside the bottleneck of MSAN-V2.

    Args:
        in_channels: input channels.
        out_channels: output channels and the block's inner width; must be divisible by ``scale``.
        scale: number of groups ``s``. Default 4 (Gao et al.'s usual setting; the MSAN paper states
            no scale).
        norm: see :func:`make_norm`. Default ``"instance"``.
        activation: see :func:`make_activation`. Default ``"leakyrelu"``.
        negative_slope: LeakyReLU slope. Default 0.01.

    Shape:
        ``(B, in_channels, D, H, W) → (B, out_channels, D, H, W)``.

    Raises:
        ConfigError: if ``scale < 2`` or ``out_channels`` is not divisible by ``scale``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int = 4,
        norm: str = "instance",
        activation: str = "leakyrelu",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        if scale < 2:
            raise ConfigError(f"res2net_scale={scale}: must be at least 2 (1 leaves no 3x3x3 convolution)")
        if out_channels % scale:
            raise ConfigError(
                f"res2net_scale={scale}: the Res2Net width {out_channels} is not divisible by the scale"
            )
        self.scale = scale
        self.width = out_channels // scale
        self.reduce = ConvNormAct(in_channels, out_channels, 1, norm, activation, negative_slope)
        self.convs = nn.ModuleList(
            ConvNormAct(self.width, self.width, 3, norm, activation, negative_slope) for _ in range(scale - 1)
        )
        self.expand = nn.Sequential(
            nn.Conv3d(out_channels, out_channels, 1, bias=False), make_norm(norm, out_channels)
        )
        if in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, bias=False), make_norm(norm, out_channels)
            )
        self.act = make_activation(activation, negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        splits = torch.split(self.reduce(x), self.width, dim=1)  # s tensors (B, C/s, D, H, W)
        outs = [splits[0]]  # y_1 = x_1
        y = None
        for i, conv in enumerate(self.convs, start=1):
            y = conv(splits[i] if y is None else splits[i] + y)  # y_i = K_i(x_i + y_{i-1})
            outs.append(y)
        out = self.expand(torch.cat(outs, dim=1))  # (B, C, D, H, W)
        return self.act(out + self.shortcut(x))
