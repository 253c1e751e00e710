"""The Next-ViT family: timm's ``nextvit`` module.

Next-ViT's efficient multi-head attention pools its keys and values over the flattened token
sequence (``AvgPool1d``, which groups tokens by their raster position), and its convolutions pad
with zeros. The stem's strided convolutions are anchored (circular padding) and its map is anchored
with period = the map, so the stages see the same map for every circular shift of the image and run
as timm wrote them (:func:`~equivit.token_grid.convert_grid_anchored`).
Feature maps are rolled back to the image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

import torch
from timm.models import nextvit as timm_nextvit
from timm.models.nextvit import NextViT
from torch import nn

from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.token_grid import (
    GridAnchoredFeatureListNet,
    GridAnchoredStages,
    convert_grid_anchored,
)

__all__ = ["FAMILY", "EquivariantNextViT"]


@equivariant_layer(period="grid", anchored_children=("stages", "head"), fx="traced")
class EquivariantNextViT(GridAnchoredStages, NextViT):
    """timm's ``NextViT`` whose stages see the stem's map from an origin chosen by content.

    Same parameters and state-dict keys as timm's. Feature maps are rolled back
    (:class:`~equivit.token_grid.GridAnchoredStages`).
    """

    def anchored_entry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's anchored map and its origins."""
        return self.stem(x)

    def finish_features(self, x: torch.Tensor) -> torch.Tensor:
        """Timm's norm after the last stage."""
        return self.norm(x)


FAMILY = Family(
    name="nextvit",
    description="Next-ViT (nextvit_*)",
    model_classes=(NextViT,),
    converted_classes=(EquivariantNextViT,),
    convert=functools.partial(
        convert_grid_anchored,
        entry="stem",
        entry_types=(nn.Sequential,),
        stock=NextViT,
        converted=EquivariantNextViT,
        input_multiple=32,
    ),
    entry="stem",
    feature_markers=module_types(timm_nextvit),
    accepted=(*module_types(timm_nextvit), GridAnchoredFeatureListNet),
    timm_modules=("nextvit",),
    examples={
        "nextvit": Example("nextvit_small", {}, (64, 64), quick=False),
    },
)
