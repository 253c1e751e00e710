"""ViT hybrids and ViTamin: timm ``VisionTransformer`` models whose patch embedding is a CNN (``HybridEmbed``).

timm's ``vision_transformer_hybrid`` (ResNet / ResNetV2 / MobileCLIP stems under a ViT) and
``vitamin`` (MBConv stages under a ViT) build a ``VisionTransformer`` whose ``patch_embed`` runs a
CNN backbone, then a projection. The CNN is converted as the CNNs are: its input anchored once with
period = the embedding's total stride, every strided layer anchored, every padding circular
(:func:`~equivit.cnn_policy.convert_convolutions`), so a circular shift of the image reaches the
token grid as a circular shift of the grid. The grid is then anchored with period = the whole grid
(:mod:`equivit.token_grid`) before timm's absolute position embedding, as for the transformers on
one token grid: every block sees the same sequence for every shift, the stock parameters are used
as they are (state dicts load strictly), and patch tokens are rolled back for ``forward_features``
and ``forward_intermediates``.
"""

from __future__ import annotations

import torch
from timm.layers import Format
from timm.layers.hybrid_embed import HybridEmbed
from timm.models import resnet as timm_resnet
from timm.models import resnetv2 as timm_resnetv2
from timm.models import vision_transformer_hybrid as timm_hybrid
from timm.models import vitamin as timm_vitamin
from timm.models._features import FeatureDictNet, feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from equivit.cnn_policy import anchor_network_input, convert_convolutions
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.registry import module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import anchor_patch_tokens, check_grid_size, patch_token_map, roll_back_patch_tokens

__all__ = ["HYBRID_TYPES", "EquivariantHybridVisionTransformer", "convert_hybrid_vision_transformer"]

HYBRID_TYPES: tuple[type[nn.Module], ...] = (
    HybridEmbed,
    *module_types(timm_hybrid),
    *module_types(timm_vitamin),
    *module_types(timm_resnet),
    *module_types(timm_resnetv2),
)
"""Module types of the hybrids' embeddings; the audit still checks every convolution and pooling inside them."""


@equivariant_layer(
    period="grid",
    anchored_children=("patch_drop", "norm_pre", "blocks", "norm", "fc_norm", "attn_pool", "head"),
    fx="traced",
)
class EquivariantHybridVisionTransformer(VisionTransformer):
    """timm's ``VisionTransformer`` with a CNN patch embedding whose token grid is anchored with period = the grid.

    Same parameters and state-dict keys as timm's; ``pos_embed`` is added in the anchored frame.
    """

    def _anchored_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Embed, check the grid, anchor it, add the prefix tokens and the position embedding."""
        grid = self.patch_embed(x)  # (B, H, W, C)
        if not self.dynamic_img_size:
            stride = self.equivit_embed_stride
            check_grid_size(grid, self.patch_embed.grid_size, (stride, stride), [x.shape[-2], x.shape[-1]])
        batch, height, width, channels = grid.shape
        grid, offsets = anchor_patch_tokens(grid, self.equivit_energy)
        tokens = self._pos_embed(grid if self.dynamic_img_size else grid.reshape(batch, height * width, channels))
        return self.norm_pre(self.patch_drop(tokens)), offsets, height, width

    def forward_features(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """Tokens after the blocks and the final norm, patch tokens in the image's frame.

        Args:
            x: Images of the model's size (any multiple of the embedding's stride with ``dynamic_img_size``).
            attn_mask: Not supported (a mask would tie tokens to positions): must be None.
            is_causal: Not supported: must be False.

        Returns:
            The prefix tokens, then the patch tokens (row-major).

        Raises:
            ValueError: If a mask or causal attention is asked for.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, P + H W / s^2, D)`
        """
        traced = isinstance(attn_mask, torch.fx.Proxy) or isinstance(is_causal, torch.fx.Proxy)  # FX: the plain path
        if not traced and (attn_mask is not None or is_causal):
            raise ValueError("attention masks and causal attention tie tokens to positions; not supported here")
        x, offsets, height, width = self._anchored_tokens(x)
        for block in self.blocks:
            x = checkpoint(block, x) if not torch.jit.is_scripting() and self.grad_checkpointing else block(x)
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
        maps: list[torch.Tensor] = []
        prefixes: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            if stop_early and index > last:
                break
            x = checkpoint(block, x) if not torch.jit.is_scripting() and self.grad_checkpointing else block(x)
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


def convert_hybrid_vision_transformer(model: VisionTransformer, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ViT hybrid or ViTamin shift-equivariant, in place. No parameter is added or renamed.

    The CNN embedding's input is anchored with period = its total stride, its strided layers are
    anchored and its padding made circular; it returns the token grid; the model becomes an
    :class:`EquivariantHybridVisionTransformer`, which anchors the grid with period = the grid
    before the position embedding.

    Args:
        model: A ``VisionTransformer`` whose ``patch_embed`` is timm's ``HybridEmbed``, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the embedding is not timm's ``HybridEmbed``, pads the image itself
            (``dynamic_img_pad``), or has different strides along the two axes.
    """
    embed = model.patch_embed
    if type(embed) is not HybridEmbed:
        raise UnsupportedModelError(f"patch_embed: {type(embed).__name__} is not timm's HybridEmbed")
    if embed.dynamic_img_pad:
        raise UnsupportedModelError("patch_embed: dynamic_img_pad pads the image with zeros at its end")
    stride = embed.img_size[0] // embed.grid_size[0]
    if embed.img_size[1] // embed.grid_size[1] != stride:
        raise UnsupportedModelError(f"patch_embed: strides {embed.img_size} / {embed.grid_size} differ between axes")
    convert_convolutions(embed, report, energy)
    entry = "patch_embed.backbone"
    if isinstance(embed.backbone, FeatureDictNet):  # timm's features_only ResNet: anchor in its first module
        entry += "." + next(iter(embed.backbone.keys()))
    anchor_network_input(model, report, energy, entry, stride)
    embed.flatten = False
    embed.output_fmt = Format.NHWC
    report.input_multiple = (stride, stride)
    report.add("patch_embed", "HybridEmbed", "returns the token grid (anchored CNN, circular padding)")
    model.__class__ = EquivariantHybridVisionTransformer
    model.equivit_energy = energy
    model.equivit_embed_stride = stride
    report.add(
        "",
        "VisionTransformer",
        "EquivariantHybridVisionTransformer (token grid anchored with period = grid; pos_embed kept)",
    )
