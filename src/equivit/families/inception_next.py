"""The InceptionNeXt family: timm's ``inception_next`` module.

Models built by ``MetaNeXt``. Its token mixers split the channels into square and band-shaped
depthwise convolutions; so the network input is anchored once with period = the total stride and
every strided convolution and pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they meet. No
parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import inception_next

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="inception_next",
    description="InceptionNeXt (inception_next_*)",
    model_classes=(inception_next.MetaNeXt,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(inception_next),
    accepted=module_types(inception_next),
    timm_modules=("inception_next",),
    empty_batch_ok=True,
    examples={
        "inception_next": Example("inception_next_atto", {}, (64, 64), quick=False),
    },
)
