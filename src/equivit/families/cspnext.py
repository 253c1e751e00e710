"""The CSPNeXt family: timm's ``cspnext`` module.

Models built by ``CspNext``. Its cross-stage stages split the channels into a path through the
blocks and a path around them, after a strided convolution; the network input is anchored once with
period = the total stride and every strided convolution and pooling is anchored too, with circular
padding everywhere (:func:`~equivit.cnn_policy.convert_network`). No parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import cspnext

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="cspnext",
    description="CSPNeXt (cspnext_*), the RTMDet backbone",
    model_classes=(cspnext.CspNext,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(cspnext),
    accepted=module_types(cspnext),
    timm_modules=("cspnext",),
    empty_batch_ok=True,
    examples={
        "cspnext": Example("cspnext_tiny", {}, (64, 64), quick=False),
    },
)
