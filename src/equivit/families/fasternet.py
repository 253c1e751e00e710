"""The FasterNet family: timm's ``fasternet`` module.

Models built by ``FasterNet``. Its partial convolutions act on a slice of the channels and its
stages merge patches with strided convolutions; so the network input is anchored once with period =
the total stride and every strided convolution and pooling is anchored too, with circular padding
everywhere (:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they
meet. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import fasternet

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="fasternet",
    description="FasterNet (fasternet_*)",
    model_classes=(fasternet.FasterNet,),
    convert=functools.partial(convert_network, entry="patch_embed"),
    entry="patch_embed",
    feature_markers=module_types(fasternet),
    accepted=module_types(fasternet),
    timm_modules=("fasternet",),
    empty_batch_ok=True,
    examples={
        "fasternet": Example("fasternet_t0", {}, (64, 64), quick=False),
    },
)
