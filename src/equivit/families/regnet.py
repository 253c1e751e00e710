"""The RegNet family: timm ``RegNet`` (RegNetX, RegNetY, RegNetZ-free variants of timm's regnet module)."""

from __future__ import annotations

from timm.models import regnet
from torch import nn

from equivit.cnn_policy import anchor_residual_blocks, convert_convolutions
from equivit.polyphase import Energy
from equivit.registry import Example, Family
from equivit.report import ConversionReport

__all__ = ["FAMILY", "convert_regnet"]

# The strided blocks downsample in the grouped 3 x 3 convolution and in the shortcut.
_SHARED_ANCHOR = {regnet.Bottleneck: ("conv2", "downsample"), regnet.PreBottleneck: ("conv2", "downsample")}


def convert_regnet(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm RegNet shift-equivariant, in place. No parameter is added or renamed.

    Every strided ``Bottleneck`` (or pre-activation ``PreBottleneck``) anchors its input once for
    its strided 3 x 3 convolution and its downsampling shortcut
    (:func:`~equivit.layers.anchored_residual`); the stem's strided convolution is anchored on its
    own; every other convolution pads circularly. Squeeze-excitation (RegNetY) pools over the
    whole grid and is kept. ``report.input_multiple`` is the product of the strides (32).

    Args:
        model: The model, changed in place: a ``RegNet``, or timm's ``features_only`` wrapper of one.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: For a part that cannot be converted, naming it.
    """
    stride = anchor_residual_blocks(model, report, energy, _SHARED_ANCHOR)
    stride *= convert_convolutions(model, report, energy)
    report.input_multiple = (stride, stride)


FAMILY = Family(
    name="regnet",
    description="RegNetX, RegNetY and RegNetV (regnetx_*, regnety_*, regnetv_*) built by timm's RegNet",
    model_classes=(regnet.RegNet,),
    convert=convert_regnet,
    entry="stem",
    feature_markers=(regnet.RegStage,),
    accepted=(regnet.RegNet, regnet.RegStage, regnet.Bottleneck, regnet.PreBottleneck),
    timm_modules=("regnet",),
    empty_batch_ok=True,
    examples={
        "regnet": Example("regnety_002", {}, (64, 64)),
    },
)
