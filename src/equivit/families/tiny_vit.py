"""The TinyViT family: timm's ``tiny_vit`` module.

TinyViT's blocks attend within windows that timm pads with zeros at the grid's end, and add
relative-position biases per window; the windows are placed from the grid's origin. The patch
embedding's two strided convolutions are anchored (circular padding) and its map is anchored with
period = the map (:func:`~equivit.token_grid.grid_anchored_entry`), so the stages see the same
map for every circular shift of the image and run as timm wrote them. Feature maps are rolled back
to the image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import torch
from timm.models import tiny_vit as timm_tiny_vit
from timm.models.tiny_vit import PatchEmbed, TinyVit
from torch import nn

from equivit.cnn_policy import convert_convolutions
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import (
    GridAnchoredFeatureListNet,
    GridAnchoredStages,
    grid_anchored_entry,
    grid_anchored_entry_class,
    install_grid_anchored_model,
)

__all__ = ["FAMILY", "EquivariantTinyVit", "convert_tiny_vit"]


@equivariant_layer(period="grid", anchored_children=("stages", "head"), fx="traced")
class EquivariantTinyVit(GridAnchoredStages, TinyVit):
    """timm's ``TinyVit`` whose stages see the patch embedding's map from an origin chosen by content.

    Same parameters and state-dict keys as timm's. Feature maps are rolled back
    (:class:`~equivit.token_grid.GridAnchoredStages`).
    """

    def anchored_entry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The patch embedding's anchored map and its origins."""
        return self.patch_embed(x)


def convert_tiny_vit(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``TinyVit`` (or timm's ``features_only`` wrapper of one) shift-equivariant, in place.

    The patch embedding's strided convolutions are anchored and pad circularly, the embedding then
    anchors its map with period = the map, and the model becomes an :class:`EquivariantTinyVit`
    (the wrapper a :class:`~equivit.token_grid.GridAnchoredFeatureListNet`).

    Args:
        model: The model, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the patch embedding is not timm's TinyViT ``PatchEmbed``.
    """
    embed = model.patch_embed
    if type(embed) is not PatchEmbed:
        raise UnsupportedModelError(f"patch_embed: {type(embed).__name__} is not timm's TinyViT PatchEmbed")
    convert_convolutions(embed, report, energy)
    model.patch_embed = grid_anchored_entry(embed, energy)
    report.add("patch_embed", "PatchEmbed", "GridAnchoredPatchEmbed (map anchored with period = the map)")
    report.input_multiple = (32, 32)  # three strided mergings after the stride-4 embedding: maps halve evenly
    install_grid_anchored_model(model, report, TinyVit, EquivariantTinyVit, "patch_embed")


FAMILY = Family(
    name="tiny_vit",
    description="TinyViT (tiny_vit_*)",
    model_classes=(TinyVit,),
    converted_classes=(EquivariantTinyVit,),
    convert=convert_tiny_vit,  # type: ignore[arg-type]
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
