"""The RepViT family: timm's ``repvit`` module.

Models built by ``RepVit``: a strided convolution stem, token mixers of reparameterisable
depthwise convolutions with squeeze-excitation, channel MLPs, strided depthwise downsampling beside
a residual FFN, and a BatchNorm-linear head (distilled variants add a second head). The network
input is anchored once with period = the total stride and every strided convolution is anchored
too, with circular padding everywhere (:func:`~equivit.cnn_policy.convert_network`). No parameter
is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import repvit

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="repvit",
    description="RepViT: mobile CNNs with ViT-style blocks (repvit_*)",
    model_classes=(repvit.RepVit,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(repvit),
    accepted=module_types(repvit),
    timm_modules=("repvit",),
    empty_batch_ok=True,
    examples={
        "repvit": Example("repvit_m0_9", {}, (64, 96), quick=False),
    },
)
