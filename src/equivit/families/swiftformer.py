"""The SwiftFormer family: timm's ``swiftformer`` module.

Models built by ``SwiftFormer``: a strided convolution stem, convolutional encoders
(depthwise convolutions, layer scales), efficient additive attention (a global query vector pooled
over every token; no position terms) and strided convolution embeddings between stages. The
network input is anchored once with period = the total stride and every strided convolution is
anchored too, with circular padding everywhere (:func:`~equivit.cnn_policy.convert_network`). No
parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import swiftformer

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="swiftformer",
    description="SwiftFormer (swiftformer_*)",
    model_classes=(swiftformer.SwiftFormer,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(swiftformer),
    accepted=module_types(swiftformer),
    timm_modules=("swiftformer",),
    examples={
        "swiftformer": Example("swiftformer_xs", {}, (64, 96), quick=False),
    },
)
