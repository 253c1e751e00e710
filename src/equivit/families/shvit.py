"""The SHViT family: timm's ``shvit`` module.

Models built by ``SHViT``: a strided convolution patch embedding, depthwise-convolution
token mixers, single-head attention over the whole grid on part of the channels (no position
terms) and strided convolution downsampling between stages. The network input is anchored once
with period = the total stride and every strided convolution is anchored too, with circular padding
everywhere (:func:`~equivit.cnn_policy.convert_network`). No parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import shvit

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="shvit",
    description="Single-head vision transformers (shvit_*)",
    model_classes=(shvit.SHViT,),
    convert=functools.partial(convert_network, entry="patch_embed"),
    entry="patch_embed",
    feature_markers=module_types(shvit),
    accepted=module_types(shvit),
    timm_modules=("shvit",),
    empty_batch_ok=True,
    examples={
        "shvit": Example("shvit_s1", {}, (64, 128), quick=False),
    },
)
