"""The Aligned Xception family: timm's ``xception_aligned`` module.

Models built by ``XceptionAligned``. Its blocks downsample in a separable convolution and in a
strided shortcut; so the network input is anchored once with period = the total stride and every
strided convolution and pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they meet. No
parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import xception_aligned

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="xception_aligned",
    description="Aligned Xception (xception41, xception65, xception71, xception41p, xception65p)",
    model_classes=(xception_aligned.XceptionAligned,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(xception_aligned),
    accepted=module_types(xception_aligned),
    timm_modules=("xception_aligned",),
    empty_batch_ok=True,
    examples={
        "xception_aligned": Example("xception41p", {}, (64, 64), quick=False),
    },
)
