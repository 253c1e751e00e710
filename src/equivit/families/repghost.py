"""The RepGhostNet family: timm's ``repghost`` module.

Models built by ``RepGhostNet``. Its bottlenecks add a shortcut that downsamples beside the strided
depthwise convolution; so the network input is anchored once with period = the total stride and
every strided convolution and pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they meet. No
parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import repghost

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="repghost",
    description="RepGhostNet (repghostnet_*)",
    model_classes=(repghost.RepGhostNet,),
    convert=functools.partial(convert_network, entry="conv_stem"),
    entry="conv_stem",
    feature_markers=module_types(repghost),
    accepted=module_types(repghost),
    timm_modules=("repghost",),
    empty_batch_ok=True,
    examples={
        "repghost": Example("repghostnet_050", {}, (64, 64), quick=False),
    },
)
