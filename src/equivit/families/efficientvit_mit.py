"""The EfficientViT (MIT) family: timm's ``efficientvit_mit`` module.

Models built by ``EfficientVit`` and ``EfficientVitLarge``: MBConv and fused-MBConv
stages, and lightweight multi-scale linear attention (``LiteMLA``: ReLU linear attention over the
whole grid, its multi-scale tokens from depthwise convolutions; no position terms). The network
input is anchored once with period = the total stride and every strided convolution is anchored
too, with circular padding everywhere (:func:`~equivit.cnn_policy.convert_network`). timm runs the
attention's products in float32 even for float64 inputs, so its rounding is float32's. No
parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import efficientvit_mit

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="efficientvit_mit",
    description="EfficientViT from MIT (efficientvit_b*, efficientvit_l*)",
    model_classes=(
        efficientvit_mit.EfficientVit,
        efficientvit_mit.EfficientVitLarge,
    ),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(efficientvit_mit),
    accepted=module_types(efficientvit_mit),
    timm_modules=("efficientvit_mit",),
    float64_rtol=1e-5,  # LiteMLA's products run in float32 whatever the input dtype (timm's _attn)
    examples={
        "efficientvit_b": Example("efficientvit_b0", {}, (64, 96), quick=False),
        "efficientvit_l": Example("efficientvit_l1", {}, (64, 64), quick=False),
    },
)
