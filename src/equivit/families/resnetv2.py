"""The ResNetV2 family: timm ``ResNetV2`` (pre-activation ResNets, resnetv2_*).

Every strided block anchors its input once for its strided convolution and its downsampling
shortcut (:func:`~equivit.layers.anchored_residual`); the pre-activation norm before the shortcut
acts on each position, so anchoring the block input anchors both. The stem's strided convolutions
and pooling are anchored one by one, every other convolution pads circularly. No parameter is added
or renamed; inputs must be multiples of 32. BiT models (weight-standardised convolutions) are not
converted yet.
"""

from __future__ import annotations

import functools

from timm.models import resnetv2

from equivit.cnn_policy import convert_residual_cnn
from equivit.registry import Example, Family, types_named

__all__ = ["FAMILY"]

# The strided blocks downsample in a 3 x 3 convolution and in the shortcut (a strided 1 x 1
# convolution, or average pooling then a 1 x 1 convolution).
_SHARED_ANCHOR = {
    resnetv2.PreActBottleneck: ("conv2", "downsample"),
    resnetv2.Bottleneck: ("conv2", "downsample"),
    **{cls: ("conv1", "downsample") for cls in types_named(resnetv2, "PreActBasic")},
}


FAMILY = Family(
    name="resnetv2",
    description="ResNetV2: pre-activation ResNets (resnetv2_*) built by timm's ResNetV2",
    model_classes=(resnetv2.ResNetV2,),
    convert=functools.partial(convert_residual_cnn, blocks=_SHARED_ANCHOR),
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
