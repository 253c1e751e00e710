"""The TinyViT family: timm's ``tiny_vit`` module.

TinyViT's blocks attend within windows that timm pads with zeros at the grid's end, and add
relative-position biases per window; the windows are placed from the grid's origin. The patch
embedding's two strided convolutions are anchored (circular padding) and its map is anchored with
period = the map (:func:`~equivit.token_grid.grid_anchored_entry`), so the stages see the same
map for every circular shift of the image and run as timm wrote them. Feature maps are rolled back
to the image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

import torch
from timm.models import tiny_vit as timm_tiny_vit
from timm.models.tiny_vit import PatchEmbed, TinyVit

from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.token_grid import (
    GridAnchoredFeatureListNet,
    GridAnchoredStages,
    convert_grid_anchored,
    grid_anchored_entry_class,
)

__all__ = ["FAMILY", "EquivariantTinyVit"]


@equivariant_layer(period="grid", anchored_children=("stages", "head"), fx="traced")
class EquivariantTinyVit(GridAnchoredStages, TinyVit):
    """timm's ``TinyVit`` whose stages see the patch embedding's map from an origin chosen by content.

    Same parameters and state-dict keys as timm's. Feature maps are rolled back
    (:class:`~equivit.token_grid.GridAnchoredStages`).
    """

    def anchored_entry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The patch embedding's anchored map and its origins."""
        return self.patch_embed(x)


FAMILY = Family(
    name="tiny_vit",
    description="TinyViT (tiny_vit_*)",
    model_classes=(TinyVit,),
    converted_classes=(EquivariantTinyVit,),
    convert=functools.partial(
        convert_grid_anchored,
        entry="patch_embed",
        entry_types=(PatchEmbed,),
        stock=TinyVit,
        converted=EquivariantTinyVit,
        input_multiple=32,
    ),
    entry="patch_embed",
    feature_markers=(PatchEmbed, grid_anchored_entry_class(PatchEmbed)),
    accepted=(*module_types(timm_tiny_vit), GridAnchoredFeatureListNet),
    timm_modules=("tiny_vit",),
    examples={
        "tiny_vit": Example(
            "tiny_vit_5m_224",
            {"embed_dims": (16, 32, 48, 64), "depths": (1, 1, 1, 1), "num_heads": (1, 2, 3, 4)},
            (64, 96),
            quick=False,  # policy tested on maxvit
        ),
    },
)
