"""Anchored drop-in layers: each is exactly shift-equivariant and usable on its own.

Each layer keeps the parameter names of the timm module it replaces, so state dicts load.
"""

from __future__ import annotations

from equivit.layers.anchored_block import AnchoredBasicBlock, AnchoredBottleneck
from equivit.layers.anchored_conv import AnchoredConv2d
from equivit.layers.anchored_downsample import AnchoredDownsample, make_pool_circular
from equivit.layers.anchored_mixed_conv import AnchoredMixedConv2d
from equivit.layers.anchored_pool import AnchoredMaxPool2d, separable_max_pool2d
from equivit.layers.anchored_residual import anchored_entry, anchored_residual
from equivit.layers.circular_conv import CircularConv2d, circular_conv2d, make_circular
from equivit.layers.circular_std_conv import (
    CircularScaledStdConv2d,
    CircularScaledStdConv2dSame,
    CircularStdConv2d,
    CircularStdConv2dSame,
    circular_std_conv,
)
from equivit.layers.key_order import canonical_token_order
from equivit.layers.patch_embed import AnchoredPatchEmbed
from equivit.layers.patch_merging import AnchoredPatchMerging, AnchoredPatchMergingV2, anchored_patch_merging
from equivit.layers.pos_conv import CircularPosConv, make_conv_circular
from equivit.layers.pvt_stage import AnchoredPvtStage, anchored_pvt_stage
from equivit.layers.reduction_attention import AnchoredSpatialReductionAttn
from equivit.layers.subsample_attention import AnchoredGlobalSubSampleAttn
from equivit.layers.swin_stage import (
    AnchoredSwinStage,
    AnchoredSwinTransformerV2Stage,
    CircularSwinTransformerBlock,
    CircularSwinTransformerV2Block,
    anchored_swin_stage,
)
from equivit.layers.window_attention import AnchoredLocallyGroupedAttn

__all__ = [
    "AnchoredBasicBlock",
    "AnchoredBottleneck",
    "AnchoredConv2d",
    "AnchoredDownsample",
    "AnchoredGlobalSubSampleAttn",
    "AnchoredLocallyGroupedAttn",
    "AnchoredMaxPool2d",
    "AnchoredMixedConv2d",
    "AnchoredPatchEmbed",
    "AnchoredPatchMerging",
    "AnchoredPatchMergingV2",
    "AnchoredPvtStage",
    "AnchoredSpatialReductionAttn",
    "AnchoredSwinStage",
    "AnchoredSwinTransformerV2Stage",
    "CircularConv2d",
    "CircularPosConv",
    "CircularScaledStdConv2d",
    "CircularScaledStdConv2dSame",
    "CircularStdConv2d",
    "CircularStdConv2dSame",
    "CircularSwinTransformerBlock",
    "CircularSwinTransformerV2Block",
    "anchored_entry",
    "anchored_patch_merging",
    "anchored_pvt_stage",
    "anchored_residual",
    "anchored_swin_stage",
    "canonical_token_order",
    "circular_conv2d",
    "circular_std_conv",
    "make_circular",
    "make_conv_circular",
    "make_pool_circular",
    "separable_max_pool2d",
]
