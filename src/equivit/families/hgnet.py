"""The HGNet family: timm's ``hgnet`` module.

Models built by ``HighPerfGpuNet``. Its stages aggregate every layer of a block at once after a
strided depthwise convolution; so the network input is anchored once with period = the total stride
and every strided convolution and pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they meet. No
parameter is added or renamed.
"""

from __future__ import annotations

from timm.models import hgnet
from torch import nn

from equivit.cnn_policy import convert_network
from equivit.energy import Energy
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError

__all__ = ["FAMILY", "convert_hgnet"]

_STEM_V2 = "HGNetV2's stem (StemV2) pads with zeros on one side in its forward (F.pad); not converted yet"


def convert_hgnet(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """:func:`~equivit.cnn_policy.convert_network` with the stem as entry; HGNetV2's stem is refused.

    Raises:
        UnsupportedModelError: For HGNetV2 (its stem's forward pads with zeros) or a part that
            cannot be converted.
    """
    for name, module in model.named_modules():
        if isinstance(module, hgnet.StemV2):
            raise UnsupportedModelError(f"{name}: {_STEM_V2}")
    convert_network(model, report, energy, entry="stem")


FAMILY = Family(
    name="hgnet",
    description="HGNet (hgnet_tiny, hgnet_small, hgnet_base)",
    model_classes=(hgnet.HighPerfGpuNet,),
    convert=convert_hgnet,
    entry="stem",
    feature_markers=module_types(hgnet),
    accepted=module_types(hgnet, without=("StemV2",)),
    timm_modules=("hgnet",),
    excluded={
        "hgnetv2_*": _STEM_V2,
    },
    empty_batch_ok=True,
    examples={
        "hgnet": Example("hgnet_tiny", {}, (64, 64), quick=False),
    },
)
