"""The TNT family: timm's ``tnt`` module (Transformer in Transformer).

TNT cuts the image into patches and embeds the pixels of each patch (a strided convolution inside
each patch, or, in the legacy models, over the whole image before cutting), with position
embeddings for the pixels in a patch and for the patches in the image. The image is anchored with
period = the patch, so a circular shift reaches the pixel embedding as a permutation of whole
patches (the legacy convolution pads circularly); the grid of patches, pixel tokens with it, is
then anchored with period = the grid, and the inner and outer blocks run as timm wrote them. Patch
tokens are rolled back to the image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import torch
from timm.models import tnt as timm_tnt
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.tnt import TNT
from torch import nn

from equivit.anchor_core import anchor
from equivit.energy import Energy
from equivit.layers import anchored_entry
from equivit.layers.circular_conv import make_circular
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import patch_token_map, roll_back_patch_tokens

__all__ = ["FAMILY", "EquivariantTNT", "convert_tnt"]


@equivariant_layer(
    period="grid", anchored_children=("pixel_embed", "norm1_proj", "proj", "norm2_proj", "blocks", "norm", "head")
)
class EquivariantTNT(TNT):
    """timm's ``TNT`` whose blocks see the patch grid from an origin chosen by content.

    Same parameters and state-dict keys as timm's; ``patch_pos`` is added in the anchored frame.
    Patch tokens are rolled back to the image's frame.
    """

    def _embedded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """Pixel and patch tokens of the anchored grid (class token first), the grid's origins and its size."""
        patch = self.pixel_embed.patch_size
        x = self.input_anchor(x)
        batch, rows, columns = x.shape[0], x.shape[-2] // patch[0], x.shape[-1] // patch[1]
        pixels = self.pixel_embed(x, self.pixel_pos)
        grid = pixels.reshape(batch, rows, columns, -1)
        grid, offsets = anchor(grid, rows, columns, self.equivit_energy, True)
        pixels = grid.reshape(pixels.shape)
        tokens = self.norm2_proj(self.proj(self.norm1_proj(grid.reshape(batch, rows * columns, -1))))
        tokens = torch.cat((self.cls_token.expand(batch, -1, -1), tokens), dim=1)
        return pixels, self.pos_drop(tokens + self.patch_pos), offsets, rows, columns

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The class token, then the patch tokens in the image's frame, normed.

        Args:
            x: Images of the model's ``img_size``.

        Returns:
            The tokens.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, 1 + H W / p^2, D)`
        """
        pixels, tokens, offsets, rows, columns = self._embedded(x)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                pixels, tokens = checkpoint(block, pixels, tokens)
            else:
                pixels, tokens = block(pixels, tokens)
        return roll_back_patch_tokens(self.norm(tokens), offsets, rows, columns, self.num_prefix_tokens)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> object:
        """The blocks' patch tokens in the image's frame, as timm's ``forward_intermediates``.

        Args:
            x: Images of the model's ``img_size``.
            indices: The last ``n`` blocks if an int, else their indices.
            return_prefix_tokens: Pair each map with its block's class token.
            norm: Apply the final norm to each intermediate.
            stop_early: Stop after the last block asked for.
            output_fmt: ``"NCHW"`` (maps) or ``"NLC"`` (tokens).
            intermediates_only: Return the intermediates alone.

        Returns:
            The intermediates, or the final tokens (as :meth:`forward_features`) and the intermediates.

        Raises:
            ValueError: If ``output_fmt`` is another format.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        pixels, tokens, offsets, rows, columns = self._embedded(x)
        prefix = self.num_prefix_tokens
        maps: list[torch.Tensor] = []
        prefixes: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            if stop_early and index > last:
                break
            if self.grad_checkpointing and not torch.jit.is_scripting():
                pixels, tokens = checkpoint(block, pixels, tokens)
            else:
                pixels, tokens = block(pixels, tokens)
            if index in take:
                y = self.norm(tokens) if norm else tokens
                maps.append(patch_token_map(y, offsets, rows, columns, prefix, output_fmt))
                prefixes.append(y[:, :prefix])
        intermediates: list[object] = list(maps)
        if return_prefix_tokens and not torch.jit.is_scripting():
            intermediates = list(zip(maps, prefixes, strict=True))
        if intermediates_only:
            return intermediates
        return roll_back_patch_tokens(self.norm(tokens), offsets, rows, columns, prefix), intermediates


def convert_tnt(model: TNT, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``TNT`` shift-equivariant, in place. No parameter is added or renamed.

    The model becomes an :class:`EquivariantTNT`, which anchors the image with period = the patch
    (its new ``input_anchor``, a parameterless module that receives the images) and then the patch
    grid with period = the grid. The legacy models' pixel convolution, which runs over the whole
    image, pads circularly. Inputs must have the model's ``img_size``.

    Args:
        model: A ``TNT`` (timm's ``features_only`` wrapper holds one), changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the model is not a ``TNT``.
    """
    if not isinstance(model, TNT):
        raise UnsupportedModelError(f"{type(model).__name__}: expected timm's TNT")
    patch = model.pixel_embed.patch_size
    if model.pixel_embed.legacy:
        make_circular(model.pixel_embed.proj)
        report.add("pixel_embed.proj", "Conv2d", "CircularConv2d (runs on the image anchored with period = patch)")
    model.input_anchor = anchored_entry(nn.Identity(), int(patch[0]), energy=energy)
    model.__class__ = EquivariantTNT
    model.equivit_energy = energy
    report.input_multiple = (int(patch[0]), int(patch[1]))
    report.in_channels = int(model.pixel_embed.proj.in_channels)
    report.add("", "TNT", "EquivariantTNT (image anchored with period = patch, then the patch grid)")


FAMILY = Family(
    name="tnt",
    description="TNT: Transformer in Transformer (tnt_*)",
    model_classes=(TNT,),
    converted_classes=(EquivariantTNT,),
    convert=convert_tnt,  # type: ignore[arg-type]
    entry="input_anchor",
    feature_markers=module_types(timm_tnt),
    accepted=(*module_types(timm_tnt), nn.Identity),
    timm_modules=("tnt",),
    examples={
        "tnt": Example(
            "tnt_s_patch16_224",
            {"img_size": (64, 96), "embed_dim": 48, "inner_dim": 8, "depth": 3, "num_heads_outer": 2},
            (64, 96),
            quick=False,
        ),
        "tnt_legacy": Example(
            "tnt_s_legacy_patch16_224",
            {"img_size": 64, "embed_dim": 48, "inner_dim": 8, "depth": 3, "num_heads_outer": 2},
            (64, 64),
            quick=False,
        ),
    },
)
