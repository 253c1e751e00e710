"""The Swin v2 CR family: timm ``SwinTransformerV2Cr`` (``swinv2_cr_*``, scaled cosine attention, post-norm)."""

from __future__ import annotations

import torch
from timm.models import swin_transformer_v2_cr as timm_swin_cr
from timm.models._features import feature_take_indices
from timm.models.swin_transformer_v2_cr import PatchEmbed, SwinTransformerV2Cr
from torch import nn

from equivit.energy import Energy
from equivit.layers import AnchoredConv2d
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import (
    GridAnchoredFeatureListNet,
    grid_anchored_entry,
    grid_anchored_entry_class,
    install_grid_anchored_model,
    roll_back_map,
)

__all__ = ["FAMILY", "EquivariantSwinTransformerV2Cr", "GridAnchoredSwinCrPatchEmbed", "convert_swin_v2_cr"]


GridAnchoredSwinCrPatchEmbed = grid_anchored_entry_class(PatchEmbed)
"""Swin v2 CR patch embedding, projection anchored (period = patch), grid anchored with period = the grid."""


@equivariant_layer(period="grid", anchored_children=("stages", "head"), fx="traced")
class EquivariantSwinTransformerV2Cr(SwinTransformerV2Cr):
    """timm's ``SwinTransformerV2Cr`` whose stages see the token grid from an origin chosen by content.

    The patch projection is anchored (period = patch size) and the token grid is anchored with
    period = the grid (:data:`GridAnchoredSwinCrPatchEmbed`); timm's stages (shifted windows with
    their border masks, continuous position biases, patch merging) run unchanged on it and see the
    same grid for every circular shift of the image. Feature maps are rolled back
    (:func:`~equivit.token_grid.roll_back_map`). Same parameters and state-dict keys as timm's.
    """

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map in the image's frame.

        Args:
            x: Images of the model's size.

        Returns:
            The map.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, D, H / 32, W / 32)`
        """
        x, offsets = self.patch_embed(x)
        height, width = x.shape[-2], x.shape[-1]
        return roll_back_map(self.stages(x), offsets, height, width)

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
            x: Images of the model's size.
            indices: The last ``n`` stages if an int, else their indices.
            norm: Unused, as in timm (the stages end normed).
            stop_early: Stop after the last stage asked for.
            output_fmt: ``"NCHW"``.
            intermediates_only: Return the maps alone.

        Returns:
            The maps, or the final map and the maps.

        Raises:
            ValueError: If ``output_fmt`` is not ``"NCHW"``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' for Swin v2 CR features, got {output_fmt!r}")
        take, last = feature_take_indices(len(self.stages), indices)
        x, offsets = self.patch_embed(x)
        height, width = x.shape[-2], x.shape[-1]
        maps: list[torch.Tensor] = []
        for index, stage in enumerate(self.stages):
            if stop_early and index > last:
                break
            x = stage(x)
            if index in take:
                maps.append(roll_back_map(x, offsets, height, width))
        if intermediates_only:
            return maps
        return roll_back_map(x, offsets, height, width), maps


def convert_swin_v2_cr(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``SwinTransformerV2Cr`` (or timm's ``features_only`` wrapper of one) shift-equivariant, in place.

    The patch projection is anchored (period = patch size), the patch embedding becomes a
    :data:`GridAnchoredSwinCrPatchEmbed` (token grid anchored with period = the grid), the model
    an :class:`EquivariantSwinTransformerV2Cr` (the wrapper a
    :class:`~equivit.token_grid.GridAnchoredFeatureListNet`). No parameter is added or renamed.
    Inputs: the model's image size (its windows and masks are built for it).

    Args:
        model: The model, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the patch embedding is not timm's Swin v2 CR ``PatchEmbed``.
    """
    embed = model.patch_embed
    if type(embed) is not PatchEmbed or type(embed.proj) is not nn.Conv2d:
        raise UnsupportedModelError(f"patch_embed: {type(embed).__name__} is not timm's Swin v2 CR PatchEmbed")
    patch = (int(embed.proj.stride[0]), int(embed.proj.stride[1]))
    embed.proj = AnchoredConv2d.from_conv(embed.proj, energy=energy)
    anchored = grid_anchored_entry(embed, energy)
    model.patch_embed = anchored
    report.add(
        "patch_embed",
        "PatchEmbed",
        f"GridAnchoredPatchEmbed (projection anchored, period {patch[0]}; token grid anchored, period = grid)",
    )
    report.input_multiple = (patch[0] * 8, patch[1] * 8)  # three patch mergings, windows checked by timm
    install_grid_anchored_model(model, report, SwinTransformerV2Cr, EquivariantSwinTransformerV2Cr, "patch_embed")


FAMILY = Family(
    name="swin_v2_cr",
    description="Swin v2 CR (swinv2_cr_*)",
    model_classes=(SwinTransformerV2Cr,),
    converted_classes=(EquivariantSwinTransformerV2Cr,),
    convert=convert_swin_v2_cr,  # type: ignore[arg-type]
    entry="patch_embed",
    feature_markers=(PatchEmbed, GridAnchoredSwinCrPatchEmbed),
    accepted=(*module_types(timm_swin_cr), GridAnchoredFeatureListNet),
    timm_modules=("swin_transformer_v2_cr",),
    examples={
        "swin_v2_cr": Example(
            "swinv2_cr_tiny_224",
            {"img_size": (64, 128), "embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)}
            | {"window_size": 2},
            (64, 128),
            quick=False,  # the stem-anchored policy is tested on maxvit
        ),
    },
)
