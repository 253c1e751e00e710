"""The EfficientNet and MobileNet families: timm ``EfficientNet`` and ``MobileNetV3`` (one builder, many networks).

Both are chains of blocks from timm's ``_efficientnet_blocks`` whose residual shortcut exists only
at stride 1, so the generic policy (:func:`equivit.cnn_policy.convert_convolutions`) converts them:
each strided convolution is anchored on its own input, every other convolution pads circularly.
Squeeze-excitation pools over the whole grid and is kept.
"""

from __future__ import annotations

from timm.models import _efficientnet_blocks as blocks
from timm.models import efficientnet, mobilenetv3
from torch import nn

from equivit.cnn_policy import convert_convolutions
from equivit.energy import Energy
from equivit.registry import Example, Family, types_named
from equivit.report import ConversionReport

__all__ = ["EFFICIENTNET", "MOBILENETV3", "convert_efficientnet"]

_BLOCKS = types_named(
    blocks, "ConvBnAct", "DepthwiseSeparableConv", "InvertedResidual", "UniversalInvertedResidual", "EdgeResidual"
)

_CONDCONV = "CondConv2d (per-sample mixtures of kernels) pads with zeros; it is not converted yet"


def convert_efficientnet(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm EfficientNet or MobileNetV3 (or its ``features_only`` model) shift-equivariant, in place.

    The stem and every strided block convolution (depthwise ``conv_dw``, ``conv_exp`` of edge
    residuals, the ``dw_start`` / ``dw_mid`` of MobileNetV4's universal blocks) become
    :class:`~equivit.layers.AnchoredConv2d` (period = stride, circular padding); every other padded
    convolution pads circularly. No parameter is added or renamed. ``report.input_multiple`` is the
    product of the strides (32).

    Args:
        model: The model, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: For a convolution that cannot be converted (dynamic "same"
            padding), naming it.
    """
    stride = convert_convolutions(model, report, energy)
    report.input_multiple = (stride, stride)


EFFICIENTNET = Family(
    name="efficientnet",
    description="EfficientNet, EfficientNet-V2, MobileNetV2, MNASNet, MixNet, FBNet, TinyNet (timm's EfficientNet)",
    model_classes=(efficientnet.EfficientNet, efficientnet.EfficientNetFeatures),
    convert=convert_efficientnet,
    entry="conv_stem",
    accepted=(efficientnet.EfficientNet, efficientnet.EfficientNetFeatures, *_BLOCKS),
    timm_modules=("efficientnet",),
    excluded={
        "*_cc_*": _CONDCONV,
        "tf_mixnet_*": (
            "a strided MixedConv2d of TensorFlow 'same' convolutions (Conv2dSame groups) is not converted yet"
        ),
        "efficientnet_[hx]_*": (
            "a stride-1 'same' convolution with an even kernel (after the space-to-depth stem) pads unevenly; "
            "not converted yet"
        ),
    },
    empty_batch_ok=True,
    examples={
        "efficientnet": Example("test_efficientnet", {}, (64, 96)),
        "mixnet": Example("mixnet_s", {}, (64, 64)),  # strided MixedConv2d: one anchor for its kernel groups
    },
)

MOBILENETV3 = Family(
    name="mobilenetv3",
    description="MobileNetV3, MobileNetV4 (convolutional), LCNet, FBNetV3 (timm's MobileNetV3)",
    model_classes=(mobilenetv3.MobileNetV3, mobilenetv3.MobileNetV3Features),
    convert=convert_efficientnet,
    entry="conv_stem",
    accepted=(mobilenetv3.MobileNetV3, mobilenetv3.MobileNetV3Features, *_BLOCKS),
    timm_modules=("mobilenetv3", "hardcorenas"),
    excluded={
        "mobilenetv4_hybrid_*": (
            "MobileAttention (multi-query attention with strided keys and queries) is not converted yet"
        ),
    },
    empty_batch_ok=True,
    examples={
        "mobilenetv3_tf": Example("tf_mobilenetv3_small_minimal_100", {}, (64, 64)),  # TensorFlow "same" padding
        "mobilenetv4": Example("mobilenetv4_conv_small_035", {}, (64, 96)),  # universal inverted residuals
    },
)
