"""The EVA family: timm ``Eva`` (EVA, EVA-02, DINOv3, Perception Encoder and the other ``eva`` models)."""

from __future__ import annotations

import torch
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.eva import Eva
from torch import nn

from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import (
    anchor_patch_tokens,
    anchored_grid_embedding,
    check_grid_size,
    patch_token_map,
    roll_back_patch_tokens,
)

__all__ = ["FAMILY", "EquivariantEva", "convert_eva"]


@equivariant_layer(
    period="grid",
    anchored_children=("rope", "norm_pre", "blocks", "norm", "attn_pool", "fc_norm", "head"),
    fx="traced",
)
class EquivariantEva(Eva):
    """timm's ``Eva`` whose blocks see the patch tokens from an origin chosen by content.

    The image is anchored with period = patch size (:class:`~equivit.layers.AnchoredPatchEmbed`),
    then the token grid with period = the whole grid (:func:`~equivit.token_grid.anchor_patch_tokens`),
    before the position terms are added. The absolute position embedding and the rotary
    embeddings are timm's, unchanged, applied in that content-chosen frame: a circular shift of
    the image reaches the blocks as the same sequence, so pooled outputs are invariant. The patch
    tokens of ``forward_features`` and ``forward_intermediates`` are rolled back to the image's
    frame, so that token maps move with the image. Same parameters and state-dict keys as timm's.
    """

    def _anchored_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int, int]:
        """Embed, anchor the token grid, add the position terms.

        Returns:
            ``(tokens, rope, offsets, height, width)``: the sequence (prefix tokens first), the
            rotary embedding (or None), the grid origins, the grid size.

        Raises:
            ValueError: If the model has a fixed grid and ``x`` does not give it.
        """
        grid = self.patch_embed(x)  # (B, H, W, C)
        batch, height, width, channels = grid.shape
        if not self.dynamic_img_size:
            check_grid_size(grid, self.patch_embed.grid_size, self.patch_embed.patch_size, [x.shape[-2], x.shape[-1]])
        grid, offsets = anchor_patch_tokens(grid, self.equivit_energy)
        tokens = grid if self.dynamic_img_size else grid.reshape(batch, height * width, channels)
        tokens, rope = self._pos_embed(tokens)
        return self.norm_pre(tokens), rope, offsets, height, width

    def _depth_rope(self, rope: torch.Tensor | None, index: int) -> torch.Tensor | None:
        """The rotary embedding of block ``index``: its own in the mixed mode, else the shared one."""
        if rope is not None and self.rope_mixed:
            return rope[index]
        return rope

    def forward_features(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """Tokens after the blocks and the final norm, patch tokens in the image's frame.

        Args:
            x: Images; ``H`` and ``W`` multiples of the patch size.
            attn_mask: Optional attention mask, as in timm.
            is_causal: Causal attention, as in timm.

        Returns:
            Prefix tokens, then the patch tokens (row-major).

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, P + H W / p^2, D)`
        """
        x, rope, offsets, height, width = self._anchored_tokens(x)
        for index, block in enumerate(self.blocks):
            block_rope = self._depth_rope(rope, index)
            if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips only this exact condition)
                if self.grad_checkpointing:
                    x = checkpoint(block, x, rope=block_rope, attn_mask=attn_mask, is_causal=is_causal)
                    continue
            x = block(x, rope=block_rope, attn_mask=attn_mask, is_causal=is_causal)
        x = self.norm(x)
        return roll_back_patch_tokens(x, offsets, height, width, self.num_prefix_tokens)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs as maps that move with the image, as timm's ``forward_intermediates``.

        Args:
            x: Images.
            indices: The last ``n`` blocks if an int, else the block indices to return.
            return_prefix_tokens: Also return each block's prefix tokens (not in TorchScript).
            norm: Apply the final norm to the intermediates.
            stop_early: Stop after the last block asked for.
            output_fmt: ``"NCHW"`` or ``"NLC"``.
            intermediates_only: Return the intermediates alone.
            attn_mask: Optional attention mask, as in timm.
            is_causal: Causal attention, as in timm.

        Returns:
            The intermediates, or the final tokens and the intermediates.

        Raises:
            ValueError: If ``output_fmt`` is neither ``"NCHW"`` nor ``"NLC"``.
        """
        if output_fmt != "NCHW" and output_fmt != "NLC":
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC' for EVA features, got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        x, rope, offsets, height, width = self._anchored_tokens(x)
        prefix = self.num_prefix_tokens
        maps: list[torch.Tensor] = []
        prefixes: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            if stop_early and index > last:
                break
            block_rope = self._depth_rope(rope, index)
            if not torch.jit.is_scripting() and self.grad_checkpointing:
                x = checkpoint(block, x, rope=block_rope, attn_mask=attn_mask, is_causal=is_causal)
            else:
                x = block(x, rope=block_rope, attn_mask=attn_mask, is_causal=is_causal)
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


def convert_eva(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``Eva`` shift-equivariant, in place. No parameter is added or renamed.

    The patch projection is anchored (period = patch size), the model becomes an
    :class:`EquivariantEva`, which anchors the token grid with period = the grid before the
    position terms. Inputs must be multiples of the patch size (and the model's image size,
    unless it was created with ``dynamic_img_size=True``).

    Args:
        model: An ``Eva``, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the patch embedding is not timm's ``PatchEmbed`` with
            non-overlapping patches, or the model drops patches while training.
    """
    if model.patch_drop is not None:
        raise UnsupportedModelError(
            "patch_drop: dropping patch tokens leaves no grid to roll back; create the model with patch_drop_rate=0"
        )
    model.patch_embed = anchored_grid_embedding(model.patch_embed, report, energy)
    model.__class__ = EquivariantEva
    model.equivit_energy = energy
    terms = [name for name in ("pos_embed", "rope") if getattr(model, name) is not None]
    report.add(
        "",
        "Eva",
        "EquivariantEva (token grid anchored with period = grid; "
        + (", ".join(terms) + " kept" if terms else "no position terms")
        + "; patch tokens rolled back)",
    )


FAMILY = Family(
    name="eva",
    description="EVA, EVA-02, DINOv3, Perception Encoder and the other models of timm's eva module",
    model_classes=(Eva,),
    converted_classes=(EquivariantEva,),
    convert=convert_eva,  # type: ignore[arg-type]
    entry="patch_embed",
    timm_modules=("eva",),
    # timm's attention infers a size from the data (a reshape with -1): an empty batch fails in the stock model too.
    empty_batch_ok=False,
    examples={
        "eva02": Example(
            "eva02_tiny_patch14_224",
            {
                "img_size": (32, 48),
                "patch_size": 8,
                "embed_dim": 32,
                "depth": 3,
                "num_heads": 2,
                "ref_feat_shape": (4, 6),
                "head_init_scale": 1.0,  # timm's 0.001 gives logits too small to test at float32 tolerances
            },
            (32, 48),
        ),
        "dinov3": Example(
            "vit_small_patch16_dinov3",
            {"patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2, "head_init_scale": 1.0},
            (48, 32),
            quick=False,  # the token-grid policy is tested on eva02 (compile, TorchScript, autocast)
        ),
    },
)
