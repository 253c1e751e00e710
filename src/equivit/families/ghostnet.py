"""The GhostNet v1, v2 and v3 family: timm's ``ghostnet`` module.

Models built by ``GhostNet``. Its ghost bottlenecks add a shortcut that downsamples beside the
strided depthwise convolution, and GhostNet v2's attention pools by two and upsamples back; so the
network input is anchored once with period = the total stride and every strided convolution and
pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they meet. No
parameter is added or renamed.
"""

from __future__ import annotations

from timm.models import ghostnet
from torch import nn

from equivit.cnn_policy import convert_network
from equivit.energy import Energy
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport

__all__ = ["FAMILY", "convert_ghostnet"]


def convert_ghostnet(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """:func:`~equivit.cnn_policy.convert_network` with the stem as entry, period 64 where DFC attention runs.

    GhostNet V2 and V3's DFC attention (a ``short_conv`` branch) average-pools its input by two in
    its forward and upsamples the gate back; at stride 32 that pooling needs whole shifts of two
    cells, so the input is anchored with period 64 (inputs must be multiples of 64).
    """
    attention = any(getattr(module, "short_conv", None) is not None for module in model.modules())
    convert_network(model, report, energy, entry="conv_stem", period_factor=2 if attention else 1)


FAMILY = Family(
    name="ghostnet",
    description="GhostNet v1, v2 and v3 (ghostnet*)",
    model_classes=(ghostnet.GhostNet,),
    convert=convert_ghostnet,
    entry="conv_stem",
    feature_markers=module_types(ghostnet),
    accepted=module_types(ghostnet),
    timm_modules=("ghostnet",),
    empty_batch_ok=True,
    examples={
        "ghostnet": Example("ghostnet_050", {}, (64, 64), quick=False),
    },
)
