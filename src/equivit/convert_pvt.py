"""Conversion of timm ``PyramidVisionTransformerV2`` (PVT v2, including the linear variant)."""

from __future__ import annotations

import torch
from timm.models._manipulate import checkpoint
from timm.models.pvt_v2 import Attention, MlpWithDepthwiseConv, OverlapPatchEmbed, PyramidVisionTransformerStage
from torch import nn

from equivit.layers import AnchoredConv2d, AnchoredSpatialReductionAttn, make_conv_circular
from equivit.layers.sharing import retype
from equivit.polyphase import Energy
from equivit.report import ConversionReport, UnsupportedModelError, lcm_pair

__all__ = ["convert_pvt_v2"]


class _ChannelsLastStage(PyramidVisionTransformerStage):
    r"""timm's PVT v2 stage, its output grid left in the tokens' memory order (channels-last).

    timm copies each stage's output into a contiguous ``(B, C, H, W)`` tensor. The next stage's
    anchored downsampling then has to roll it one element at a time; left channels-last, it
    rolls whole tokens (one row copy each) and its convolution runs channels-last, which on the
    CPU also beats timm's own contiguous path. Same values and shape; same parameters.

    Shape:
        - x: :math:`(B, C, H', W')` (with a downsampling embedding), else :math:`(B, H, W, C)`
        - output: :math:`(B, C, H, W)`, in ``torch.channels_last`` memory format
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Downsample (if the stage does), run the blocks and the norm, return the grid channels-last."""
        if self.downsample is not None:
            x = self.downsample(x)
        batch, height, width, channels = x.shape
        feat_size = [height, width]
        x = x.reshape(batch, height * width, channels)
        for block in self.blocks:
            if not torch.jit.is_scripting() and self.grad_checkpointing:
                x = checkpoint(block, x, feat_size)
            else:
                x = block(x, feat_size)
        x = self.norm(x)
        return x.reshape(batch, height, width, -1).permute(0, 3, 1, 2)


def _anchor_overlap_embed(embed: OverlapPatchEmbed, name: str, report: ConversionReport, energy: Energy) -> int:
    """Anchor an overlapping patch embedding's projection and make its padding circular; its stride."""
    proj = embed.proj
    stride = int(proj.stride[0])
    embed.proj = AnchoredConv2d.from_conv(proj, energy=energy, padding_mode="circular")
    kernel = tuple(proj.kernel_size)
    report.add(
        f"{name}.proj",
        f"Conv2d {kernel[0]}x{kernel[1]} stride {stride}, zero padding",
        f"AnchoredConv2d (period {stride}), circular padding",
    )
    return stride


def convert_pvt_v2(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm PVT v2 shift-equivariant, in place. No parameter is added or renamed.

    The overlapping patch embeddings (the 7 x 7 stride-4 stem, the 3 x 3 stride-2 downsampling of
    each later stage) are anchored with their stride and pad circularly; every spatial-reduction
    attention has its key/value path anchored (period ``sr_ratio``; for the linear variant's
    7 x 7 adaptive pool, period = grid / 7) and its keys put in an order chosen from content (also
    with ``sr_ratio`` 1); the depthwise convolutions of the MLPs pad
    circularly. The stages return their grids channels-last instead of copying them into a
    contiguous ``(B, C, H, W)`` tensor (same values), so that the anchored downsampling moves
    whole tokens. Inputs must be multiples of 32, and of 224 for the linear variant
    (``pvt_v2_b2_li``), whose pooled grid must divide every stage's grid.

    Args:
        model: The model, changed in place: a ``PyramidVisionTransformerV2``, or timm's
            ``features_only`` wrapper of one.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If a part is not the timm module this expects.
    """
    # Parts in forward order, found by type so that timm's features_only wrapper converts too.
    parts = list(model.named_modules())
    if not any(isinstance(module, OverlapPatchEmbed) for _, module in parts):
        raise UnsupportedModelError("expected timm's OverlapPatchEmbed stem; found none")
    stride = 1
    multiple = (1, 1)
    for name, module in parts:
        if isinstance(module, OverlapPatchEmbed):
            stride *= _anchor_overlap_embed(module, name, report, energy)
            multiple = lcm_pair(multiple, (stride, stride))
        elif isinstance(module, Attention):
            if type(module) is not Attention:
                raise UnsupportedModelError(f"{name}: {type(module).__name__} is not timm's pvt_v2 Attention")
            model.set_submodule(name, AnchoredSpatialReductionAttn.from_timm(module, energy=energy))
            if module.sr is None:
                report.add(
                    name, "Attention (all tokens as keys)", "AnchoredSpatialReductionAttn (keys in content order)"
                )
            elif module.pool is not None:
                pooled = module.pool.output_size
                pooled = pooled[0] if isinstance(pooled, tuple) else pooled
                multiple = lcm_pair(multiple, (stride * pooled, stride * pooled))
                report.add(
                    name,
                    f"Attention (AdaptiveAvgPool2d({pooled}) keys/values)",
                    f"AnchoredSpatialReductionAttn (period grid / {pooled})",
                )
            else:
                ratio = int(module.sr.stride[0])
                multiple = lcm_pair(multiple, (stride * ratio, stride * ratio))
                report.add(name, "Attention (strided keys/values)", f"AnchoredSpatialReductionAttn (period {ratio})")
        elif type(module) is PyramidVisionTransformerStage:
            model.set_submodule(name, retype(module, _ChannelsLastStage))
            report.add(name, "output copied to contiguous (B, C, H, W)", "output left channels-last (same values)")
        elif isinstance(module, MlpWithDepthwiseConv):
            make_conv_circular(module.dwconv)
            report.add(f"{name}.dwconv", "Conv2d, zero padding", "Conv2d, circular padding")
    report.input_multiple = multiple
