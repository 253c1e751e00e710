"""The HGNet family: timm's ``hgnet`` module.

Models built by ``HighPerfGpuNet`` (HGNet and HGNetV2). Its stages aggregate every layer of a
block at once after a strided depthwise convolution; so the network input is anchored once with
period = the total stride and every strided convolution and pooling is anchored too, with circular
padding everywhere (:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned
wherever they meet. HGNetV2's stem pads its maps by one row and column of zeros in its forward
before 2 x 2 convolutions and poolings: it becomes a :class:`CircularStemV2`, which pads them
circularly. No parameter is added or renamed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import hgnet
from torch import nn

from equivit.cnn_policy import convert_network
from equivit.energy import Energy
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport

__all__ = ["FAMILY", "CircularStemV2", "convert_hgnet"]


class CircularStemV2(hgnet.StemV2):
    """HGNetV2's stem with its one-sided padding circular: the 2 x 2 convolution and pooling wrap around.

    timm pads the right and bottom by one zero before ``stem2a``, ``stem2b`` and the 2 x 2 max
    pooling, so that they keep the map's size; padding by wrapping instead makes each a circular
    correlation with an offset of half a cell, exactly equivariant to circular shifts. The 2 x 2
    max pooling (stride 1, no parameters) runs here on the padded map; timm's ``pool`` child, which
    only fits a padded map, is removed by the conversion.

    Shape:
        - x: :math:`(B, C, H, W)`
        - output: :math:`(B, C_{out}, H / 4, W / 4)`
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stem, padding circularly where timm pads with zeros.

        Args:
            x: Images.

        Returns:
            The stem's map.
        """
        x = self.stem1(x)
        x = F.pad(x, (0, 1, 0, 1), mode="circular")
        branch = self.stem2a(x)
        branch = F.pad(branch, (0, 1, 0, 1), mode="circular")
        branch = self.stem2b(branch)
        x = torch.cat([F.max_pool2d(x, kernel_size=2, stride=1), branch], dim=1)
        return self.stem4(self.stem3(x))


def convert_hgnet(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """:func:`~equivit.cnn_policy.convert_network` with the stem as entry; HGNetV2's stem pads circularly.

    Raises:
        UnsupportedModelError: For a part that cannot be converted.
    """
    for name, module in model.named_modules():
        if type(module) is hgnet.StemV2:
            module.__class__ = CircularStemV2
            del module.pool
            report.add(name, "StemV2 (one-sided zero padding in its forward)", "CircularStemV2 (circular padding)")
    convert_network(model, report, energy, entry="stem")


FAMILY = Family(
    name="hgnet",
    description="HGNet and HGNetV2 (hgnet_*, hgnetv2_*)",
    model_classes=(hgnet.HighPerfGpuNet,),
    convert=convert_hgnet,
    entry="stem",
    feature_markers=module_types(hgnet),
    accepted=(*module_types(hgnet, without=("StemV2",)), CircularStemV2),
    timm_modules=("hgnet",),
    empty_batch_ok=True,
    examples={
        "hgnet": Example("hgnet_tiny", {}, (64, 64), quick=False),
        "hgnetv2": Example("hgnetv2_b0", {}, (64, 96), quick=False),  # StemV2: one-sided padding made circular
    },
)
