"""The GCViT family: timm's ``gcvit`` module.

GCViT attends within windows with relative-position biases and to global queries pooled from the
whole stage by strided max poolings with zero padding. The stem's strided convolution is anchored
(circular padding) and its map is anchored with period = the map, so the stages see the same map for
every circular shift of the image and run as timm wrote them
(:func:`~equivit.token_grid.convert_grid_anchored`). timm fixes the windows to ``img_size``.
Feature maps are rolled back to the image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

import torch
from timm.models import gcvit as timm_gcvit
from timm.models.gcvit import GlobalContextVit, Stem

from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.token_grid import (
    GridAnchoredFeatureListNet,
    GridAnchoredStages,
    convert_grid_anchored,
    grid_anchored_entry_class,
)

__all__ = ["FAMILY", "EquivariantGlobalContextVit"]


@equivariant_layer(period="grid", anchored_children=("stages", "head"), fx="traced")
class EquivariantGlobalContextVit(GridAnchoredStages, GlobalContextVit):
    """timm's ``GlobalContextVit`` whose stages see the stem's map from an origin chosen by content.

    Same parameters and state-dict keys as timm's. Feature maps are rolled back
    (:class:`~equivit.token_grid.GridAnchoredStages`).
    """

    def anchored_entry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's anchored map and its origins."""
        return self.stem(x)


FAMILY = Family(
    name="gcvit",
    description="Global context vision transformers (gcvit_*)",
    model_classes=(GlobalContextVit,),
    converted_classes=(EquivariantGlobalContextVit,),
    convert=functools.partial(
        convert_grid_anchored,
        entry="stem",
        entry_types=(Stem,),
        stock=GlobalContextVit,
        converted=EquivariantGlobalContextVit,
        input_multiple=32,
    ),
    entry="stem",
    feature_markers=(*module_types(timm_gcvit), grid_anchored_entry_class(Stem)),
    accepted=(*module_types(timm_gcvit), GridAnchoredFeatureListNet),
    timm_modules=("gcvit",),
    examples={
        "gcvit": Example("gcvit_xxtiny", {"img_size": 64}, (64, 64), quick=False),
    },
)
