"""Conversion of timm ``PyramidVisionTransformerV2`` (PVT v2, including the linear variant)."""

from __future__ import annotations

from timm.models import pvt_v2 as timm_pvt_v2
from timm.models.pvt_v2 import (
    MlpWithDepthwiseConv,
    OverlapPatchEmbed,
    PyramidVisionTransformerStage,
    PyramidVisionTransformerV2,
)
from torch import nn

from equivit.energy import Energy
from equivit.layers import AnchoredConv2d, AnchoredPvtStage, anchored_pvt_stage
from equivit.registry import Example, Family
from equivit.report import ConversionReport, UnsupportedModelError, lcm_pair

__all__ = ["FAMILY", "convert_pvt_v2"]


def _anchor_overlap_embed(embed: OverlapPatchEmbed, name: str, report: ConversionReport, energy: Energy) -> int:
    """Anchor an overlapping patch embedding's projection (unless done) with circular padding; its stride."""
    proj = embed.proj
    stride = int(proj.stride[0])
    if not isinstance(proj, AnchoredConv2d):  # a stage's embedding is anchored with its stage
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
    each later stage) are anchored with their stride and pad circularly. Each stage becomes an
    :class:`~equivit.layers.AnchoredPvtStage`: its token grid is rolled to an origin chosen from
    content (period = the whole grid), so its blocks, timm's own, see the same grid for every
    shift, and the result is rolled back; the depthwise convolutions of the MLPs pad circularly.
    Inputs must be multiples of 32 (the product of the embedding strides), the linear variant
    (``pvt_v2_b2_li``) included.

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
        elif type(module) is PyramidVisionTransformerStage:
            model.set_submodule(name, anchored_pvt_stage(module, energy=energy))
            report.add(
                name,
                "PyramidVisionTransformerStage",
                "AnchoredPvtStage (grid anchored with period = grid, timm's blocks run on it, rolled back)",
            )
        elif isinstance(module, PyramidVisionTransformerStage) and not isinstance(module, AnchoredPvtStage):
            raise UnsupportedModelError(f"{name}: {type(module).__name__} is not timm's PVT v2 stage")
        elif isinstance(module, MlpWithDepthwiseConv):
            report.add(f"{name}.dwconv", "Conv2d, zero padding", "Conv2d, circular padding")
    report.input_multiple = multiple


_WIDE_HEADS = {"num_heads": (1, 1, 1, 1), "depths": (1, 1, 1, 1)}

FAMILY = Family(
    name="pvt_v2",
    description="PVT v2 (pvt_v2_b0 to b5 and the linear pvt_v2_b2_li)",
    model_classes=(PyramidVisionTransformerV2,),
    convert=convert_pvt_v2,
    entry="patch_embed",
    feature_markers=(PyramidVisionTransformerStage,),
    accepted=(
        PyramidVisionTransformerV2,
        PyramidVisionTransformerStage,
        timm_pvt_v2.Block,
        MlpWithDepthwiseConv,
        OverlapPatchEmbed,
    ),
    checks={
        timm_pvt_v2.Attention: lambda module: (
            None if module.sr is None else "spatially reduced keys/values without anchoring"
        ),
    },
    timm_modules=("pvt_v2",),
    examples={
        "pvt_v2": Example("pvt_v2_b0", {"embed_dims": (16, 32, 32, 32), **_WIDE_HEADS}, (64, 96)),
        "pvt_v2_li": Example("pvt_v2_b2_li", {"embed_dims": (16, 32, 32, 32), **_WIDE_HEADS}, (224, 224)),
    },
)
