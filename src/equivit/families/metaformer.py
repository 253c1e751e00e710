"""The MetaFormer family: timm ``MetaFormer`` (PoolFormer v1/v2, ConvFormer, CAFormer)."""

from __future__ import annotations

import torch
from timm.models import metaformer as timm_metaformer
from timm.models.metaformer import MetaFormer, Stem
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

__all__ = ["FAMILY", "EquivariantMetaFormer", "GridAnchoredMetaFormerStem", "convert_metaformer"]


GridAnchoredMetaFormerStem = grid_anchored_entry_class(Stem)
"""The MetaFormer stem (7x7/4 convolution anchored, circular padding), its map anchored with period = the map."""


@equivariant_layer(period="grid", anchored_children=("stages", "head"), fx="traced")
class EquivariantMetaFormer(GridAnchoredStages, MetaFormer):
    """timm's ``MetaFormer`` whose stages see the stem's map from an origin chosen by content.

    The stem's strided convolution is anchored (period 4, circular padding) and its map anchored
    with period = the map (:data:`GridAnchoredMetaFormerStem`); timm's stages (pooling,
    separable-convolution and attention token mixers, strided downsampling with zero padding) run
    unchanged on it and see the same map for every circular shift of the image. Feature maps are
    rolled back (:class:`~equivit.token_grid.GridAnchoredStages`). Same parameters and state-dict
    keys as timm's.
    """

    def anchored_entry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's anchored map and its origins."""
        return self.stem(x)


def convert_metaformer(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``MetaFormer`` (or timm's ``features_only`` wrapper of one) shift-equivariant, in place.

    The stem's convolution is anchored (period 4) and pads circularly, the stem becomes a
    :data:`GridAnchoredMetaFormerStem` (its map anchored with period = the map), the model an
    :class:`EquivariantMetaFormer` (the wrapper a
    :class:`~equivit.token_grid.GridAnchoredFeatureListNet`). No parameter is added or renamed.

    Args:
        model: The model, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the stem is not timm's MetaFormer ``Stem``.
    """
    stem = model.stem
    if type(stem) is not Stem:
        raise UnsupportedModelError(f"stem: {type(stem).__name__} is not timm's MetaFormer Stem")
    convert_convolutions(stem, report, energy)
    model.stem = grid_anchored_entry(stem, energy)
    report.add("stem", "Stem", "GridAnchoredStem (stem map anchored with period = the map)")
    report.input_multiple = (32, 32)
    install_grid_anchored_model(model, report, MetaFormer, EquivariantMetaFormer, "stem")


FAMILY = Family(
    name="metaformer",
    description="PoolFormer v1/v2 (poolformer_*, poolformerv2_*), ConvFormer (convformer_*), CAFormer (caformer_*)",
    model_classes=(MetaFormer,),
    converted_classes=(EquivariantMetaFormer,),
    convert=convert_metaformer,  # type: ignore[arg-type]
    entry="stem",
    feature_markers=(Stem, GridAnchoredMetaFormerStem),
    accepted=(*module_types(timm_metaformer), GridAnchoredFeatureListNet),
    timm_modules=("metaformer",),
    examples={
        # timm's metaformer functions fix depths and widths (no override): small images instead.
        "poolformer": Example("poolformerv2_s12", {}, (64, 96), quick=False),  # policy tested on maxvit
        "caformer": Example("caformer_s18", {}, (64, 64), quick=False),
    },
)
