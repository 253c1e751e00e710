"""The SAM ViT family: timm's ``vision_transformer_sam`` module (Segment Anything's image encoder).

SAM's ViT attends within windows of the token grid (zero-padded to whole windows), adds relative
position terms over the whole grid in its global blocks, an absolute embedding and, in some
variants, rotary embeddings of fixed size. The patch embedding is anchored with period = the patch
size and the token grid with period = the grid, so every block sees the same grid for every
circular shift of the image and runs as timm wrote it; the neck's map and feature maps are rolled
back to the image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed_nhwc
from timm.models import vision_transformer_sam as timm_sam
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.vision_transformer_sam import VisionTransformerSAM

from equivit.anchor_core import roll_back
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.layers.patch_embed import AnchoredPatchEmbed
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import anchor_patch_tokens, anchored_grid_embedding

__all__ = ["FAMILY", "EquivariantVisionTransformerSAM", "convert_vit_sam"]


@equivariant_layer(period="grid", anchored_children=("blocks", "neck", "head"), fx="traced")
class EquivariantVisionTransformerSAM(VisionTransformerSAM):
    """timm's ``VisionTransformerSAM`` whose blocks see the token grid from an origin chosen by content.

    Same parameters and state-dict keys as timm's; position terms are added in the anchored frame.
    Maps are rolled back to the image's frame.
    """

    def _anchored_grid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedded grid ``(B, H, W, D)`` anchored with period = the grid, position terms added, and its origins."""
        grid, offsets = anchor_patch_tokens(self.patch_embed(x), self.equivit_energy)
        if self.pos_embed is not None:
            grid = grid + resample_abs_pos_embed_nhwc(self.pos_embed, [grid.shape[1], grid.shape[2]])
        return self.norm_pre(self.patch_drop(self.pos_drop(grid))), offsets

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The neck's map in the image's frame.

        Args:
            x: Images; ``H`` and ``W`` multiples of the patch size (the model's own size where its
                position terms are fixed).

        Returns:
            The map.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, D, H / p, W / p)`
        """
        x, offsets = self._anchored_grid(x)
        for block in self.blocks:
            x = checkpoint(block, x) if self.grad_checkpointing and not torch.jit.is_scripting() else block(x)
        return roll_back(self.neck(x.permute(0, 3, 1, 2)), offsets, False)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The blocks' maps in the image's frame, as timm's ``forward_intermediates``.

        Args:
            x: Images, as for :meth:`forward_features`.
            indices: The last ``n`` blocks if an int, else their indices.
            norm: Pass each map through the neck, as timm does.
            stop_early: Stop after the last block asked for.
            output_fmt: ``"NCHW"``.
            intermediates_only: Return the maps alone.

        Returns:
            The maps, or the neck's map and the maps.

        Raises:
            ValueError: If ``output_fmt`` is not ``"NCHW"``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' for SAM's ViT, got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        x, offsets = self._anchored_grid(x)
        maps: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            if stop_early and index > last:
                break
            x = checkpoint(block, x) if self.grad_checkpointing and not torch.jit.is_scripting() else block(x)
            if index in take:
                y = x.permute(0, 3, 1, 2)
                maps.append(roll_back(self.neck(y) if norm else y, offsets, False))
        if intermediates_only:
            return maps
        return roll_back(self.neck(x.permute(0, 3, 1, 2)), offsets, False), maps


def convert_vit_sam(model: VisionTransformerSAM, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``VisionTransformerSAM`` shift-equivariant, in place. No parameter is added or renamed.

    The patch embedding is anchored with period = the patch size (it returns the token grid); the
    model becomes an :class:`EquivariantVisionTransformerSAM`, which anchors the grid with period =
    the grid.

    Args:
        model: A ``VisionTransformerSAM`` (timm's ``features_only`` wrapper holds one), changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the model is not a ``VisionTransformerSAM`` or its patch
            embedding is not timm's non-overlapping ``PatchEmbed``.
    """
    if not isinstance(model, VisionTransformerSAM):
        raise UnsupportedModelError(f"{type(model).__name__}: expected timm's VisionTransformerSAM")
    if not isinstance(model.patch_embed, AnchoredPatchEmbed):
        model.patch_embed = anchored_grid_embedding(model.patch_embed, report, energy)
    model.__class__ = EquivariantVisionTransformerSAM
    model.equivit_energy = energy
    report.add(
        "",
        "VisionTransformerSAM",
        "EquivariantVisionTransformerSAM (token grid anchored with period = the grid; maps rolled back)",
    )


FAMILY = Family(
    name="vit_sam",
    description="Segment Anything's ViT (samvit_*)",
    model_classes=(VisionTransformerSAM,),
    converted_classes=(EquivariantVisionTransformerSAM,),
    convert=convert_vit_sam,  # type: ignore[arg-type]
    entry="patch_embed",
    feature_markers=module_types(timm_sam),
    accepted=(*module_types(timm_sam), AnchoredPatchEmbed),
    timm_modules=("vision_transformer_sam",),
    examples={
        "vit_sam": Example(
            "samvit_base_patch16_224",
            {
                "img_size": (64, 96),
                "embed_dim": 64,
                "depth": 4,
                "num_heads": 2,
                "global_attn_indexes": [1, 3],
                "window_size": 3,
            },
            (64, 96),
            quick=False,
        ),
        "vit_sam_neck": Example(
            "samvit_base_patch16",
            {
                "img_size": 64,
                "embed_dim": 64,
                "depth": 3,
                "num_heads": 2,
                "global_attn_indexes": [1],
                "window_size": 3,
                "neck_chans": 32,
            },
            (64, 64),
            quick=False,
        ),
    },
)
