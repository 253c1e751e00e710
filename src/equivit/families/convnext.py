"""The ConvNeXt family: timm ``ConvNeXt`` (convnext_*, ConvNeXt V2 included)."""

from __future__ import annotations

from timm.layers.grn import GlobalResponseNorm
from timm.layers.mlp import GlobalResponseNormMlp
from timm.models.convnext import ConvNeXt, ConvNeXtBlock, ConvNeXtStage
from torch import nn

from equivit.cnn_policy import convert_sequence, describe_conv, plain_conv
from equivit.energy import Energy
from equivit.layers import make_conv_circular
from equivit.registry import Example, Family
from equivit.report import ConversionReport, UnsupportedModelError

__all__ = ["FAMILY", "convert_convnext"]


def convert_convnext(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ConvNeXt shift-equivariant, in place. No parameter is added or renamed.

    The patchify stem (4x4 stride 4) and each stage's downsampling convolution (2x2 stride 2,
    after a LayerNorm2d) become :class:`~equivit.layers.AnchoredConv2d`; an overlapping stem
    (two 3x3 stride-2 convolutions) is anchored convolution by convolution, with circular
    padding. The depthwise 7x7 convolutions of the blocks pad circularly. LayerNorms, MLPs,
    GRN (ConvNeXt V2) and the pooled head act per position or on the whole grid.
    ``report.input_multiple`` is the product of the strides (32). Dilated stages
    (``output_stride`` 8 or 16) and blocks with a projection shortcut are refused.

    Args:
        model: The model, changed in place: a ``ConvNeXt``, or timm's ``features_only`` wrapper of one.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: For the variants above that are not supported.
    """
    # The stem is ``stem`` in the model and ``stem_0``, ``stem_1``, ... in timm's flattened
    # ``features_only`` wrapper; the stages are found by type.
    stride = 1
    for child, _ in list(model.named_children()):
        if child == "stem" or child.startswith("stem_"):
            stride *= convert_sequence(model, child, "", report, energy)
    stages = [(name, module) for name, module in model.named_modules() if isinstance(module, ConvNeXtStage)]
    for stage_name, stage in stages:
        prefix = f"{stage_name}."
        if isinstance(stage.downsample, nn.Sequential):
            conv = stage.downsample[-1]
            if isinstance(conv, nn.Conv2d) and tuple(conv.stride) == (1, 1) and max(conv.kernel_size) > 1:
                raise UnsupportedModelError(
                    f"{prefix}downsample: dilated stages (output_stride < 32) are not supported"
                )
            stride *= convert_sequence(stage, "downsample", prefix, report, energy)
        for block_index, block in enumerate(stage.blocks):
            name = f"{prefix}blocks.{block_index}"
            if type(block.shortcut) is not nn.Identity:
                raise UnsupportedModelError(
                    f"{name}.shortcut: blocks with a projection shortcut ({type(block.shortcut).__name__}) are not "
                    "supported"
                )
            if tuple(block.conv_dw.stride) != (1, 1):
                raise UnsupportedModelError(f"{name}.conv_dw: strided depthwise convolutions are not supported")
            conv = plain_conv(block.conv_dw, f"{name}.conv_dw")
            try:
                make_conv_circular(conv)
            except ValueError as error:
                raise UnsupportedModelError(f"{name}.conv_dw: {error}") from error
            report.add(f"{name}.conv_dw", f"{describe_conv(conv)}, zero padding", "same, circular padding")
    report.input_multiple = (stride, stride)


FAMILY = Family(
    name="convnext",
    description="ConvNeXt and ConvNeXt V2 (convnext_*, convnextv2_*)",
    model_classes=(ConvNeXt,),
    convert=convert_convnext,
    entry="stem",
    feature_markers=(ConvNeXtStage,),
    # Containers: their convolutions are checked one by one. GRN and the heads pool globally.
    accepted=(ConvNeXt, ConvNeXtStage, ConvNeXtBlock, GlobalResponseNorm, GlobalResponseNormMlp),
    timm_modules=("convnext",),
    empty_batch_ok=True,
    examples={
        "convnext": Example("convnext_atto", {"depths": (1, 1, 1, 1), "dims": (16, 32, 32, 32)}, (64, 96)),
    },
)
