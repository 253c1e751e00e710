"""The PP-LCNetV2 family: timm's ``lcnetv2`` module.

Models built by ``LCNetV2``. Its re-parameterisable depthwise blocks run several kernel sizes side
by side, strided ones included; the network input is anchored once with period = the total stride
and every strided convolution and pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`). No parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import lcnetv2

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="lcnetv2",
    description="PP-LCNetV2 (lcnetv2_*)",
    model_classes=(lcnetv2.LCNetV2,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(lcnetv2),
    accepted=module_types(lcnetv2),
    timm_modules=("lcnetv2",),
    empty_batch_ok=True,
    examples={
        "lcnetv2": Example("lcnetv2_small", {}, (64, 64), quick=False),
    },
)
