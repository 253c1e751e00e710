"""The CPUBone family: timm's ``cpubone`` module.

CPUBone's attention runs on a map reduced by strided depthwise convolutions and brings it back
up by nearest-neighbour or transposed-convolution upsampling; both tie the stages to positions. The
stem's strided convolution and its blocks are made equivariant (anchored, circular padding) and the
stem's map is anchored with period = the map, so the stages see the same map for every circular
shift of the image and run as timm wrote them (:func:`~equivit.token_grid.convert_grid_anchored`).
Feature maps are rolled back to the image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

import torch
from timm.models import cpubone as timm_cpubone
from timm.models.cpubone import CPUBone
from torch import nn

from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.token_grid import GridAnchoredFeatureListNet, GridAnchoredStages, convert_grid_anchored

__all__ = ["FAMILY", "EquivariantCPUBone"]


@equivariant_layer(period="grid", anchored_children=("stages",), fx="traced")
class EquivariantCPUBone(GridAnchoredStages, CPUBone):
    """timm's ``CPUBone`` whose stages see the stem's map from an origin chosen by content.

    Same parameters and state-dict keys as timm's. Feature maps are rolled back
    (:class:`~equivit.token_grid.GridAnchoredStages`).
    """

    def anchored_entry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's anchored map and its origins."""
        return self.stem(x)


FAMILY = Family(
    name="cpubone",
    description="CPUBone (cpubone_*)",
    model_classes=(CPUBone,),
    converted_classes=(EquivariantCPUBone,),
    convert=functools.partial(
        convert_grid_anchored,
        entry="stem",
        entry_types=(nn.Sequential,),
        stock=CPUBone,
        converted=EquivariantCPUBone,
        input_multiple=32,
    ),
    entry="stem",
    feature_markers=module_types(timm_cpubone),
    accepted=(*module_types(timm_cpubone), GridAnchoredFeatureListNet),
    timm_modules=("cpubone",),
    examples={
        "cpubone": Example("cpubone_nano", {}, (64, 96), quick=False),
    },
)
