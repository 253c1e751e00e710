"""The StarNet family: timm's ``starnet`` module.

Models built by ``StarNet``. Its blocks multiply two branches of the same map and its stages
downsample with strided convolutions; so the network input is anchored once with period = the total
stride and every strided convolution and pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they meet. No
parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import starnet

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="starnet",
    description="StarNet (starnet_*)",
    model_classes=(starnet.StarNet,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(starnet),
    accepted=module_types(starnet),
    timm_modules=("starnet",),
    empty_batch_ok=True,
    examples={
        "starnet": Example("starnet_s050", {}, (64, 64), quick=False),
    },
)
