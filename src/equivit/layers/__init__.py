"""Anchored drop-in layers: each is exactly shift-equivariant and usable on its own.

Each layer keeps the parameter names of the timm module it replaces, so state dicts load.
"""

from __future__ import annotations

from equivit.layers.anchored_conv import AnchoredConv2d
from equivit.layers.patch_embed import AnchoredPatchEmbed
from equivit.layers.pos_conv import CircularPosConv, make_conv_circular
from equivit.layers.subsample_attention import AnchoredGlobalSubSampleAttn
from equivit.layers.window_attention import AnchoredLocallyGroupedAttn

__all__ = [
    "AnchoredConv2d",
    "AnchoredGlobalSubSampleAttn",
    "AnchoredLocallyGroupedAttn",
    "AnchoredPatchEmbed",
    "CircularPosConv",
    "make_conv_circular",
]
