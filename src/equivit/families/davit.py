"""The DaViT family: timm's ``davit`` module.

DaViT alternates attention within windows that timm pads with zeros at the grid's end with
channel attention over every token, and adds depthwise-convolution position encodings (zero
padding). The stem's strided convolution is anchored (circular padding) and its map is anchored with
period = the map, so the stages see the same map for every circular shift of the image and run as
timm wrote them (:func:`~equivit.token_grid.convert_grid_anchored`).
Feature maps are rolled back to the image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

import torch
from timm.models import davit as timm_davit
from timm.models.davit import DaVit, Stem

from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.token_grid import (
    GridAnchoredFeatureListNet,
    GridAnchoredStages,
    convert_grid_anchored,
    grid_anchored_entry_class,
)

__all__ = ["FAMILY", "EquivariantDaVit"]


@equivariant_layer(period="grid", anchored_children=("stages", "head"), fx="traced")
class EquivariantDaVit(GridAnchoredStages, DaVit):
    """timm's ``DaVit`` whose stages see the stem's map from an origin chosen by content.

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
    name="davit",
    description="DaViT: dual attention vision transformers (davit_*)",
    model_classes=(DaVit,),
    converted_classes=(EquivariantDaVit,),
    convert=functools.partial(
        convert_grid_anchored,
        entry="stem",
        entry_types=(Stem,),
        stock=DaVit,
        converted=EquivariantDaVit,
        input_multiple=32,
    ),
    entry="stem",
    feature_markers=(*module_types(timm_davit), grid_anchored_entry_class(Stem)),
    accepted=(*module_types(timm_davit), GridAnchoredFeatureListNet),
    timm_modules=("davit",),
    examples={
        "davit": Example(
            "davit_tiny",
            {"depths": (1, 1, 1, 1), "embed_dims": (16, 32, 48, 64), "num_heads": (1, 2, 3, 4)},
            (64, 96),
            quick=False,
        ),
    },
)
