"""The RegNet family: timm ``RegNet`` (RegNetX, RegNetY, RegNetV, RegNetZ of timm's regnet module).

Every strided ``Bottleneck`` (or pre-activation ``PreBottleneck``) anchors its input once for its
strided grouped 3 x 3 convolution and its downsampling shortcut
(:func:`~equivit.layers.anchored_residual`); the stem's strided convolution is anchored on its own;
every other convolution pads circularly. Squeeze-excitation (RegNetY) pools over the whole grid and
is kept. No parameter is added or renamed; inputs must be multiples of 32.
"""

from __future__ import annotations

import functools

from timm.models import regnet

from equivit.cnn_policy import convert_residual_cnn
from equivit.registry import Example, Family

__all__ = ["FAMILY"]

# The strided blocks downsample in the grouped 3 x 3 convolution and in the shortcut.
_SHARED_ANCHOR = {regnet.Bottleneck: ("conv2", "downsample"), regnet.PreBottleneck: ("conv2", "downsample")}


FAMILY = Family(
    name="regnet",
    description="RegNetX, RegNetY and RegNetV (regnetx_*, regnety_*, regnetv_*) built by timm's RegNet",
    model_classes=(regnet.RegNet,),
    convert=functools.partial(convert_residual_cnn, blocks=_SHARED_ANCHOR),
    entry="stem",
    feature_markers=(regnet.RegStage,),
    accepted=(regnet.RegNet, regnet.RegStage, regnet.Bottleneck, regnet.PreBottleneck),
    timm_modules=("regnet",),
    empty_batch_ok=True,
    examples={
        "regnet": Example("regnety_002", {}, (64, 64)),
    },
)
