"""The DPN family: timm's ``dpn`` module.

Models built by ``DPN``. Its dual-path blocks keep a residual and a densely concatenated path, both
downsampled by one strided projection; so the network input is anchored once with period = the total
stride and every strided convolution and pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they meet. No
parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import dpn

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="dpn",
    description="DPN: Dual Path Networks (dpn*)",
    model_classes=(dpn.DPN,),
    convert=functools.partial(convert_network, entry="features.conv1_1"),
    entry="features.conv1_1",
    feature_markers=module_types(dpn),
    accepted=module_types(dpn),
    timm_modules=("dpn",),
    empty_batch_ok=True,
    examples={
        "dpn": Example("dpn48b", {}, (64, 64), quick=False),
    },
)
