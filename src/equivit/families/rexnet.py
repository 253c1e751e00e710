"""The ReXNet family: timm's ``rexnet`` module.

Models built by ``RexNet``. Its inverted residual blocks add a partial shortcut only at stride 1; so
the network input is anchored once with period = the total stride and every strided convolution and
pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they meet. No
parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import rexnet

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="rexnet",
    description="ReXNet (rexnet*, rexnetr*)",
    model_classes=(rexnet.RexNet,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(rexnet),
    accepted=module_types(rexnet),
    timm_modules=("rexnet",),
    empty_batch_ok=True,
    examples={
        "rexnet": Example("rexnet_100", {}, (64, 64), quick=False),
    },
)
