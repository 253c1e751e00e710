"""The EfficientViT (MSRA) family: timm's ``efficientvit_msra`` module.

EfficientViT's cascaded group attention runs in local windows with relative-position biases and
zero padding at the grid's end. The patch embedding's strided convolutions are anchored (circular
padding) and its map is anchored with period = the map, so the stages see the same map for every
circular shift of the image and run as timm wrote them
(:func:`~equivit.token_grid.convert_grid_anchored`).
Feature maps are rolled back to the image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

import torch
from timm.models import efficientvit_msra as timm_efficientvit_msra
from timm.models.efficientvit_msra import EfficientVitMsra, PatchEmbedding

from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.token_grid import (
    GridAnchoredFeatureListNet,
    GridAnchoredStages,
    convert_grid_anchored,
    grid_anchored_entry_class,
)

__all__ = ["FAMILY", "EquivariantEfficientVitMsra"]


@equivariant_layer(period="grid", anchored_children=("stages", "head"), fx="traced")
class EquivariantEfficientVitMsra(GridAnchoredStages, EfficientVitMsra):
    """timm's ``EfficientVitMsra`` whose stages see the patch embed's map from an origin chosen by content.

    Same parameters and state-dict keys as timm's. Feature maps are rolled back
    (:class:`~equivit.token_grid.GridAnchoredStages`).
    """

    def anchored_entry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The patch embed's anchored map and its origins."""
        return self.patch_embed(x)


FAMILY = Family(
    name="efficientvit_msra",
    description="EfficientViT from Microsoft Research (efficientvit_m*)",
    model_classes=(EfficientVitMsra,),
    converted_classes=(EquivariantEfficientVitMsra,),
    convert=functools.partial(
        convert_grid_anchored,
        entry="patch_embed",
        entry_types=(PatchEmbedding,),
        stock=EfficientVitMsra,
        converted=EquivariantEfficientVitMsra,
        input_multiple=64,
    ),
    entry="patch_embed",
    feature_markers=(*module_types(timm_efficientvit_msra), grid_anchored_entry_class(PatchEmbedding)),
    accepted=(*module_types(timm_efficientvit_msra), GridAnchoredFeatureListNet),
    timm_modules=("efficientvit_msra",),
    examples={
        "efficientvit_m": Example("efficientvit_m0", {"img_size": 128}, (128, 128), quick=False),
    },
)
