"""The EfficientViM family: timm's ``efficientvim`` module.

Models built by ``EfficientViM``: a strided convolution patch embedding, depthwise
convolutions, and hidden-state mixers (state-space duality over the whole grid: pointwise 1-D
convolutions over tokens and sums over every token; no position terms). The network input is
anchored once with period = the total stride and every strided convolution is anchored too, with
circular padding everywhere (:func:`~equivit.cnn_policy.convert_network`). No parameter is added or
renamed.
"""

from __future__ import annotations

import functools

from timm.models import efficientvim

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="efficientvim",
    description="EfficientViM (efficientvim_*)",
    model_classes=(efficientvim.EfficientViM, efficientvim.EfficientViMDistilled),
    convert=functools.partial(convert_network, entry="patch_embed"),
    entry="patch_embed",
    feature_markers=module_types(efficientvim),
    accepted=module_types(efficientvim),
    timm_modules=("efficientvim",),
    examples={
        "efficientvim": Example("efficientvim_m1", {}, (64, 128), quick=False),
    },
)
