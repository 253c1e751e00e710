"""The EfficientFormer V2 family: timm's ``efficientformer_v2`` module.

EfficientFormer V2's attention adds biases indexed by position on a grid of fixed size and its
downsampling attention upsamples bilinearly with clamped borders. The stem's strided convolutions are
anchored (circular padding) and its map is anchored with period = the map, so the stages see the
same map for every circular shift of the image and run as timm wrote them
(:func:`~equivit.token_grid.convert_grid_anchored`). timm fixes the attention grids to ``img_size``.
Feature maps are rolled back to the image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

import torch
from timm.models import efficientformer_v2 as timm_efficientformer_v2
from timm.models.efficientformer_v2 import EfficientFormerV2, Stem4

from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.token_grid import (
    GridAnchoredFeatureListNet,
    GridAnchoredStages,
    convert_grid_anchored,
    grid_anchored_entry_class,
)

__all__ = ["FAMILY", "EquivariantEfficientFormerV2"]


@equivariant_layer(period="grid", anchored_children=("stages", "head"), fx="traced")
class EquivariantEfficientFormerV2(GridAnchoredStages, EfficientFormerV2):
    """timm's ``EfficientFormerV2`` whose stages see the stem's map from an origin chosen by content.

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
    name="efficientformer_v2",
    description="EfficientFormer V2 (efficientformerv2_*)",
    model_classes=(EfficientFormerV2,),
    converted_classes=(EquivariantEfficientFormerV2,),
    convert=functools.partial(
        convert_grid_anchored,
        entry="stem",
        entry_types=(Stem4,),
        stock=EfficientFormerV2,
        converted=EquivariantEfficientFormerV2,
        input_multiple=32,
    ),
    entry="stem",
    feature_markers=(*module_types(timm_efficientformer_v2), grid_anchored_entry_class(Stem4)),
    accepted=(*module_types(timm_efficientformer_v2), GridAnchoredFeatureListNet),
    timm_modules=("efficientformer_v2",),
    examples={
        "efficientformer_v2": Example("efficientformerv2_s0", {"img_size": 64}, (64, 64), quick=False),
    },
)
