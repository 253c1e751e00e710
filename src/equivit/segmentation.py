"""Dense prediction at input resolution that moves exactly with any integer circular shift of the image.

:class:`AnchoredFeatures` rolls the image to its polyphase anchor with period ``P`` (the least
common multiple of the backbone's reductions and of its own input anchor's period) and runs a
converted ``features_only`` backbone on it. A circular shift of the image by ``s`` reaches the
backbone as a shift of the anchored image by a multiple ``k`` of ``P``, and every map of reduction
``r`` moves by exactly ``k / r`` cells. :class:`FPNDecoder` merges the maps with
:func:`~equivit.upsample.circular_upsample` and circular convolutions, which keep that exact
form, and :class:`~equivit.upsample.EquivariantUpsample` brings the result to input resolution and
rolls it back by the anchor offsets: the output moves by exactly ``s``. :class:`Segmenter` is the
three together; :func:`create_segmenter` builds one from a timm model name.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from equivit.anchor_checks import check_energy
from equivit.anchor_core import anchor
from equivit.convert import convert, is_converted
from equivit.energy import Energy
from equivit.upsample import EquivariantUpsample, UpsampleMode, circular_upsample

__all__ = ["AnchoredFeatures", "FPNDecoder", "Segmenter", "anchor_period", "create_segmenter"]


def _feature_info(backbone: nn.Module) -> tuple[list[int], list[int]]:
    """(channels, reductions) of timm's ``features_only`` wrapper, or a ``TypeError`` naming what to pass."""
    info = getattr(backbone, "feature_info", None)
    if not (hasattr(info, "channels") and hasattr(info, "reduction")):
        raise TypeError(
            f"a segmenter needs timm's features_only wrapper of a model (it returns a list of maps and has a "
            f"feature_info), got {type(backbone).__name__}; build one with "
            f"equivit.create_model(name, features_only=True) or timm.create_model(name, features_only=True)"
        )
    return [int(c) for c in info.channels()], [int(r) for r in info.reduction()]


def anchor_period(backbone: nn.Module) -> int:
    """The period of the image anchor that makes every map of ``backbone`` move by whole cells exactly.

    The least common multiple of the reductions of the maps it returns and of the period of the
    anchor a converted network puts on its own input (``equivit_report.input_period``, where set):
    a shift of the image by a multiple of it moves each map of reduction ``r`` by exactly
    ``shift / r`` cells.

    Args:
        backbone: timm's ``features_only`` wrapper of a model.

    Returns:
        The period in pixels.

    Raises:
        TypeError: If ``backbone`` is not a ``features_only`` wrapper.
    """
    _, reductions = _feature_info(backbone)
    report = getattr(backbone, "equivit_report", None)
    own = getattr(report, "input_period", None) or 1
    return math.lcm(own, *reductions)


def _is_channels_last(backbone: nn.Module) -> bool:
    """Whether timm's wrapper returns ``(B, H, W, C)`` maps (Swin's, for instance)."""
    return str(getattr(backbone, "output_fmt", "NCHW")).endswith("NHWC")


def _nchw(maps: Sequence[torch.Tensor], channels_last: bool) -> list[torch.Tensor]:
    return [m.permute(0, 3, 1, 2) for m in maps] if channels_last else list(maps)


