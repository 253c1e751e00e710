"""The SENet family: timm's ``senet`` module.

Models built by ``SENet``. Its squeeze-excitation blocks downsample in the main path and in the
shortcut; its stem pools in ceil mode (which wraps around instead); so the network input is anchored
once with period = the total stride and every strided convolution and pooling is anchored too, with
circular padding everywhere (:func:`~equivit.cnn_policy.convert_network`): parallel paths stay
aligned wherever they meet. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import senet

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="senet",
    description="SENet (legacy_senet154, legacy_seresnet*, legacy_seresnext*)",
    model_classes=(senet.SENet,),
    convert=functools.partial(convert_network, entry="layer0"),
    entry="layer0",
    feature_markers=module_types(senet),
    accepted=module_types(senet),
    timm_modules=("senet",),
    empty_batch_ok=True,
    examples={
        "senet": Example("legacy_seresnet18", {}, (64, 64), quick=False),
    },
)
