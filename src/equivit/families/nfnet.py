"""The NFNet family: timm's ``nfnet`` module.

Models built by ``NormFreeNet``: NFNet-F (``dm_nfnet_*``), NFNet-L, ECA-NFNet, NF-RegNet and
NF-ResNet. Their convolutions standardise their weights in ``forward`` (``ScaledStdConv2d``, and
the TensorFlow "same" variant of NFNet-F); each becomes its circular subclass, anchored with period
= stride where strided (:func:`~equivit.layers.circular_std_conv`), with the same parameters. Their
blocks downsample in the main path and in an average-pooled shortcut, so the network input is
anchored once with period = the total stride (:func:`~equivit.cnn_policy.convert_network`). No
parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import nfnet

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="nfnet",
    description="NFNet: normalizer-free networks (dm_nfnet_*, nfnet_*, eca_nfnet_*, nf_regnet_*, nf_resnet*)",
    model_classes=(nfnet.NormFreeNet,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(nfnet),
    accepted=module_types(nfnet),
    timm_modules=("nfnet",),
    empty_batch_ok=True,
    examples={
        "nfnet": Example("nf_regnet_b0", {}, (64, 64), quick=False),
    },
)