class AnchoredFeatures(nn.Module):
    """A converted ``features_only`` backbone run on the image rolled to its polyphase anchor.

    Its maps sit in the anchored frame: for any circular shift of the image, each map of
    reduction ``r`` is the unshifted one rolled by exactly ``k / r`` cells, ``k`` a multiple of
    :attr:`period` (to float32 rounding for backbones whose attention sums over a rotated token
    order, ViT and DeiT; bit for bit otherwise). A decoder whose layers keep that exact form ends
    with :class:`~equivit.upsample.EquivariantUpsample` and the offsets returned here.

    Args:
        backbone: timm's ``features_only`` wrapper of a model, converted (:func:`equivit.convert`).
        energy: Energy that picks the image's anchor.

    Raises:
        TypeError: If ``backbone`` is not a ``features_only`` wrapper.
        ValueError: If it is not converted, or ``energy`` is neither ``"l1"`` nor ``"l2"``.

    Shape:
        - input: :math:`(B, C, H, W)`, ``H`` and ``W`` multiples of :attr:`period` and of the backbone's
          ``equivit_report.input_multiple``
        - output: a list of maps :math:`(B, C_i, H / r_i, W / r_i)` (channels first), and offsets :math:`(B, 2)`
    """

    def __init__(self, backbone: nn.Module, energy: Energy = "l1") -> None:
        super().__init__()
        self.channels, self.reductions = _feature_info(backbone)
        if not is_converted(backbone):
            raise ValueError(
                f"AnchoredFeatures needs a converted backbone (its maps must move with the image); got a stock "
                f"{type(backbone).__name__}: pass equivit.convert(backbone), or build it with "
                f"equivit.create_model(name, features_only=True)"
            )
        check_energy(energy)
        self.backbone = backbone
        self.energy = energy
        self.period = anchor_period(backbone)
        self.channels_last = _is_channels_last(backbone)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The maps of the anchored image (channels first) and the image's anchor offsets."""
        if x.dim() == 4 and (x.shape[-2] % self.period or x.shape[-1] % self.period):
            raise ValueError(
                f"image size {x.shape[-2]} x {x.shape[-1]} is not a multiple of {self.period}, the period of the "
                f"image anchor (the least common multiple of the backbone's reductions {self.reductions}); crop or "
                f"resize the images to multiples of {self.period} (padding would break the equivariance)"
            )
        anchored, offsets = anchor(x, self.period, self.period, self.energy, False)
        return _nchw(self.backbone(anchored), self.channels_last), offsets

    def extra_repr(self) -> str:
        """The period and energy, for ``repr``."""
        return f"period={self.period}, energy={self.energy!r}"


