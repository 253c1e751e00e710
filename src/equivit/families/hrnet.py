"""The HRNet family: timm's ``hrnet`` module.

Models built by ``HighResolutionNet``, ``HighResolutionNetFeatures``. Its branches run at four
resolutions side by side and are fused repeatedly (strided convolutions down, nearest-neighbour
upsampling up); so the network input is anchored once with period = the total stride and every
strided convolution and pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they meet. No
parameter is added or renamed.
"""

from __future__ import annotations

import functools

from timm.models import hrnet
from torch import nn

from equivit.cnn_policy import convert_network
from equivit.registry import Example, Family, module_types

__all__ = ["FAMILY", "upsampling_problem"]


def upsampling_problem(module: nn.Module) -> str | None:
    """None for a nearest-neighbour upsampling by an integer factor (exact on a whole-cell shift), else the problem.

    Behind the network's input anchor a branch of reduction ``r`` sees a shift by whole cells, and a
    nearest-neighbour upsampling by ``f`` turns it into the shift of the branch of reduction ``r / f``
    it is added to. Interpolating modes weigh neighbours near the border by clamping, not wrapping.
    """
    if not isinstance(module, nn.Upsample):
        return f"expected nn.Upsample, got {type(module).__name__}"
    factors = module.scale_factor if isinstance(module.scale_factor, tuple) else (module.scale_factor,)
    if (
        module.mode != "nearest"
        or module.size is not None
        or not all(f is not None and float(f).is_integer() for f in factors)
    ):
        return (
            f"upsampling with mode {module.mode!r} and scale {module.scale_factor} (only nearest by an integer "
            "factor is exact)"
        )
    return None


FAMILY = Family(
    name="hrnet",
    description="HRNet: high-resolution networks (hrnet_*)",
    model_classes=(hrnet.HighResolutionNet, hrnet.HighResolutionNetFeatures),
    convert=functools.partial(convert_network, entry="conv1"),
    entry="conv1",
    feature_markers=module_types(hrnet),
    accepted=module_types(hrnet),
    checks={nn.Upsample: upsampling_problem},
    timm_modules=("hrnet",),
    empty_batch_ok=True,
    examples={
        "hrnet": Example("hrnet_w18_small", {}, (64, 64), quick=False),
    },
)
