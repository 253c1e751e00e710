"""The MambaOut family: timm's ``mambaout`` module.

Models built by ``MambaOut``. Its gated blocks mix tokens with depthwise convolutions only
(channels-last, like ConvNeXt); so the network input is anchored once with period = the total stride
and every strided convolution and pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they meet. No
parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import mambaout

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="mambaout",
    description="MambaOut: gated CNNs (mambaout_*)",
    model_classes=(mambaout.MambaOut,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(mambaout),
    accepted=module_types(mambaout),
    timm_modules=("mambaout",),
    empty_batch_ok=True,
    examples={
        "mambaout": Example("test_mambaout", {}, (64, 64), quick=False),
    },
)
