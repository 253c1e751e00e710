"""The ConViT family: timm's ``convit`` module.

ConViT's gated positional self-attention (GPSA) adds scores computed from the offsets between
token positions on the whole grid (not circular), and the model adds an absolute position
embedding. The patch embedding is anchored (period = patch size) and the token grid is anchored
with period = the whole grid before the position embedding, so the blocks see the same sequence
for every circular shift of the image and run as timm wrote them. Patch tokens are rolled back for
``forward_features`` and ``forward_intermediates``. No parameter is added or renamed.
"""

from __future__ import annotations

import torch
from timm.models import convit as timm_convit
from timm.models._features import feature_take_indices
from timm.models.convit import ConVit
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

__all__ = ["FAMILY", "EquivariantConVit", "convert_convit"]


@equivariant_layer(period="grid", anchored_children=("blocks", "norm", "head"), fx="traced")
class EquivariantConVit(ConVit):
    """timm's ``ConVit`` whose blocks see the patch tokens from an origin chosen by content.

    The image is anchored with period = patch size, then the token grid with period = the whole
    grid, before timm's absolute position embedding is added. Same parameters and state-dict keys
    as timm's.
    """

    def _anchored_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Embed, check the grid, anchor it, add the position embedding."""
        grid = self.patch_embed(x)  # (B, H, W, C)
        check_grid_size(grid, self.patch_embed.grid_size, self.patch_embed.patch_size, [x.shape[-2], x.shape[-1]])
        batch, height, width, channels = grid.shape
        grid, offsets = anchor_patch_tokens(grid, self.equivit_energy)
        tokens = grid.reshape(batch, height * width, channels)
        if self.use_pos_embed:
            tokens = tokens + self.pos_embed
        return self.pos_drop(tokens), offsets, height, width

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The class token (once inserted), then the patch tokens in the image's frame, normed.

        Args:
            x: Images of the model's size.

        Returns:
            The tokens.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, 1 + H W / p^2, D)`
        """
        x, offsets, height, width = self._anchored_tokens(x)
        prefix = 0
        for index, block in enumerate(self.blocks):
            if index == self.local_up_to_layer:
                x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
                prefix = 1
            x = block(x)
        return roll_back_patch_tokens(self.norm(x), offsets, height, width, prefix)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The blocks' patch tokens as maps that move with the image, as timm's ``forward_intermediates``.

        Args:
            x: Images of the model's size.
            indices: The last ``n`` blocks if an int, else the block indices to return.
            norm: Apply the final norm to the intermediates.
            stop_early: Stop after the last block asked for.
            output_fmt: ``"NCHW"`` or ``"NLC"``.
            intermediates_only: Return the intermediates alone.

        Returns:
            The intermediates, or the final tokens (as :meth:`forward_features`) and the intermediates.

        Raises:
            ValueError: If ``output_fmt`` is neither ``"NCHW"`` nor ``"NLC"``.
        """
        if output_fmt != "NCHW" and output_fmt != "NLC":
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        x, offsets, height, width = self._anchored_tokens(x)
        maps: list[torch.Tensor] = []
        prefix = 0
        for index, block in enumerate(self.blocks):
            if stop_early and index > last:
                break
            if index == self.local_up_to_layer:
                x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
                prefix = 1
            x = block(x)
            if index in take:
                maps.append(patch_token_map(self.norm(x) if norm else x, offsets, height, width, prefix, output_fmt))
        if intermediates_only:
            return maps
        return roll_back_patch_tokens(self.norm(x), offsets, height, width, prefix), maps


def convert_convit(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``ConVit`` shift-equivariant, in place. No parameter is added or renamed.

    The patch projection is anchored (period = patch size) and the model becomes an
    :class:`EquivariantConVit`, which anchors the token grid with period = the grid before the
    absolute position embedding. Inputs must have the model's image size.

    Args:
        model: A ``ConVit``, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the patch embedding is not timm's ``PatchEmbed`` with
            non-overlapping patches (a hybrid backbone).
    """
    model.patch_embed = anchored_grid_embedding(model.patch_embed, report, energy)
    model.__class__ = EquivariantConVit
    model.equivit_energy = energy
    report.add(
        "",
        "ConVit",
        "EquivariantConVit (token grid anchored with period = grid; pos_embed and GPSA kept; patch tokens rolled back)",
    )


FAMILY = Family(
    name="convit",
    description="ConViT (convit_*)",
    model_classes=(ConVit,),
    converted_classes=(EquivariantConVit,),
    convert=convert_convit,  # type: ignore[arg-type]
    entry="patch_embed",
    accepted=module_types(timm_convit),
    timm_modules=("convit",),
    examples={
        "convit": Example(
            "convit_tiny",
            {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 4, "local_up_to_layer": 2},
            (64, 64),
            quick=False,
        ),
    },
)
