"""The VoVNet family: timm's ``vovnet`` module.

Models built by ``VovNet``. Its stages start with a max pooling (ceil mode, which wraps around
instead) and aggregate every layer of a block at once; so the network input is anchored once with
period = the total stride and every strided convolution and pooling is anchored too, with circular
padding everywhere (:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned
wherever they meet. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import vovnet

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="vovnet",
    description="VoVNet: one-shot aggregation networks (vovnet*, ese_vovnet*)",
    model_classes=(vovnet.VovNet,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(vovnet),
    accepted=module_types(vovnet),
    timm_modules=("vovnet",),
    empty_batch_ok=True,
    examples={
        "vovnet": Example("ese_vovnet19b_slim_dw", {}, (64, 64), quick=False),
    },
)
