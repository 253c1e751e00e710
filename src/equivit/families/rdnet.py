"""The RDNet family: timm's ``rdnet`` module.

Models built by ``RDNet``. Its dense stages concatenate earlier maps and its transitions downsample
with strided convolutions; so the network input is anchored once with period = the total stride and
every strided convolution and pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they meet. No
parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import rdnet

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="rdnet",
    description="RDNet: revived DenseNets (rdnet_*)",
    model_classes=(rdnet.RDNet,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(rdnet),
    accepted=module_types(rdnet),
    timm_modules=("rdnet",),
    empty_batch_ok=True,
    examples={
        "rdnet": Example("rdnet_tiny", {}, (64, 64), quick=False),
    },
)
