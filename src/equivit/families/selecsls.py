"""The SelecSLS family: timm's ``selecsls`` module.

Models built by ``SelecSls``. Its blocks concatenate features from earlier layers of a stage (the
total stride is 64: inputs must be multiples of 64); so the network input is anchored once with
period = the total stride and every strided convolution and pooling is anchored too, with circular
padding everywhere (:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned
wherever they meet. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import selecsls

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]

FAMILY = Family(
    name="selecsls",
    description="SelecSLS (selecsls*)",
    model_classes=(selecsls.SelecSls,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(selecsls),
    accepted=module_types(selecsls),
    timm_modules=("selecsls",),
    empty_batch_ok=True,
    examples={
        "selecsls": Example("selecsls42", {}, (128, 128), quick=False),
    },
)
