"""The iFormer family: timm's ``iformer`` module.

Models built by ``IFormer``: a convolution stem, reparameterisable depthwise convolution blocks,
conditional position encodings (depthwise convolutions) and single-head modulation attention over
the whole grid (no position terms; timm's optional attention windows are off in every named model,
and a model built with them is refused). The network input is anchored once with period = the total
stride and every strided convolution is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`). No parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import iformer
from torch import nn

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY"]


def windowed_attention_problem(attention: nn.Module) -> str | None:
    """Why an iFormer ``SHMA`` cannot be made equivariant, or None: its windows zero-pad the grid.

    Args:
        attention: timm's ``SHMA``.

    Returns:
        None for attention over the whole grid (every named model), else the problem.
    """
    if getattr(attention, "window_size", 0):
        return f"attention windows of {attention.window_size} tokens zero-pad the grid in timm's forward"
    return None


FAMILY = Family(
    name="iformer",
    description="iFormer (iformer_*)",
    model_classes=(iformer.IFormer,),
    convert=functools.partial(convert_network, entry="stem"),
    entry="stem",
    feature_markers=module_types(iformer),
    accepted=module_types(iformer, without=("SHMA",)),
    checks={iformer.SHMA: windowed_attention_problem},
    timm_modules=("iformer",),
    examples={
        "iformer": Example("iformer_t", {}, (64, 96), quick=False),
    },
)
