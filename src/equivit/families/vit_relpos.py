"""ViT with relative position terms over the whole grid: timm ``VisionTransformerRelPos`` (``vit_relpos_*``)."""

from __future__ import annotations

import torch
from timm.models import vision_transformer_relpos as timm_relpos
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.vision_transformer_relpos import VisionTransformerRelPos
from torch import nn

from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport
from equivit.token_grid import (
    anchor_patch_tokens,
    anchored_grid_embedding,
    check_grid_size,
    patch_token_map,
    roll_back_patch_tokens,
)

__all__ = ["FAMILY", "EquivariantVisionTransformerRelPos", "convert_vit_relpos"]


@equivariant_layer(
    period="grid", anchored_children=("shared_rel_pos", "blocks", "norm", "fc_norm", "head"), fx="traced"
)
class EquivariantVisionTransformerRelPos(VisionTransformerRelPos):
    """timm's ``VisionTransformerRelPos`` whose blocks see the patch tokens from an origin chosen by content.

    The image is anchored with period = patch size, then the token grid with period = the whole
    grid (:mod:`equivit.token_grid`). The relative position terms (a bias table or an MLP over
    log-spaced offsets, per block or shared) are timm's, unchanged, applied in that content-chosen
    frame, where a circular shift of the image gives the same sequence; patch tokens are rolled
    back for ``forward_features`` and ``forward_intermediates``. Same parameters and state-dict
    keys as timm's.
    """

    def _anchored_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Embed, check the grid, anchor it, prepend the class token: ``(tokens, offsets, height, width)``."""
        grid = self.patch_embed(x)  # (B, H, W, C)
        check_grid_size(grid, self.patch_embed.grid_size, self.patch_embed.patch_size, [x.shape[-2], x.shape[-1]])
        batch, height, width, channels = grid.shape
        grid, offsets = anchor_patch_tokens(grid, self.equivit_energy)
        tokens = grid.reshape(batch, height * width, channels)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        return tokens, offsets, height, width

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the blocks and the final norm, patch tokens in the image's frame.

        Args:
            x: Images of the model's size.

        Returns:
            The class token (if any), then the patch tokens (row-major).

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, P + H W / p^2, D)`
        """
        x, offsets, height, width = self._anchored_tokens(x)
        shared_rel_pos = self.shared_rel_pos.get_bias() if self.shared_rel_pos is not None else None
        for block in self.blocks:
            if not torch.jit.is_scripting() and self.grad_checkpointing:
                x = checkpoint(block, x, shared_rel_pos=shared_rel_pos)
            else:
                x = block(x, shared_rel_pos=shared_rel_pos)
        return roll_back_patch_tokens(self.norm(x), offsets, height, width, self.num_prefix_tokens)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs as maps that move with the image, as timm's ``forward_intermediates``.

        Args:
            x: Images of the model's size.
            indices: The last ``n`` blocks if an int, else the block indices to return.
            return_prefix_tokens: Also return each block's prefix tokens (not in TorchScript).
            norm: Apply the final norm to the intermediates.
            stop_early: Stop after the last block asked for.
            output_fmt: ``"NCHW"`` or ``"NLC"``.
            intermediates_only: Return the intermediates alone.

        Returns:
            The intermediates, or the final tokens and the intermediates.

        Raises:
            ValueError: If ``output_fmt`` is neither ``"NCHW"`` nor ``"NLC"``.
        """
        if output_fmt != "NCHW" and output_fmt != "NLC":
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        x, offsets, height, width = self._anchored_tokens(x)
        prefix = self.num_prefix_tokens
        shared_rel_pos = self.shared_rel_pos.get_bias() if self.shared_rel_pos is not None else None
        maps: list[torch.Tensor] = []
        prefixes: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            if stop_early and index > last:
                break
            if not torch.jit.is_scripting() and self.grad_checkpointing:
                x = checkpoint(block, x, shared_rel_pos=shared_rel_pos)
            else:
                x = block(x, shared_rel_pos=shared_rel_pos)
            if index in take:
                y = self.norm(x) if norm else x
                maps.append(patch_token_map(y, offsets, height, width, prefix, output_fmt))
                prefixes.append(y[:, :prefix])
        if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips only this exact condition)
            if return_prefix_tokens:
                paired = list(zip(maps, prefixes, strict=True))
                if intermediates_only:
                    return paired  # type: ignore[return-value]
                return roll_back_patch_tokens(self.norm(x), offsets, height, width, prefix), paired  # type: ignore[return-value]
        if intermediates_only:
            return maps
        return roll_back_patch_tokens(self.norm(x), offsets, height, width, prefix), maps


def convert_vit_relpos(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``VisionTransformerRelPos`` shift-equivariant, in place. No parameter is added or renamed.

    The patch projection is anchored (period = patch size) and the model becomes an
    :class:`EquivariantVisionTransformerRelPos`, which anchors the token grid with period = the
    grid. Inputs must have the model's image size (its relative position tables are built for it).

    Args:
        model: A ``VisionTransformerRelPos``, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the patch embedding is not timm's ``PatchEmbed`` with
            non-overlapping patches.
    """
    model.patch_embed = anchored_grid_embedding(model.patch_embed, report, energy)
    model.__class__ = EquivariantVisionTransformerRelPos
    model.equivit_energy = energy
    report.add(
        "",
        "VisionTransformerRelPos",
        "EquivariantVisionTransformerRelPos (token grid anchored with period = grid; relative position terms "
        "kept; patch tokens rolled back)",
    )


FAMILY = Family(
    name="vit_relpos",
    description="ViT with relative position terms over the grid (vit_relpos_*, vit_srelpos_*)",
    model_classes=(VisionTransformerRelPos,),
    converted_classes=(EquivariantVisionTransformerRelPos,),
    convert=convert_vit_relpos,  # type: ignore[arg-type]
    entry="patch_embed",
    accepted=module_types(timm_relpos),
    timm_modules=("vision_transformer_relpos",),
    empty_batch_ok=True,
    examples={
        "vit_relpos": Example(
            "vit_relpos_small_patch16_224",
            {"img_size": (32, 48), "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2},
            (32, 48),
            quick=False,  # the token-grid policy is tested on eva02
        ),
        "vit_srelpos_cls": Example(
            "vit_srelpos_small_patch16_224",
            {"img_size": 48, "patch_size": 16, "embed_dim": 32, "depth": 3, "num_heads": 2, "rel_pos_dim": 32}
            | {"class_token": True, "global_pool": "token"},
            (48, 48),
            quick=False,
        ),
    },
)
