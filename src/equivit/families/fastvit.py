"""The FastViT family: timm's ``fastvit`` module.

Models built by ``FastVit``: MobileOne stems and downsampling (reparameterisable convolution
branches side by side), RepMixer token mixers (depthwise convolutions), conditional position
encodings (depthwise convolutions, no absolute embedding) and, in the ``sa`` variants, global
self-attention without position terms. The network input is anchored once with period = the total
stride and every strided convolution is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`), so the parallel branches stay aligned. No parameter
is added or renamed; ``reparameterize`` keeps working on the converted model.
"""

from __future__ import annotations

import functools

from timm.models import fastvit

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="fastvit",
    description="FastViT and MobileCLIP image towers (fastvit_*)",
    model_classes=(fastvit.FastVit,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(fastvit),
    accepted=module_types(fastvit),
    timm_modules=("fastvit",),
    empty_batch_ok=True,
    examples={
        "fastvit": Example("fastvit_t8", {}, (64, 64), quick=False),  # input-anchored policy tested on dla
        "fastvit_sa": Example("fastvit_sa12", {}, (64, 96), quick=False),
    },
)
