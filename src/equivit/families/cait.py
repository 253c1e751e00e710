"""The CaiT family: timm ``Cait`` (class-attention image transformers, ``cait_*``)."""

from __future__ import annotations

import torch
from timm.models import cait as timm_cait
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.cait import Cait
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

__all__ = ["FAMILY", "EquivariantCait", "convert_cait"]


@equivariant_layer(period="grid", anchored_children=("blocks", "blocks_token_only", "norm", "head"), fx="traced")
class EquivariantCait(Cait):
    """timm's ``Cait`` whose blocks see the patch tokens from an origin chosen by content.

    The image is anchored with period = patch size, then the token grid with period = the whole
    grid (:mod:`equivit.token_grid`), before timm's absolute position embedding is added: in that
    content-chosen frame a circular shift of the image gives the same sequence. The class token
    then attends over the patch tokens (timm's class-attention blocks, unchanged). Patch tokens
    are rolled back for ``forward_features`` and ``forward_intermediates``. Same parameters and
    state-dict keys as timm's.
    """

    def _anchored_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Embed, check the grid, anchor it, add the position embedding."""
        grid = self.patch_embed(x)  # (B, H, W, C)
        check_grid_size(grid, self.patch_embed.grid_size, self.patch_embed.patch_size, [x.shape[-2], x.shape[-1]])
        batch, height, width, channels = grid.shape
        grid, offsets = anchor_patch_tokens(grid, self.equivit_energy)
        tokens = grid.reshape(batch, height * width, channels) + self.pos_embed
        return self.pos_drop(tokens), offsets, height, width

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The class token after the class-attention blocks, then the patch tokens in the image's frame, normed.

        Args:
            x: Images of the model's size.

        Returns:
            The class token (if the model has class-attention blocks), then the patch tokens.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, 1 + H W / p^2, D)`
        """
        x, offsets, height, width = self._anchored_tokens(x)
        for block in self.blocks:
            x = checkpoint(block, x) if not torch.jit.is_scripting() and self.grad_checkpointing else block(x)
        prefix = 0
        if self.blocks_token_only is not None:
            x = self.forward_cls(x)
            prefix = 1
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
        """Outputs of the patch-token blocks as maps that move with the image, as timm's ``forward_intermediates``.

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
        for index, block in enumerate(self.blocks):
            if stop_early and index > last:
                break
            x = checkpoint(block, x) if not torch.jit.is_scripting() and self.grad_checkpointing else block(x)
            if index in take:
                maps.append(patch_token_map(self.norm(x) if norm else x, offsets, height, width, 0, output_fmt))
        if intermediates_only:
            return maps
        prefix = 0
        if self.blocks_token_only is not None:
            x = self.forward_cls(x)
            prefix = 1
        return roll_back_patch_tokens(self.norm(x), offsets, height, width, prefix), maps


def convert_cait(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``Cait`` shift-equivariant, in place. No parameter is added or renamed.

    The patch projection is anchored (period = patch size) and the model becomes an
    :class:`EquivariantCait`, which anchors the token grid with period = the grid before the
    absolute position embedding. Inputs must have the model's image size.

    Args:
        model: A ``Cait``, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the patch embedding is not timm's ``PatchEmbed`` with
            non-overlapping patches.
    """
    model.patch_embed = anchored_grid_embedding(model.patch_embed, report, energy)
    model.__class__ = EquivariantCait
    model.equivit_energy = energy
    report.add(
        "",
        "Cait",
        "EquivariantCait (token grid anchored with period = grid; pos_embed kept; patch tokens rolled back)",
    )


FAMILY = Family(
    name="cait",
    description="CaiT (cait_*)",
    model_classes=(Cait,),
    converted_classes=(EquivariantCait,),
    convert=convert_cait,  # type: ignore[arg-type]
    entry="patch_embed",
    accepted=module_types(timm_cait),
    timm_modules=("cait",),
    examples={
        "cait": Example(
            "cait_xxs24_224",
            {"img_size": (32, 48), "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2, "depth_token_only": 1},
            (32, 48),
            quick=False,  # the token-grid policy is tested on eva02
        ),
    },
)
