"""The ResNetV2 family: timm ``ResNetV2`` (pre-activation ResNets, resnetv2_*)."""

from __future__ import annotations

from timm.models import resnetv2
from torch import nn

from equivit.cnn_policy import anchor_residual_blocks, convert_convolutions
from equivit.polyphase import Energy
from equivit.registry import Example, Family, types_named
from equivit.report import ConversionReport

__all__ = ["FAMILY", "convert_resnetv2"]

# The strided blocks downsample in a 3 x 3 convolution and in the shortcut (a strided 1 x 1
# convolution, or average pooling then a 1 x 1 convolution).
_SHARED_ANCHOR = {
    resnetv2.PreActBottleneck: ("conv2", "downsample"),
    resnetv2.Bottleneck: ("conv2", "downsample"),
    **{cls: ("conv1", "downsample") for cls in types_named(resnetv2, "PreActBasic")},
}


def convert_resnetv2(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ResNetV2 shift-equivariant, in place. No parameter is added or renamed.

    Every strided block anchors its input once for its strided convolution and its downsampling
    shortcut (:func:`~equivit.layers.anchored_residual`); the pre-activation norm before the
    shortcut acts on each position, so anchoring the block input anchors both. The stem's strided
    convolutions and pooling are anchored one by one, every other convolution pads circularly.
    ``report.input_multiple`` is the product of the strides (32).

    Args:
        model: The model, changed in place: a ``ResNetV2``, or timm's ``features_only`` wrapper of one.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: For a part that cannot be converted, naming it.
    """
    stride = anchor_residual_blocks(model, report, energy, _SHARED_ANCHOR)
    stride *= convert_convolutions(model, report, energy)
    report.input_multiple = (stride, stride)


FAMILY = Family(
    name="resnetv2",
    description="ResNetV2: pre-activation ResNets (resnetv2_*) built by timm's ResNetV2",
    model_classes=(resnetv2.ResNetV2,),
    convert=convert_resnetv2,
    entry="stem",
    feature_markers=(resnetv2.ResNetStage,),
    accepted=(
        resnetv2.ResNetV2,
        resnetv2.ResNetStage,
        resnetv2.DownsampleConv,
        resnetv2.DownsampleAvg,
        *_SHARED_ANCHOR,
    ),
    timm_modules=("resnetv2",),
    excluded={
        "*_bit": "BiT's weight-standardised convolutions (StdConv2d) pad with zeros; they are not converted yet",
    },
    empty_batch_ok=True,
    examples={
        "resnetv2": Example("resnetv2_18d", {}, (64, 64)),
    },
)
