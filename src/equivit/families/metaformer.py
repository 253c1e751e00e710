"""The MetaFormer family: timm ``MetaFormer`` (PoolFormer v1/v2, ConvFormer, CAFormer)."""

from __future__ import annotations

import torch
from timm.models import metaformer as timm_metaformer
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.metaformer import MetaFormer, Stem
from torch import nn

from equivit.anchor_core import anchor
from equivit.cnn_policy import convert_convolutions
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.layers.sharing import parent_method, retype
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import (
    GridAnchoredEntry,
    GridAnchoredFeatureListNet,
    install_grid_anchored_model,
    roll_back_map,
)

__all__ = ["FAMILY", "EquivariantMetaFormer", "GridAnchoredMetaFormerStem", "convert_metaformer"]


@equivariant_layer(period="grid", fx="leaf")
class GridAnchoredMetaFormerStem(GridAnchoredEntry, Stem):
    """The MetaFormer stem (7x7/4 convolution anchored, circular padding), its map anchored with period = the map.

    Shape:
        - input: :math:`(B, C, H, W)`, ``H`` and ``W`` multiples of 4
        - output: :math:`(B, D, H / 4, W / 4)`, rolled to an origin chosen from content, and :math:`(B, 2)`
    """

    _stock_forward = parent_method(Stem.forward, "_stock_forward")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's map rolled to its content-chosen origin, and that origin ``(i, j)`` per sample.

        Args:
            x: Images.

        Returns:
            The anchored map and the origins.
        """
        y = self._stock_forward(x)
        return anchor(y, y.shape[-2], y.shape[-1], self.equivit_energy, False)


@equivariant_layer(period="grid", anchored_children=("stages", "head"), fx="traced")
class EquivariantMetaFormer(MetaFormer):
    """timm's ``MetaFormer`` whose stages see the stem's map from an origin chosen by content.

    The stem's strided convolution is anchored (period 4, circular padding) and its map anchored
    with period = the map (:class:`GridAnchoredMetaFormerStem`); timm's stages (pooling,
    separable-convolution and attention token mixers, strided downsampling with zero padding) run
    unchanged on it and see the same map for every circular shift of the image. Feature maps are
    rolled back (:func:`~equivit.token_grid.roll_back_map`). Same parameters and state-dict keys as timm's.
    """

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map in the image's frame.

        Args:
            x: Images; ``H`` and ``W`` multiples of 32.

        Returns:
            The map.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, D, H / 32, W / 32)`
        """
        x, offsets = self.stem(x)
        height, width = x.shape[-2], x.shape[-1]
        for stage in self.stages:
            x = checkpoint(stage, x) if not torch.jit.is_scripting() and self.grad_checkpointing else stage(x)
        return roll_back_map(x, offsets, height, width)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stages' maps in the image's frame, as timm's ``forward_intermediates``.

        Args:
            x: Images; ``H`` and ``W`` multiples of 32.
            indices: The last ``n`` stages if an int, else their indices.
            norm: Unused, as in timm (the final norm is in the head).
            stop_early: Stop after the last stage asked for.
            output_fmt: ``"NCHW"``.
            intermediates_only: Return the maps alone.

        Returns:
            The maps, or the final map and the maps.

        Raises:
            ValueError: If ``output_fmt`` is not ``"NCHW"``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' for MetaFormer features, got {output_fmt!r}")
        take, last = feature_take_indices(len(self.stages), indices)
        x, offsets = self.stem(x)
        height, width = x.shape[-2], x.shape[-1]
        maps: list[torch.Tensor] = []
        for index, stage in enumerate(self.stages):
            if stop_early and index > last:
                break
            x = checkpoint(stage, x) if not torch.jit.is_scripting() and self.grad_checkpointing else stage(x)
            if index in take:
                maps.append(roll_back_map(x, offsets, height, width))
        if intermediates_only:
            return maps
        return roll_back_map(x, offsets, height, width), maps


def convert_metaformer(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``MetaFormer`` (or timm's ``features_only`` wrapper of one) shift-equivariant, in place.

    The stem's convolution is anchored (period 4) and pads circularly, the stem becomes a
    :class:`GridAnchoredMetaFormerStem` (its map anchored with period = the map), the model an
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
    anchored = retype(stem, GridAnchoredMetaFormerStem)
    anchored.equivit_energy = energy
    model.stem = anchored
    report.add("stem", "Stem", "GridAnchoredMetaFormerStem (stem map anchored with period = the map)")
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
