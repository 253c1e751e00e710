"""The TResNet family: timm's ``tresnet`` module.

Models built by ``TResNet``. Its stem is a space-to-depth reshape (stride 4) and its blocks
downsample through an anti-aliasing blur and a strided average pooling in the shortcut; so the
network input is anchored once with period = the total stride and every strided convolution and
pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they meet. No
parameter is added or renamed.
"""

from __future__ import annotations

from timm.models import tresnet
from torch import nn

from equivit.cnn_policy import convert_network
from equivit.energy import Energy
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport

__all__ = ["FAMILY", "convert_tresnet"]


def convert_tresnet(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """:func:`~equivit.cnn_policy.convert_network` with the space-to-depth stem as entry.

    The input check takes the image channels from the first convolution divided by the
    space-to-depth block area (it sees ``16 * C`` channels).
    """
    convert_network(model, report, energy, entry="body.s2d")
    block = next(module.bs for module in model.modules() if isinstance(module, tresnet.SpaceToDepth))
    first = next(module for module in model.modules() if isinstance(module, nn.Conv2d))
    report.in_channels = first.in_channels // (block * block)


FAMILY = Family(
    name="tresnet",
    description="TResNet (tresnet_*)",
    model_classes=(tresnet.TResNet,),
    convert=convert_tresnet,
    entry="body.s2d",
    feature_markers=module_types(tresnet),
    accepted=module_types(tresnet),
    timm_modules=("tresnet",),
    empty_batch_ok=True,
    examples={
        "tresnet": Example("tresnet_m", {}, (64, 64), quick=False),
    },
)
