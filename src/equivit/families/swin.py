"""Conversion of timm ``SwinTransformer`` and ``SwinTransformerV2``."""

from __future__ import annotations

from timm.layers import PatchEmbed
from timm.models.swin_transformer import SwinTransformer, SwinTransformerStage
from timm.models.swin_transformer_v2 import SwinTransformerV2, SwinTransformerV2Stage
from torch import nn

from equivit.energy import Energy
from equivit.layers import AnchoredPatchEmbed, anchored_swin_stage
from equivit.registry import Example, Family
from equivit.report import ConversionReport, UnsupportedModelError, lcm_pair

__all__ = ["FAMILY", "convert_swin"]


def convert_swin(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm Swin Transformer (v1 or v2) shift-equivariant, in place. No parameter is added or renamed.

    The patch projection is anchored (period = patch size); every stage anchors its patch
    merging (period 2) and its token grid (period = window), runs its regular and shifted
    windows cyclically without timm's border mask, and rolls its output back. Relative position
    biases are kept: they act inside a window, which anchoring fixes. The input must be a
    multiple of every stage's stride times its window (224 for a 224 model with 7 x 7 windows).

    Args:
        model: The model, changed in place: a ``SwinTransformer`` or ``SwinTransformerV2``, or
            timm's ``features_only`` wrapper of one.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the patch embedding or a stage is not timm's own, or the model
            has an absolute position embedding.
    """
    embeds = [(name, module) for name, module in model.named_modules() if isinstance(module, PatchEmbed)]
    if len(embeds) != 1 or type(embeds[0][1]) is not PatchEmbed:
        found = ", ".join(f"{name} ({type(module).__name__})" for name, module in embeds) or "none"
        raise UnsupportedModelError(f"expected one timm PatchEmbed, found {found}")
    if getattr(model, "absolute_pos_embed", None) is not None:
        raise UnsupportedModelError("absolute_pos_embed: an absolute position embedding breaks shift equivariance")
    name, embed = embeds[0]
    if tuple(embed.proj.kernel_size) != tuple(embed.proj.stride):
        raise UnsupportedModelError(f"{name}.proj: only non-overlapping patches (kernel = stride) are supported")
    patch = (int(embed.patch_size[0]), int(embed.patch_size[1]))
    anchored_embed = AnchoredPatchEmbed.from_patch_embed(embed, pos_conv=False, energy=energy)
    anchored_embed.strict_img_size = False
    model.set_submodule(name, anchored_embed)
    report.add(name, "PatchEmbed", f"AnchoredPatchEmbed (period {patch[0]} x {patch[1]})")
    stride = patch
    multiple = patch
    # Stages in forward order, found by type so that timm's features_only wrapper converts too.
    kinds = (SwinTransformerStage, SwinTransformerV2Stage)
    stages = [(name, module) for name, module in model.named_modules() if isinstance(module, kinds)]
    for name, stage in stages:
        if type(stage) not in kinds:
            raise UnsupportedModelError(f"{name}: {type(stage).__name__} is not one of timm's Swin stages")
        try:
            anchored = anchored_swin_stage(stage, energy=energy)
        except TypeError as error:
            raise UnsupportedModelError(f"{name}: {error}") from error
        if anchored.downsample is not stage.downsample:
            stride = (stride[0] * 2, stride[1] * 2)
            report.add(f"{name}.downsample", "PatchMerging", f"{type(anchored.downsample).__name__} (period 2)")
        window = anchored.window_size
        multiple = lcm_pair(multiple, (stride[0] * window[0], stride[1] * window[1]))
        model.set_submodule(name, anchored)
        report.add(
            name,
            "SwinTransformerStage (masked shifted windows)",
            f"{type(anchored).__name__} (period {window[0]} x {window[1]}, cyclic windows without mask)",
        )
    report.input_multiple = multiple


_WIDE_HEADS = {"num_heads": (1, 1, 1, 1), "depths": (1, 1, 1, 1)}

FAMILY = Family(
    name="swin",
    description="Swin Transformer v1 (swin_*) and v2 (swinv2_*, not the swinv2_cr_* variant)",
    model_classes=(SwinTransformer, SwinTransformerV2),
    convert=convert_swin,
    entry="patch_embed",
    feature_markers=(SwinTransformerStage, SwinTransformerV2Stage),
    accepted=(SwinTransformer, SwinTransformerV2),
    timm_modules=("swin_transformer", "swin_transformer_v2"),
    examples={
        "swin": Example(
            "swin_tiny_patch4_window7_224",
            {"embed_dim": 16, "window_size": 2, "img_size": (64, 128), **_WIDE_HEADS},
            (64, 128),
        ),
        "swinv2": Example(
            "swinv2_tiny_window8_256", {"embed_dim": 16, "window_size": 2, "img_size": 64, **_WIDE_HEADS}, (64, 64)
        ),
    },
)
