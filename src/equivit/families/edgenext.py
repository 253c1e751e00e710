"""The EdgeNeXt family: timm's ``edgenext`` module.

EdgeNeXt's split depthwise-transposed attention adds a Fourier encoding of each token's absolute
position, and its depthwise convolutions pad with zeros. The stem's strided convolution is anchored
(circular padding) and its map is anchored with period = the map, so the stages see the same map for
every circular shift of the image and run as timm wrote them
(:func:`~equivit.token_grid.convert_grid_anchored`).
Feature maps are rolled back to the image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

import torch
from timm.models import edgenext as timm_edgenext
from timm.models.edgenext import EdgeNeXt
from torch import nn

from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.token_grid import (
    GridAnchoredFeatureListNet,
    GridAnchoredStages,
    convert_grid_anchored,
)

__all__ = ["FAMILY", "EquivariantEdgeNeXt"]


@equivariant_layer(period="grid", anchored_children=("stages", "head"), fx="traced")
class EquivariantEdgeNeXt(GridAnchoredStages, EdgeNeXt):
    """timm's ``EdgeNeXt`` whose stages see the stem's map from an origin chosen by content.

    Same parameters and state-dict keys as timm's. Feature maps are rolled back
    (:class:`~equivit.token_grid.GridAnchoredStages`).
    """

    def anchored_entry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's anchored map and its origins."""
        return self.stem(x)

    def finish_features(self, x: torch.Tensor) -> torch.Tensor:
        """Timm's norm after the last stage."""
        return self.norm_pre(x)


FAMILY = Family(
    name="edgenext",
    description="EdgeNeXt (edgenext_*)",
    model_classes=(EdgeNeXt,),
    converted_classes=(EquivariantEdgeNeXt,),
    convert=functools.partial(
        convert_grid_anchored,
        entry="stem",
        entry_types=(nn.Sequential,),
        stock=EdgeNeXt,
        converted=EquivariantEdgeNeXt,
        input_multiple=32,
    ),
    entry="stem",
    feature_markers=module_types(timm_edgenext),
    accepted=(*module_types(timm_edgenext), GridAnchoredFeatureListNet),
    timm_modules=("edgenext",),
    examples={
        "edgenext": Example("edgenext_xx_small", {}, (64, 96), quick=False),
    },
)
