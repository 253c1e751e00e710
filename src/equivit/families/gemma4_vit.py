"""The Gemma 4 vision towers: timm's ``gemma4_vit`` module.

Gemma 4 embeds flattened patches with a linear layer, adds position embeddings looked up by each
patch's coordinates, applies 2-D rotary embeddings of the same coordinates in its blocks, and may
end in a soft-token pooler that averages fixed ``k x k`` cells of the grid; all tie it to
positions. On images (not on pre-patchified NaFlex batches) the embedding anchors the image with
period = the patch, then the patch grid with period = the grid, before any position term
(:class:`AnchoredGemma4PatchEmbed`); everything after it sees the same tokens for every circular
shift of the image and runs as timm wrote it. Patch tokens are rolled back to the image's frame;
the pooler's soft tokens come from the anchored frame and are the same for every shift. The
encoders and timm's classifiers around them both convert; no parameter is added or renamed.
"""

from __future__ import annotations

import torch
from timm.models import gemma4_vit as timm_gemma4
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.gemma4_vit import Gemma4PatchEmbed, Gemma4VitClassifier, Gemma4VitEncoder
from timm.models.naflexvit import batch_patchify

from equivit.anchor_core import anchor
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.layers.sharing import retype
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import patch_token_map, roll_back_patch_tokens

__all__ = ["FAMILY", "AnchoredGemma4PatchEmbed", "EquivariantGemma4VitEncoder", "convert_gemma4_vit"]


def _refuse_naflex_inputs(x: object, patch_coord: torch.Tensor | None, patch_valid: torch.Tensor | None) -> None:
    """Refuse pre-patchified inputs: their patches come with coordinates, not as an image to anchor."""
    # FX traces optional arguments as proxies: a traced graph is the image path.
    given = [
        other for other in (patch_coord, patch_valid) if other is not None and not isinstance(other, torch.fx.Proxy)
    ]
    if isinstance(x, dict) or given:
        raise ValueError(
            "a converted Gemma 4 vision tower takes images (B, C, H, W) only: pre-patchified batches "
            "(a dict, patch_coord, patch_valid) name patch positions in the image's frame, which the anchored "
            "blocks do not see; run the stock model for them"
        )


@equivariant_layer(period="grid", fx="leaf")
class AnchoredGemma4PatchEmbed(Gemma4PatchEmbed):
    """timm's ``Gemma4PatchEmbed`` for images: anchored with period = the patch, then with period = the grid.

    Same parameters as timm's. The position embeddings of the default grid are added after both
    anchors.
    """

    equivit_energy = "l1"  # no annotation: TorchScript cannot read a postponed one on a class

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """The patch tokens of the anchored grid with position embeddings, their ``(x, y)`` coordinates, the origins.

        Args:
            x: Images, ``H`` and ``W`` multiples of the patch size.

        Returns:
            The tokens, Gemma 4's internal coordinates and each sample's origin ``(i, j)`` on the grid.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, N, D)`, :math:`(B, N, 2)` and :math:`(B, 2)`
        """
        x, _ = anchor(x, self.patch_size[0], self.patch_size[1], self.equivit_energy, False)
        batch, rows, columns = x.shape[0], x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1]
        patches, _ = batch_patchify(x, self.patch_size, pad=False, channels_last=False)
        tokens = self.input_proj((2 * (patches - 0.5)).to(self.input_proj.weight.dtype))
        grid, offsets = anchor(tokens.reshape(batch, rows, columns, -1), rows, columns, self.equivit_energy, True)
        coordinates, _ = self._default_patch_coord(batch, rows, columns, x.device)
        position_ids = coordinates.flip(dims=(-1,))
        # timm's one-hot product, as a lookup: the same rows of the table, without its host-side bound check.
        table = self.position_embedding_table
        positions = table[0][position_ids[0, :, 0]] + table[1][position_ids[0, :, 1]]
        return grid.flatten(1, 2) + positions.to(grid.dtype), position_ids, offsets


