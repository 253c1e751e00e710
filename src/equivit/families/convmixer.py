"""The ConvMixer family: timm's ``convmixer`` module.

Models built by ``ConvMixer``. Its patch embedding is one strided convolution (stride = patch size 7
or 14) and its mixers are large depthwise convolutions with 'same' padding, made circular; the
network input is anchored once with period = the total stride and every strided convolution and
pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`). No parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import convmixer

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="convmixer",
    description="ConvMixer (convmixer_*)",
    model_classes=(convmixer.ConvMixer,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(convmixer),
    accepted=module_types(convmixer),
    timm_modules=("convmixer",),
    empty_batch_ok=True,
    examples={
        "convmixer": Example("convmixer_768_32", {}, (56, 56), quick=False),
    },
)
