"""The ResNetV2 family: timm ``ResNetV2`` (pre-activation ResNets, resnetv2_*).

Every strided block anchors its input once for its strided convolution and its downsampling
shortcut (:func:`~equivit.layers.anchored_residual`); the pre-activation norm before the shortcut
acts on each position, so anchoring the block input anchors both. The stem's strided convolutions
and pooling are anchored one by one, every other convolution pads circularly. No parameter is added
or renamed; inputs must be multiples of 32. BiT models (``*_bit``), whose weight-standardised
convolutions (``StdConv2d``) cannot share an anchor in a generated block, anchor their input once
instead (:func:`~equivit.cnn_policy.convert_network`), each convolution made circular in its own
subclass (:func:`~equivit.layers.circular_std_conv`).
"""

from __future__ import annotations

import itertools

from timm.layers.std_conv import StdConv2d
from timm.models import resnetv2
from torch import nn

from equivit.cnn_policy import convert_network, convert_residual_cnn
from equivit.energy import Energy
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


def _fold_fixed_padding(model: nn.Module, report: ConversionReport) -> None:
    """Fold BiT's separate stem padding into its pooling.

    BiT's "fixed" stem pads with a ``ConstantPad2d`` before an unpadded max pooling; the pooling
    then pads itself instead, and is made circular with its padding like any other.
    """
    for name, module in model.named_modules():
        children = list(module.named_children())
        for (pad_name, pad), (_, pool) in itertools.pairwise(children):
            if type(pad) is nn.ConstantPad2d and type(pool) is nn.MaxPool2d and pool.padding in (0, (0, 0)):
                amounts = set(pad.padding)
                if len(amounts) == 1:
                    pool.padding = amounts.pop()
                    setattr(module, pad_name, nn.Identity())
                    report.add(f"{name}.{pad_name}" if name else pad_name, "ConstantPad2d", "folded into the pooling")


def convert_resnetv2(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """One anchor per strided block (:func:`~equivit.cnn_policy.convert_residual_cnn`); BiT: one at the input.

    Raises:
        UnsupportedModelError: For a part that cannot be converted, naming it.
    """
    if any(isinstance(module, StdConv2d) for module in model.modules()):
        _fold_fixed_padding(model, report)
        convert_network(model, report, energy, entry="stem")
    else:
        convert_residual_cnn(model, report, energy, blocks=_SHARED_ANCHOR)


FAMILY = Family(
    name="resnetv2",
    description="ResNetV2: pre-activation ResNets (resnetv2_*) and BiT (*_bit) built by timm's ResNetV2",
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
    empty_batch_ok=True,
    examples={
        "resnetv2": Example("resnetv2_18d", {}, (64, 64)),
        "resnetv2_bit": Example("resnetv2_50x1_bit", {}, (64, 64), quick=False),
    },
)
