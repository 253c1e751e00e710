"""The CSPNet family: timm's ``cspnet`` module.

Models built by ``CspNet``. Its cross-stage stages split the channels into a path through the blocks
and a path around them, after a strided convolution; so the network input is anchored once with
period = the total stride and every strided convolution and pooling is anchored too, with circular
padding everywhere (:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned
wherever they meet. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import cspnet

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="cspnet",
    description=(
        "CSPNet: CSPResNet, CSPResNeXt, CSPDarkNet, DarkNet, CS3 variants (cspresnet*, cspresnext*, "
        "cspdarknet*, darknet*, cs3*)"
    ),
    model_classes=(cspnet.CspNet,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(cspnet),
    accepted=module_types(cspnet),
    timm_modules=("cspnet",),
    empty_batch_ok=True,
    examples={
        "cspnet": Example("cs3darknet_s", {}, (64, 64), quick=False),
    },
)
