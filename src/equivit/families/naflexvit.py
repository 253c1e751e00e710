"""The NaFlexViT family: timm's ``naflexvit`` module (ViTs for flexible sizes, SigLIP 2, RADIO).

NaFlexViT embeds patches (a linear layer on patchified images, or a convolution of kernel =
stride), adds a position embedding resampled to the patch grid (learned or factorized) and may
apply rotary embeddings; none of these is equivariant to a circular shift. On images (not on
pre-patchified NaFlex batches) the embedding anchors the image with period = the patch size, then
the patch grid with period = the grid, before any position term (:class:`AnchoredNaFlexEmbeds`);
every block after it sees the same tokens for every circular shift of the image and runs as timm
wrote it. Patch tokens are rolled back to the image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import torch
from timm.models import naflexvit as timm_naflexvit
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.naflexvit import NaFlexEmbeds, NaFlexVit, batch_patchify
from torch import nn

from equivit.anchor_core import anchor
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.layers.sharing import retype
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import patch_token_map, roll_back_patch_tokens

__all__ = ["FAMILY", "AnchoredNaFlexEmbeds", "EquivariantNaFlexVit", "convert_naflexvit"]


def _refuse_naflex_inputs(x: object, *others: torch.Tensor | None) -> None:
    """Refuse pre-patchified NaFlex inputs: their patches come with coordinates, not as an image to anchor."""
    # FX traces optional arguments as proxies: a traced graph is the image path.
    given = [other for other in others if other is not None and not isinstance(other, torch.fx.Proxy)]
    if isinstance(x, dict) or given:
        raise ValueError(
            "a converted NaFlexViT takes images (B, C, H, W) only: pre-patchified NaFlex batches (a dict, "
            "patch_coord, patch_valid, attn_mask) name patch positions in the image's frame, which the "
            "anchored blocks do not see; run the stock model for them"
        )


@equivariant_layer(period="grid", fx="leaf")
class AnchoredNaFlexEmbeds(NaFlexEmbeds):
    """timm's ``NaFlexEmbeds`` for images: anchored with period = the patch, then with period = the grid.

    Same parameters as timm's. Position terms and prefix tokens are added after both anchors, so
    that a circular shift of the image gives the same tokens, bit for bit.
    """

    equivit_energy = "l1"  # no annotation: TorchScript cannot read a postponed one on a class

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """Prefix tokens, then the patch tokens of the anchored grid with position terms; and the grid's origins.

        Args:
            x: Images, ``H`` and ``W`` multiples of the patch size.

        Returns:
            The tokens and each sample's origin ``(i, j)`` on the patch grid.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, P + H W / p^2, D)` and :math:`(B, 2)`
        """
        x, _ = anchor(x, self.patch_size[0], self.patch_size[1], self.equivit_energy, False)
        batch = x.shape[0]
        if self.is_linear:
            x, grid_size = batch_patchify(x, self.patch_size, pad=False, channels_last=self.channels_last)
            if self.norm_input is not None:
                x = self.norm_input(x)
            x = self.proj(x)
        else:
            x = self.proj(x)
            grid_size = (x.shape[-2], x.shape[-1])
            x = x.flatten(2).transpose(1, 2)
        x = self.norm(x)
        grid, offsets = anchor(
            x.reshape(batch, grid_size[0], grid_size[1], x.shape[-1]),
            grid_size[0],
            grid_size[1],
            self.equivit_energy,
            True,
        )
        x = grid.flatten(1, 2)
        if self.pos_embed_type == "learned":
            self._apply_learned_pos_embed(x, grid_size=grid_size)
        elif self.pos_embed_type == "factorized":
            self._apply_factorized_pos_embed(x, grid_size=grid_size)
        prefix: list[torch.Tensor] = []
        if self.cls_token is not None:
            prefix.append(self.cls_token.expand(batch, -1, -1))
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(batch, -1, -1))
        if prefix:
            x = torch.cat([*prefix, x], dim=1)
        return self.pos_drop(x), offsets


@equivariant_layer(
    period="grid", anchored_children=("rope", "blocks", "norm", "attn_pool", "fc_norm", "head"), fx="traced"
)
class EquivariantNaFlexVit(NaFlexVit):
    """timm's ``NaFlexVit`` whose blocks see the patch grid from an origin chosen by content (images only).

    Same parameters and state-dict keys as timm's. Patch tokens are rolled back to the image's
    frame in :meth:`forward_features` and :meth:`forward_intermediates`.
    """

    def _embedded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int, object]:
        """Tokens after the anchored embedding and ``norm_pre``, the origins, the grid size and the rotary terms."""
        tokens, offsets = self.embeds(x)
        height, width = x.shape[-2] // self.embeds.patch_size[0], x.shape[-1] // self.embeds.patch_size[1]
        rope = self.rope.get_embed(shape=(height, width)) if self.rope is not None else None
        return self.norm_pre(tokens), offsets, height, width, rope

    def _block(self, block: nn.Module, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        """One block, with its rotary embedding where the model has one."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(block, x, rope=rope) if rope is not None else checkpoint(block, x)
        return block(x, rope=rope) if rope is not None else block(x)

    def _run(
        self, x: torch.Tensor, rope: object, take: list[int], last: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Blocks ``0..last`` (all if ``last`` < 0), collecting the outputs of the blocks in ``take``."""
        taken: list[torch.Tensor] = []
        ropes = iter(rope) if self.rope_is_mixed and rope is not None else None
        for index, block in enumerate(self.blocks):
            if 0 <= last < index:
                break
            x = self._block(block, x, next(ropes) if ropes is not None else rope)  # type: ignore[arg-type]
            if index in take:
                taken.append(x)
        return x, taken

    def forward_features(
        self,
        patches: torch.Tensor,
        patch_coord: torch.Tensor | None = None,
        patch_valid: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Prefix tokens, then the patch tokens in the image's frame, normed.

        Args:
            patches: Images (named as timm's argument).
            patch_coord: Must be ``None``.
            patch_valid: Must be ``None``.
            attn_mask: Must be ``None``.

        Returns:
            The tokens.

        Raises:
            ValueError: If NaFlex inputs are given.

        Shape:
            - patches: :math:`(B, C, H, W)`
            - output: :math:`(B, P + H W / p^2, D)`
        """
        _refuse_naflex_inputs(patches, patch_coord, patch_valid, attn_mask)
        x, offsets, height, width, rope = self._embedded(patches)
        x, _ = self._run(x, rope, [], -1)
        return roll_back_patch_tokens(self.norm(x), offsets, height, width, self.num_prefix_tokens)

    def forward_intermediates(  # type: ignore[override]
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
        patch_coord: torch.Tensor | None = None,
        patch_valid: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> object:
        """The blocks' patch tokens in the image's frame, as timm's ``forward_intermediates`` (images only).

        Args:
            x: Images.
            indices: The last ``n`` blocks if an int, else their indices.
            return_prefix_tokens: Pair each map with its block's prefix tokens.
            norm: Apply the final norm to each intermediate.
            stop_early: Stop after the last block asked for.
            output_fmt: ``"NCHW"`` (maps) or ``"NLC"`` (tokens).
            intermediates_only: Return the intermediates alone.
            output_dict: Return a dict with ``image_intermediates`` (and ``image_features``,
                ``image_intermediates_prefix``), as timm does.
            patch_coord: Must be ``None``.
            patch_valid: Must be ``None``.
            attn_mask: Must be ``None``.

        Returns:
            As timm's: the intermediates, the final tokens and the intermediates, or a dict.

        Raises:
            ValueError: If NaFlex inputs are given or ``output_fmt`` is another format.
        """
        _refuse_naflex_inputs(x, patch_coord, patch_valid, attn_mask)
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        tokens, offsets, height, width, rope = self._embedded(x)
        tokens, taken = self._run(tokens, rope, take, last if stop_early else -1)
        prefix = self.num_prefix_tokens
        maps, prefixes = [], []
        for y in taken:
            y = self.norm(y) if norm else y
            maps.append(patch_token_map(y, offsets, height, width, prefix, output_fmt))
            prefixes.append(y[:, :prefix])
        final = roll_back_patch_tokens(self.norm(tokens), offsets, height, width, prefix)
        if output_dict:
            result: dict[str, object] = {"image_intermediates": maps}
            if prefix and return_prefix_tokens:
                result["image_intermediates_prefix"] = prefixes
            if not intermediates_only:
                result["image_features"] = final
            return result
        intermediates: list[object] = list(maps)
        if prefix and return_prefix_tokens:
            intermediates = list(zip(maps, prefixes, strict=True))
        if intermediates_only:
            return intermediates
        return final, intermediates

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        patch_coord: torch.Tensor | None = None,
        patch_valid: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits, invariant to circular shifts of ``x``.

        Args:
            x: Images.
            patch_coord: Must be ``None``.
            patch_valid: Must be ``None``.
            attn_mask: Must be ``None``.

        Returns:
            The logits.

        Raises:
            ValueError: If NaFlex inputs are given.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, K)`
        """
        _refuse_naflex_inputs(x, patch_coord, patch_valid, attn_mask)
        return self.forward_head(self.forward_features(x))


def convert_naflexvit(model: NaFlexVit, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``NaFlexVit`` shift-equivariant on images, in place. No parameter is added or renamed.

    Its embedding becomes an :class:`AnchoredNaFlexEmbeds` and the model an
    :class:`EquivariantNaFlexVit`. Inputs: images whose sides are multiples of the patch size.

    Args:
        model: A ``NaFlexVit`` (timm's ``features_only`` wrapper holds one), changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the model is not a ``NaFlexVit``, or drops patches in training
            (``patch_drop_rate > 0``: the kept tokens no longer form a grid to roll back).
    """
    if not isinstance(model, NaFlexVit):
        raise UnsupportedModelError(f"{type(model).__name__}: expected timm's NaFlexVit")
    if model.patch_drop is not None:
        raise UnsupportedModelError(
            "patch_drop: patch dropout keeps tokens that no longer form a grid; create the model with patch_drop_rate=0"
        )
    embeds = model.embeds
    if type(embeds) is NaFlexEmbeds:
        model.embeds = retype(embeds, AnchoredNaFlexEmbeds)
        model.embeds.equivit_energy = energy
        report.add("embeds", "NaFlexEmbeds", "AnchoredNaFlexEmbeds (period = patch, then the grid)")
    model.__class__ = EquivariantNaFlexVit
    report.input_multiple = (int(embeds.patch_size[0]), int(embeds.patch_size[1]))
    report.in_channels = int(embeds.in_chans)
    report.add("", "NaFlexVit", "EquivariantNaFlexVit (patch tokens rolled back; images only)")


FAMILY = Family(
    name="naflexvit",
    description="NaFlexViT: ViTs for flexible sizes, SigLIP 2, RADIO (naflexvit_*)",
    model_classes=(NaFlexVit,),
    converted_classes=(EquivariantNaFlexVit,),
    convert=convert_naflexvit,  # type: ignore[arg-type]
    entry="embeds",
    feature_markers=module_types(timm_naflexvit),
    accepted=(*module_types(timm_naflexvit), AnchoredNaFlexEmbeds),
    timm_modules=("naflexvit",),
    examples={
        "naflexvit": Example(
            "naflexvit_base_patch16_gap", {"embed_dim": 64, "depth": 3, "num_heads": 2}, (64, 96), quick=False
        ),
        "naflexvit_rope": Example(
            "naflexvit_base_patch16_gap",
            {"embed_dim": 64, "depth": 3, "num_heads": 2, "rope_type": "mixed"},
            (64, 96),
            quick=False,
        ),
        "naflexvit_parfac": Example(
            "naflexvit_base_patch16_parfac_gap", {"embed_dim": 64, "depth": 3, "num_heads": 2}, (64, 64), quick=False
        ),
    },
)
