"""The MetaFormer family: timm ``MetaFormer`` (PoolFormer v1/v2, ConvFormer, CAFormer)."""

from __future__ import annotations

import functools

import torch
from timm.models import metaformer as timm_metaformer
from timm.models.metaformer import MetaFormer, Stem

from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.token_grid import (
    GridAnchoredFeatureListNet,
    GridAnchoredStages,
    convert_grid_anchored,
    grid_anchored_entry_class,
)

__all__ = ["FAMILY", "EquivariantMetaFormer", "GridAnchoredMetaFormerStem"]


GridAnchoredMetaFormerStem = grid_anchored_entry_class(Stem)
"""The MetaFormer stem (7x7/4 convolution anchored, circular padding), its map anchored with period = the map."""


@equivariant_layer(period="grid", anchored_children=("stages", "head"), fx="traced")
class EquivariantMetaFormer(GridAnchoredStages, MetaFormer):
    """timm's ``MetaFormer`` whose stages see the stem's map from an origin chosen by content.

    The stem's strided convolution is anchored (period 4, circular padding) and its map anchored
    with period = the map (:data:`GridAnchoredMetaFormerStem`); timm's stages (pooling,
    separable-convolution and attention token mixers, strided downsampling with zero padding) run
    unchanged on it and see the same map for every circular shift of the image. Feature maps are
    rolled back (:class:`~equivit.token_grid.GridAnchoredStages`). Same parameters and state-dict
    keys as timm's.
    """

    def anchored_entry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's anchored map and its origins."""
        return self.stem(x)


FAMILY = Family(
    name="metaformer",
    description="PoolFormer v1/v2 (poolformer_*, poolformerv2_*), ConvFormer (convformer_*), CAFormer (caformer_*)",
    model_classes=(MetaFormer,),
    converted_classes=(EquivariantMetaFormer,),
    convert=functools.partial(
        convert_grid_anchored,
        entry="stem",
        entry_types=(Stem,),
        stock=MetaFormer,
        converted=EquivariantMetaFormer,
        input_multiple=32,
    ),
    entry="stem",
    feature_markers=(Stem, GridAnchoredMetaFormerStem),
    accepted=(*module_types(timm_metaformer), GridAnchoredFeatureListNet),
    timm_modules=("metaformer",),
    examples={
        # timm's metaformer functions fix depths and widths (no override): small images instead.
        "poolformer": Example("poolformerv2_s12", {}, (64, 96), quick=False),  # policy tested on maxvit
        "caformer": Example("caformer_s18", {}, (64, 64), quick=False),
    },
)
