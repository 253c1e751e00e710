"""The ViT family: timm ``VisionTransformer`` and ``VisionTransformerDistilled`` (ViT, DeiT, DeiT III)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from timm.layers import PatchEmbed
from timm.layers.hybrid_embed import HybridEmbed
from timm.models import vision_transformer as timm_vit
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from equivit.energy import Energy
from equivit.families.vit_hybrid import (
    HYBRID_TYPES,
    EquivariantHybridVisionTransformer,
    convert_hybrid_vision_transformer,
)
from equivit.layers import AnchoredPatchEmbed
from equivit.registry import Example, Family, types_named
from equivit.report import ConversionReport, UnsupportedModelError

__all__ = [
    "FAMILY",
    "EquivariantVisionTransformer",
    "EquivariantVisionTransformerDistilled",
    "convert_vision_transformer",
    "map_vit_state_dict",
    "prefix_rows",
    "prefix_token_names",
]


def _token_sequence(x: torch.Tensor, grid: bool) -> torch.Tensor:
    """Patch tokens as a sequence, without an inferred size (so an empty batch works).

    Args:
        x: The patch embedding's output.
        grid: Whether it is a grid (timm's ``dynamic_img_size``), decided by the model, not the
            data, so that FX can trace it.

    Shape:
        - x: :math:`(B, N, C)`, or :math:`(B, H, W, C)` if ``grid``
        - output: :math:`(B, N, C)`
    """
    if grid:
        return x.flatten(1, 2)
    return x


class EquivariantVisionTransformer(VisionTransformer):
    """ViT or DeiT without an absolute position embedding.

    The converted model's position information comes from the circular convolution in the patch
    embedding, so this subclass only prepends the class and register tokens (and applies
    ``pos_drop``, as the stock model does after adding ``pos_embed``). Unlike timm's path for a
    model without ``pos_embed``, it takes an empty batch.
    """

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the class and register tokens to the patch tokens.

        Args:
            x: Patch tokens.

        Returns:
            The token sequence.

        Shape:
            - x: :math:`(B, N, C)`, or :math:`(B, H, W, C)` with ``dynamic_img_size``
            - output: :math:`(B, P + N, C)` with ``P`` prefix tokens
        """
        x = _token_sequence(x, self.dynamic_img_size)
        to_cat: list[torch.Tensor] = []
        if self.cls_token is not None:
            to_cat.append(self.cls_token.expand(x.shape[0], -1, -1))
        if self.reg_token is not None:
            to_cat.append(self.reg_token.expand(x.shape[0], -1, -1))
        if len(to_cat) > 0:
            x = torch.cat(to_cat + [x], dim=1)  # noqa: RUF005 (TorchScript has no starred lists)
        return self.pos_drop(x)


class EquivariantVisionTransformerDistilled(VisionTransformerDistilled):
    """DeiT with distillation token, without an absolute position embedding.

    timm's ``VisionTransformerDistilled`` always adds ``pos_embed``; a converted model has none
    (its position information comes from the circular convolution in the patch embedding), so
    this subclass only prepends the class and distillation tokens.
    """

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the class and distillation tokens to the patch tokens.

        Args:
            x: Patch tokens.

        Returns:
            The token sequence.

        Shape:
            - x: :math:`(B, N, C)`, or :math:`(B, H, W, C)` with ``dynamic_img_size``
            - output: :math:`(B, 2 + N, C)`
        """
        x = _token_sequence(x, self.dynamic_img_size)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), self.dist_token.expand(x.shape[0], -1, -1), x), 1)
        return self.pos_drop(x)


def prefix_token_names(model: VisionTransformer) -> list[str]:
    """Names of the prefix-token parameters, in the order their rows appear in ``pos_embed``.

    Args:
        model: A timm ViT or DeiT.

    Returns:
        For example ``["cls_token", "reg_token"]`` or ``["cls_token", "dist_token"]``.
    """
    if isinstance(model, VisionTransformerDistilled):
        return ["cls_token", "dist_token"]
    return [name for name in ("cls_token", "reg_token") if getattr(model, name, None) is not None]


def prefix_rows(pos_embed: torch.Tensor, token_sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """The rows of an absolute position embedding that the stock model adds to each prefix token.

    Args:
        pos_embed: ``(1, prefix + N, C)``, prefix rows first.
        token_sizes: Number of tokens of each prefix parameter, in ``pos_embed`` order.

    Returns:
        For each prefix parameter, its rows ``(1, count, C)``.
    """
    rows, start = {}, 0
    for name, count in token_sizes.items():
        rows[name] = pos_embed[:, start : start + count]
        start += count
    return rows


def convert_vision_transformer(model: VisionTransformer, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ViT or DeiT shift-equivariant, in place.

    The patch projection is anchored (period = patch size); the absolute position embedding is
    removed, its prefix rows are added to the prefix tokens (where the stock model added them),
    and its grid part is replaced by a circular depthwise-convolution encoding on the token grid.

    Args:
        model: The model, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the patch embedding is not timm's convolutional ``PatchEmbed``
            with kernel = stride, or the model is a distilled one with register tokens.
    """
    name = type(model).__name__
    patch_embed = model.patch_embed
    if type(patch_embed) is HybridEmbed:  # a CNN embedding (ViT hybrids, ViTamin): the token-grid policy
        convert_hybrid_vision_transformer(model, report, energy)
        return
    if type(patch_embed) is not PatchEmbed or not isinstance(patch_embed.proj, nn.Conv2d):
        raise UnsupportedModelError(
            f"patch_embed: {type(patch_embed).__name__} is neither timm's PatchEmbed with a Conv2d projection "
            "nor its HybridEmbed (other embeddings are not supported yet)"
        )
    proj = patch_embed.proj
    report.input_multiple = (int(proj.stride[0]), int(proj.stride[1]))
    if tuple(proj.kernel_size) != tuple(proj.stride) or any(p != 0 for p in proj.padding):  # type: ignore[union-attr]
        raise UnsupportedModelError(
            f"patch_embed.proj: kernel {tuple(proj.kernel_size)}, stride {tuple(proj.stride)}, padding "
            f"{proj.padding}: only non-overlapping patches (kernel = stride, no padding) are supported"
        )
    distilled = isinstance(model, VisionTransformerDistilled)
    if distilled and model.reg_token is not None:
        raise UnsupportedModelError(f"{name} with register tokens: timm's distilled model ignores them")

    pos_embed = model.pos_embed
    prefix = prefix_token_names(model)
    if pos_embed is not None and not model.no_embed_class and prefix:
        sizes = {name: getattr(model, name).shape[1] for name in prefix}
        with torch.no_grad():
            for token_name, rows in prefix_rows(pos_embed, sizes).items():
                token = getattr(model, token_name)
                token.add_(rows.to(token.dtype))
        report.folded_prefix.extend(prefix)
        report.add(", ".join(prefix), "prefix tokens", "prefix tokens + their rows of pos_embed")

    model.patch_embed = AnchoredPatchEmbed.from_patch_embed(patch_embed, pos_conv=pos_embed is not None, energy=energy)
    report.add("patch_embed", "PatchEmbed", "AnchoredPatchEmbed (anchored projection, period = patch size)")
    if pos_embed is not None:
        model.pos_embed = None
        report.add("pos_embed", f"absolute position embedding {tuple(pos_embed.shape)}", "removed")
        report.add("patch_embed.pos_conv", "(none)", "CircularPosConv (3x3 depthwise, circular, zero init)")
        report.new_parameters.extend(
            f"patch_embed.pos_conv.{n}" for n, _ in model.patch_embed.pos_conv.named_parameters()
        )
    if distilled:
        model.__class__ = EquivariantVisionTransformerDistilled
        report.add("", name, "EquivariantVisionTransformerDistilled (no pos_embed add)")
    elif type(model) is VisionTransformer:
        model.__class__ = EquivariantVisionTransformer
        report.add("", name, "EquivariantVisionTransformer (no pos_embed add)")


def map_vit_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a stock ViT or DeiT state dict onto its conversion.

    The rows of ``pos_embed`` that belong to the prefix tokens are added to ``cls_token``,
    ``reg_token`` and ``dist_token`` (unless the model has ``no_embed_class``), ``pos_embed`` is
    dropped, and the new parameters (``patch_embed.pos_conv.*``) are taken from ``model`` as it is.

    Args:
        state_dict: A state dict of the stock model.
        model: The converted model.

    Returns:
        A new state dict that loads strictly into ``model``.
    """
    mapped = dict(state_dict)
    if isinstance(model, EquivariantHybridVisionTransformer):  # keeps pos_embed: the keys match
        return mapped
    pos_embed = mapped.pop("pos_embed", None)
    if pos_embed is not None and not model.no_embed_class:
        sizes = {name: mapped[name].shape[1] for name in prefix_token_names(model)}  # type: ignore[arg-type]
        for name, rows in prefix_rows(pos_embed, sizes).items():
            mapped[name] = mapped[name] + rows.to(mapped[name].dtype)
    own = model.state_dict()
    for name in model.equivit_report.new_parameters:  # type: ignore[union-attr]
        mapped.setdefault(name, own[name])
    return mapped


FAMILY = Family(
    name="vit",
    description=(
        "ViT (vit_*) and DeiT (deit_*, deit3_*) built by timm's VisionTransformer, distilled DeiT included; "
        "ViT hybrids (vit_*_r*, vit_*_resnet*, vit_base_mci_224) and ViTamin (vitamin_*) with CNN embeddings"
    ),
    model_classes=(VisionTransformer, VisionTransformerDistilled),
    converted_classes=(
        EquivariantVisionTransformer,
        EquivariantVisionTransformerDistilled,
        EquivariantHybridVisionTransformer,
    ),
    convert=convert_vision_transformer,  # type: ignore[arg-type]
    entry="patch_embed",
    # Blocks act on each token alone or attend over the set of tokens (no position terms). Read by
    # name so that a timm version without one of them still imports.
    accepted=(
        *types_named(
            timm_vit,
            "VisionTransformer",
            "Attention",
            "Block",
            "ResPostBlock",
            "ParallelScalingBlock",
            "ParallelThingsBlock",
            "DiffParallelScalingBlock",
            "LayerScale",
        ),
        VisionTransformerDistilled,
        *HYBRID_TYPES,
    ),
    timm_modules=("vision_transformer", "deit", "vision_transformer_hybrid", "vitamin"),
    empty_batch_ok=True,
    map_state_dict=map_vit_state_dict,
    examples={
        "vit": Example(
            "vit_tiny_patch16_224",
            {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": (32, 48)},
            (32, 48),
        ),
        "deit_distilled": Example(
            "deit_tiny_distilled_patch16_224",
            {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32},
            (32, 32),
        ),
        "vit_hybrid": Example(
            "vit_small_resnet26d_224",
            {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 64},
            (64, 64),
            quick=False,
        ),
        "vit_hybrid_r_s16": Example(
            "vit_tiny_r_s16_p8_224",
            {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": (128, 64)},
            (128, 64),
            quick=False,
        ),
        "vitamin": Example(
            "vitamin_small_224",
            {"depth": 1, "img_size": 64},
            (64, 64),
            quick=False,
        ),
    },
)
