"""The DenseNet family: timm's ``densenet`` module.

Models built by ``DenseNet``. Its dense blocks concatenate every earlier map, and its transitions
pool by two; so the network input is anchored once with period = the total stride and every strided
convolution and pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they meet. No
parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import densenet

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="densenet",
    description="DenseNet (densenet*, densenetblur*)",
    model_classes=(densenet.DenseNet,),
    convert=functools.partial(convert_network, entry="features.conv0"),
    entry="features.conv0",
    feature_markers=module_types(densenet),
    accepted=module_types(densenet),
    timm_modules=("densenet",),
    empty_batch_ok=True,
    examples={
        "densenet": Example("densenet121", {"block_config": (1, 1, 1, 1), "growth_rate": 8}, (64, 64), quick=False),
    },
)
