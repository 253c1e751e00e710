"""The FocalNet family: timm's ``focalnet`` module.

Models built by ``FocalNet``: a strided patch-embedding convolution, focal modulation
(depthwise convolutions of growing kernels and a global context pooled over the whole grid; no
attention windows and no position terms) and strided convolution downsampling. The network input is
anchored once with period = the total stride and every strided convolution is anchored too, with
circular padding everywhere (:func:`~equivit.cnn_policy.convert_network`). No parameter is added or
renamed.
"""

from __future__ import annotations

import functools

from timm.models import focalnet

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="focalnet",
    description="Focal modulation networks (focalnet_*)",
    model_classes=(focalnet.FocalNet,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(focalnet),
    accepted=module_types(focalnet),
    timm_modules=("focalnet",),
    empty_batch_ok=True,
    examples={
        "focalnet": Example("focalnet_tiny_srf", {}, (64, 96), quick=False),
    },
)
