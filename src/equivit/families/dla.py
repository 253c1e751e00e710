"""The DLA family: timm's ``dla`` module.

Models built by ``DLA``. Its aggregation trees merge paths that downsample apart (a max pooling on
the shortcut and strided convolutions in the main path); so the network input is anchored once with
period = the total stride and every strided convolution and pooling is anchored too, with circular
padding everywhere (:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned
wherever they meet. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import dla

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="dla",
    description="DLA: Deep Layer Aggregation (dla*)",
    model_classes=(dla.DLA,),
    convert=functools.partial(convert_network, entry="base_layer"),
    entry="base_layer",
    feature_markers=module_types(dla),
    accepted=module_types(dla),
    timm_modules=("dla",),
    empty_batch_ok=True,
    examples={
        "dla": Example("dla46_c", {}, (64, 64)),
    },
)