def _check_reductions(reductions: Sequence[int]) -> list[int]:
    """Ratios between consecutive reductions, which must be whole numbers."""
    ratios = []
    for finer, coarser in itertools.pairwise(reductions):
        if coarser % finer:
            raise ValueError(
                f"FPNDecoder merges maps whose reductions divide each other in order, got {list(reductions)}; "
                f"choose out_indices whose reductions do (for instance (1, 2, 3, 4))"
            )
        ratios.append(coarser // finer)
    return ratios


class FPNDecoder(nn.Module):
    """A feature pyramid decoder: top-down sums of upsampled maps, one convolution, at the finest reduction.

    Each map goes through a 1x1 convolution to ``channels``; from the coarsest, each is upsampled
    by the ratio to the next finer one and added to it; a 3x3 convolution, batch norm and ReLU
    finish at the finest reduction. With ``equivariant=True`` the upsampling is
    :func:`~equivit.upsample.circular_upsample` and the 3x3 convolution pads circularly, so a map
    shift by whole cells stays one; with ``False`` it is the usual ``F.interpolate`` bilinear and
    zero padding.

    Args:
        in_channels: Channels of each map, finest first.
        reductions: Reduction of each map, finest first; each divides the next.
        channels: Channels of the decoder.
        equivariant: Circular upsampling and padding (default) or the usual ones.
        mode: Upsampling mode, ``"bilinear"`` or ``"nearest"``.
        device: Device of the parameters.
        dtype: Dtype of the parameters.

    Raises:
        ValueError: If the lists differ in length or are empty, a reduction does not divide the
            next, or ``channels`` is not positive.

    Shape:
        - input: a list of maps :math:`(B, C_i, H / r_i, W / r_i)`
        - output: :math:`(B, channels, H / r_0, W / r_0)`
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        reductions: Sequence[int],
        channels: int = 64,
        *,
        equivariant: bool = True,
        mode: UpsampleMode = "bilinear",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(reductions) or not in_channels:
            raise ValueError(
                f"FPNDecoder needs one reduction per map, got {len(in_channels)} channel counts and "
                f"{len(reductions)} reductions"
            )
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        self.ratios = _check_reductions(reductions)
        self.equivariant = equivariant
        self.mode = mode
        kwargs = {"device": device, "dtype": dtype}
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1, **kwargs) for c in in_channels)
        padding_mode = "circular" if equivariant else "zeros"
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode=padding_mode, bias=False, **kwargs),
            nn.BatchNorm2d(channels, **kwargs),
            nn.ReLU(inplace=True),
        )

    def _upsample(self, x: torch.Tensor, factor: int) -> torch.Tensor:
        if self.equivariant:
            return circular_upsample(x, factor, mode=self.mode)
        if factor == 1:
            return x
        extra = {"align_corners": False} if self.mode == "bilinear" else {}
        return F.interpolate(x, scale_factor=float(factor), mode=self.mode, **extra)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Merge ``maps`` (finest first) into one map at the finest reduction."""
        if len(maps) != len(self.lateral):
            raise ValueError(f"FPNDecoder was built for {len(self.lateral)} maps, got {len(maps)}")
        merged = self.lateral[-1](maps[-1])
        for index in range(len(maps) - 2, -1, -1):
            merged = self._upsample(merged, self.ratios[index]) + self.lateral[index](maps[index])
        return self.fuse(merged)


class Segmenter(nn.Module):
    """Semantic segmentation from a ``features_only`` backbone: per-pixel logits at input resolution.

    With ``equivariant=True`` (a converted backbone): :class:`AnchoredFeatures`, an equivariant
    :class:`FPNDecoder`, a 1x1 classifier at the finest reduction and
    :class:`~equivit.upsample.EquivariantUpsample` to input resolution. For any integer circular
    shift of the image the logits are the shifted logits (bit for bit where the backbone's maps
    are, see :class:`AnchoredFeatures`). With ``equivariant=False`` (any backbone, stock timm
    included): the same layers with the usual bilinear upsampling and zero padding and no anchor,
    the baseline to compare with.

    Args:
        backbone: timm's ``features_only`` wrapper of a model (converted if ``equivariant``).
        num_classes: Classes per pixel.
        channels: Channels of the decoder.
        equivariant: Whether to anchor and upsample as above (default) or as usual.
        mode: Upsampling mode, ``"bilinear"`` (default) or ``"nearest"``.
        energy: Energy that picks the image's anchor.

    Raises:
        TypeError: If ``backbone`` is not a ``features_only`` wrapper.
        ValueError: If ``equivariant`` and the backbone is not converted, or an argument is invalid.

    Shape:
        - input: :math:`(B, C, H, W)`, sizes as :class:`AnchoredFeatures` takes them when ``equivariant``
        - output: :math:`(B, K, H, W)`, ``K = num_classes``

    Examples:
        >>> backbone = equivit.create_model("resnet18", features_only=True, out_indices=(1, 2, 3))
        >>> model = Segmenter(backbone, num_classes=3).eval()
        >>> model(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 3, 64, 64])
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        channels: int = 64,
        equivariant: bool = True,
        mode: UpsampleMode = "bilinear",
        energy: Energy = "l1",
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        in_channels, reductions = _feature_info(backbone)
        self.equivariant = equivariant
        if equivariant:
            self.features: nn.Module = AnchoredFeatures(backbone, energy)
        else:
            self.features = backbone
        self.channels_last = _is_channels_last(backbone)
        self.reduction = reductions[0]
        self.decoder = FPNDecoder(in_channels, reductions, channels, equivariant=equivariant, mode=mode)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.upsample = EquivariantUpsample(self.reduction, mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits."""
        if x.dim() != 4:
            raise ValueError(f"Segmenter expects images (B, C, H, W), got shape {tuple(x.shape)}")
        if self.equivariant:
            maps, offsets = self.features(x)
            return self.upsample(self.classifier(self.decoder(maps)), offsets)
        logits = self.classifier(self.decoder(_nchw(self.features(x), self.channels_last)))
        return self.decoder._upsample(logits, self.reduction)


def create_segmenter(
    name: str,
    num_classes: int,
    *,
    out_indices: Sequence[int] | None = None,
    channels: int = 64,
    equivariant: bool = True,
    pretrained: bool = False,
    **kwargs: object,
) -> Segmenter:
    """A :class:`Segmenter` on timm's ``features_only`` backbone ``name``, converted if ``equivariant``.

    Args:
        name: A timm model name.
        num_classes: Classes per pixel.
        out_indices: Which maps feed the decoder (timm's default: all).
        channels: Channels of the decoder.
        equivariant: Convert the backbone and decode equivariantly (default), or the stock baseline.
        pretrained: Load timm's pretrained weights into the backbone.
        **kwargs: More arguments for ``timm.create_model``.

    Returns:
        The segmenter.

    Raises:
        equivit.UnsupportedModelError: If ``equivariant`` and the model's family does not convert.

    Examples:
        >>> model = create_segmenter("resnet18", num_classes=11, out_indices=(1, 2, 3))
        >>> model.features.period
        32
    """
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    backbone = timm.create_model(name, pretrained=pretrained, features_only=True, **kwargs)
    if equivariant:
        backbone = convert(backbone, inplace=True)
    return Segmenter(backbone, num_classes, channels=channels, equivariant=equivariant)