@equivariant_layer(period="grid", anchored_children=("rotary_emb", "blocks", "pooler"), fx="traced")
class EquivariantGemma4VitEncoder(Gemma4VitEncoder):
    """timm's ``Gemma4VitEncoder`` whose blocks and pooler see the patch grid from an origin chosen by content."""

    def _encoded(
        self, x: torch.Tensor, take: list[int], last: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int, list[torch.Tensor]]:
        """Tokens after the blocks (anchored frame), coordinates, origins, grid size, and the tokens of ``take``."""
        self._assert_raw_img_conformant(x)
        images = x
        x, position_ids, offsets = self.patch_embed(images)  # checks the images first (its pre-hook)
        rows, columns = images.shape[-2] // self.patch_size[0], images.shape[-1] // self.patch_size[1]
        cos, sin = self.rotary_emb(x, position_ids)
        taken: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):  # no break: TorchScript unrolls loops over modules
            if last < 0 or index <= last:
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    x = checkpoint(block, x, cos, sin, None)
                else:
                    x = block(x, cos, sin, attn_mask=None)
                if index in take:
                    taken.append(x)
        return x, position_ids, offsets, rows, columns, taken

    def forward_features(
        self, x: torch.Tensor, patch_coord: torch.Tensor | None = None, patch_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The patch tokens in the image's frame.

        Args:
            x: Images, ``H`` and ``W`` multiples of the patch size (times the pooling kernel with
                ``global_pool="soft"``).
            patch_coord: Must be ``None``.
            patch_valid: Must be ``None``.

        Returns:
            The tokens.

        Raises:
            ValueError: If pre-patchified inputs are given.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, H W / p^2, D)`
        """
        _refuse_naflex_inputs(x, patch_coord, patch_valid)
        tokens, _, offsets, rows, columns, _ = self._encoded(x, [], -1)
        return roll_back_patch_tokens(tokens, offsets, rows, columns, 0)

    def forward(
        self, x: torch.Tensor, patch_coord: torch.Tensor | None = None, patch_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The soft tokens (from the anchored frame), the mean token, or the patch tokens in the image's frame.

        Args:
            x: Images, as for :meth:`forward_features`.
            patch_coord: Must be ``None``.
            patch_valid: Must be ``None``.

        Returns:
            As timm's encoder, by its ``global_pool``.

        Raises:
            ValueError: If pre-patchified inputs are given.
        """
        _refuse_naflex_inputs(x, patch_coord, patch_valid)
        tokens, position_ids, offsets, rows, columns, _ = self._encoded(x, [], -1)
        if self.global_pool == "soft":
            tokens, _ = self.pooler(tokens, position_ids, None)
            if self.std_bias is not None:
                tokens = (tokens - self.std_bias) * self.std_scale
            return tokens
        if self.global_pool == "avg":
            return tokens.mean(dim=1)
        return roll_back_patch_tokens(tokens, offsets, rows, columns, 0)

    def forward_intermediates(  # type: ignore[override]
        self,
        x: torch.Tensor,
        patch_coord: torch.Tensor | None = None,
        patch_valid: torch.Tensor | None = None,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
    ) -> object:
        """The blocks' patch tokens in the image's frame, as timm's ``forward_intermediates`` (images only).

        Args:
            x: Images.
            patch_coord: Must be ``None``.
            patch_valid: Must be ``None``.
            indices: The last ``n`` blocks if an int, else their indices.
            norm: Unused (Gemma 4's encoder has no final norm), as in timm.
            stop_early: Stop after the last block asked for.
            output_fmt: ``"NCHW"`` (maps) or ``"NLC"`` (tokens).
            intermediates_only: Return the intermediates alone.
            output_dict: Return ``image_intermediates`` (and ``image_features``, ``patch_valid``) in a dict.

        Returns:
            As timm's: the intermediates, the final tokens and the intermediates, or a dict.

        Raises:
            ValueError: If pre-patchified inputs are given or ``output_fmt`` is another format.
        """
        _refuse_naflex_inputs(x, patch_coord, patch_valid)
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        tokens, _, offsets, rows, columns, taken = self._encoded(x, take, last if stop_early else -1)
        maps = [patch_token_map(y, offsets, rows, columns, 0, output_fmt) for y in taken]
        final = roll_back_patch_tokens(tokens, offsets, rows, columns, 0)
        if output_dict:
            result: dict[str, object] = {"image_intermediates": maps}
            if not intermediates_only:
                result["image_features"] = final
            result["patch_valid"] = torch.ones(final.shape[:2], dtype=torch.bool, device=final.device)
            return result
        if intermediates_only:
            return maps
        return final, maps


def convert_gemma4_vit(model: Gemma4VitEncoder | Gemma4VitClassifier, report: ConversionReport, energy: Energy) -> None:
    """Make a timm Gemma 4 vision tower (encoder or classifier) shift-equivariant on images, in place.

    The encoder's patch embedding becomes an :class:`AnchoredGemma4PatchEmbed` and the encoder an
    :class:`EquivariantGemma4VitEncoder`; a classifier keeps its class (it calls its encoder). No
    parameter is added or renamed. Inputs: images whose sides are multiples of the patch size.

    Args:
        model: A ``Gemma4VitEncoder`` or ``Gemma4VitClassifier`` (timm's ``features_only`` wrapper
            holds one), changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the model is of another class.
    """
    if not isinstance(model, Gemma4VitEncoder | Gemma4VitClassifier):
        raise UnsupportedModelError(f"{type(model).__name__}: expected timm's Gemma 4 vision tower")
    encoder = model.encoder if isinstance(model, Gemma4VitClassifier) else model
    prefix = "encoder." if encoder is not model else ""
    if type(encoder.patch_embed) is Gemma4PatchEmbed:
        encoder.patch_embed = retype(encoder.patch_embed, AnchoredGemma4PatchEmbed)
        encoder.patch_embed.equivit_energy = energy
        report.add(f"{prefix}patch_embed", "Gemma4PatchEmbed", "AnchoredGemma4PatchEmbed (period = patch, then grid)")
    if type(encoder) is Gemma4VitEncoder:
        encoder.__class__ = EquivariantGemma4VitEncoder
        report.add(prefix.rstrip("."), "Gemma4VitEncoder", "EquivariantGemma4VitEncoder (tokens rolled back)")
    cells = int(encoder.pooling_kernel_size) if encoder.global_pool == "soft" else 1  # the soft pooler's k x k
    report.input_multiple = (int(encoder.patch_size[0]) * cells, int(encoder.patch_size[1]) * cells)
    report.in_channels = int(encoder.in_chans)


FAMILY = Family(
    name="gemma4_vit",
    description="Gemma 4 vision towers (gemma4_vit_*)",
    model_classes=(Gemma4VitClassifier, Gemma4VitEncoder),
    converted_classes=(EquivariantGemma4VitEncoder,),
    convert=convert_gemma4_vit,  # type: ignore[arg-type]
    entry=("encoder.patch_embed", "patch_embed"),
    feature_markers=module_types(timm_gemma4),
    accepted=(*module_types(timm_gemma4), AnchoredGemma4PatchEmbed),
    timm_modules=("gemma4_vit",),
    examples={
        "gemma4_vit": Example(
            "gemma4_vit_167m",
            {"embed_dim": 64, "depth": 3, "num_heads": 2, "head_dim": 32, "intermediate_size": 128},
            (64, 96),
            quick=False,
        ),
    },
)
