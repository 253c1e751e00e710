"""The LowFormer family: timm's ``lowformer`` module.

LowFormer's attention runs on a map reduced by strided depthwise convolutions (zero padding) and
brings it back up with a transposed convolution; both tie the stages to positions on the map. The
stem's strided convolution and its blocks are made equivariant (anchored, circular padding) and the
stem's map is anchored with period = the map, so the stages see the same map for every circular
shift of the image and run as timm wrote them (:func:`~equivit.token_grid.convert_grid_anchored`).
Feature maps are rolled back to the image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

import torch
from timm.models import lowformer as timm_lowformer
from timm.models.lowformer import LowFormer
from torch import nn

from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.token_grid import GridAnchoredFeatureListNet, GridAnchoredStages, convert_grid_anchored

__all__ = ["FAMILY", "EquivariantLowFormer"]


@equivariant_layer(period="grid", anchored_children=("stages",), fx="traced")
class EquivariantLowFormer(GridAnchoredStages, LowFormer):
    """timm's ``LowFormer`` whose stages see the stem's map from an origin chosen by content.

    Same parameters and state-dict keys as timm's. Feature maps are rolled back
    (:class:`~equivit.token_grid.GridAnchoredStages`).
    """

    def anchored_entry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's anchored map and its origins."""
        return self.stem(x)


FAMILY = Family(
    name="lowformer",
    description="LowFormer (lowformer_*)",
    model_classes=(LowFormer,),
    converted_classes=(EquivariantLowFormer,),
    convert=functools.partial(
        convert_grid_anchored,
        entry="stem",
        entry_types=(nn.Sequential,),
        stock=LowFormer,
        converted=EquivariantLowFormer,
        input_multiple=32,
    ),
    entry="stem",
    feature_markers=module_types(timm_lowformer),
    accepted=(*module_types(timm_lowformer), GridAnchoredFeatureListNet),
    timm_modules=("lowformer",),
    examples={
        "lowformer": Example("lowformer_b0", {"width_list": [8, 16, 16, 32, 32]}, (64, 96), quick=False),
    },
)
