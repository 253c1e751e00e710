"""The ByobNet family: timm's ``byobnet`` module.

Models built by ``ByobNet``. Its blocks (basic, bottleneck, dark, edge, RepVGG, MobileOne)
downsample in the main path and in a shortcut that may be a strided convolution or an average
pooling; so the network input is anchored once with period = the total stride and every strided
convolution and pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they meet. No
parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import byobnet

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="byobnet",
    description=(
        "ByobNet: RepVGG, MobileOne, GENet, ResNet/ResNeXt/RegNetZ/GCNet/ECA variants (*ts, *t, "
        "gernet_*, repvgg_*, mobileone_*) built from block specs"
    ),
    model_classes=(byobnet.ByobNet,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(byobnet),
    accepted=module_types(byobnet),
    timm_modules=("byobnet",),
    excluded={
        "bat_*": "its bilinear attention transform (BatNonLocalAttn) samples blocks at fixed positions; not converted",
        "*_clip": "CLIP's attention pooling head (AttentionPool2d) adds an absolute position embedding",
    },
    empty_batch_ok=True,
    examples={
        "byobnet": Example("test_byobnet", {}, (64, 64), quick=False),
    },
)
