"""The MobileNetV5 family: timm's ``mobilenetv5`` module (Gemma 3n's vision encoder and its classifiers).

Models built by ``MobileNetV5`` and ``MobileNetV5Encoder``: MobileNetV4 blocks (universal inverted
residuals, edge residuals, multi-query attention with strided keys and values) and a multi-scale
fusion adapter that upsamples the last stage to the one before it, concatenates them and pools
the result to a fixed grid (``msfa_output_resolution``, 16 by default).

Two branches meet in the adapter at different reductions, so the network input is anchored once
with period = the total stride and every strided convolution is anchored too, with circular
padding everywhere (:func:`~equivit.cnn_policy.convert_network`). The adapter's final pooling
(``high / output`` cells per window, a number fixed only by the input size) runs on its input's
polyphase anchor (:class:`EquivariantMultiScaleFusionAdapter`), and inputs must be multiples of
``16 x output_resolution`` so that the pooling tiles the map exactly (timm resizes bilinearly
otherwise, which no anchor undoes). No parameter is added or renamed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import attention2d
from timm.models import _efficientnet_blocks as blocks
from timm.models import mobilenetv5
from timm.models._features_fx import register_notrace_module
from torch import nn

from equivit.anchor_core import anchor
from equivit.cnn_policy import convert_network
from equivit.energy import Energy
from equivit.families.efficientnet import anchor_attention
from equivit.registry import Example, Family, types_named
from equivit.report import ConversionReport, UnsupportedModelError

__all__ = ["FAMILY", "EquivariantMultiScaleFusionAdapter", "convert_mobilenetv5"]


@register_notrace_module
class EquivariantMultiScaleFusionAdapter(mobilenetv5.MobileNetV5MultiScaleFusionAdapter):
    """timm's multi-scale fusion adapter whose pooling to the output grid runs on the polyphase anchor.

    The coarser maps are upsampled to the finest one by nearest neighbours (an integer factor:
    exact on a whole-cell shift), concatenated and mixed by the pointwise ``ffn``, as in timm.
    Where the finest map is larger than ``output_resolution``, timm average-pools it by the whole
    ratio; here the map is first rolled to its polyphase anchor with period = that ratio, so that
    the pooled grid moves by whole cells with the image. A ratio that is not whole is refused
    (timm resizes bilinearly there).

    Shape:
        - inputs: :math:`(B, C_i, H_i, W_i)` each, the first the finest
        - output: :math:`(B, C_{out}, h, w)`, ``(h, w) = output_resolution``
    """

    equivit_energy = "l1"

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Fuse the maps, then pool them on their anchor to the output grid.

        Args:
            inputs: Feature maps, the first at the highest resolution.

        Returns:
            The fused map.

        Raises:
            ValueError: If a map's size does not divide the finest one, or the finest map's size is
                not a multiple of ``output_resolution``.
        """
        high_h, high_w = inputs[0].shape[-2], inputs[0].shape[-1]
        resized: list[torch.Tensor] = []
        for image in inputs:
            h, w = image.shape[-2], image.shape[-1]
            if h < high_h or w < high_w:
                if high_h % h or high_w % w:
                    raise ValueError(
                        f"MobileNetV5's fusion adapter got maps of {h} x {w} and {high_h} x {high_w}: only whole "
                        "upsampling factors keep shift equivariance"
                    )
                image = F.interpolate(image, size=(high_h, high_w), mode="nearest")
            resized.append(image)
        x = self.ffn(torch.cat(resized, dim=1))
        out_h, out_w = self.output_resolution[0], self.output_resolution[1]
        if high_h != out_h or high_w != out_w:
            if high_h % out_h or high_w % out_w:
                raise ValueError(
                    f"MobileNetV5's fusion adapter pools a {high_h} x {high_w} map to {out_h} x {out_w}: the map "
                    f"must be a multiple of {out_h} x {out_w} (inputs a multiple of {16 * out_h} x {16 * out_w})"
                )
            kernel = (high_h // out_h, high_w // out_w)
            x, _ = anchor(x, kernel[0], kernel[1], self.equivit_energy, False)
            x = F.avg_pool2d(x, kernel_size=kernel, stride=kernel)
        return self.norm(x)


def _fusion_multiple(adapter: nn.Module) -> tuple[int, int]:
    """The input multiple an adapter needs: 16 times its output grid (it reads the stride-16 map)."""
    if adapter.interpolation_mode != "nearest":
        raise UnsupportedModelError(
            f"MobileNetV5's fusion adapter upsamples with mode {adapter.interpolation_mode!r}: only 'nearest' "
            "is exact on a whole-cell shift"
        )
    out_h, out_w = adapter.output_resolution
    return 16 * int(out_h), 16 * int(out_w)


def convert_mobilenetv5(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm MobileNetV5 (classifier or Gemma 3n encoder) shift-equivariant, in place.

    The strided keys and values of the multi-query attention and every strided convolution are
    anchored (period = stride, circular padding), every other convolution pads circularly, the
    stem anchors the image with period = the total stride, and the fusion adapter becomes an
    :class:`EquivariantMultiScaleFusionAdapter`. ``report.input_multiple`` is the total stride, the
    reduction of the strided key/value maps and
    the adapter's ``16 x output_resolution`` (256 for timm's models), their least common multiple.

    Args:
        model: The model, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: For a part that cannot be converted, naming it.
    """
    key_value = anchor_attention(model, report, energy)  # first: convert_network then leaves them alone
    convert_network(model, report, energy, entry="conv_stem")
    height, width = (math.lcm(side, key_value) for side in report.input_multiple)
    adapter = getattr(model, "msfa", None)
    if adapter is not None:
        fusion = _fusion_multiple(adapter)
        height, width = math.lcm(height, fusion[0]), math.lcm(width, fusion[1])
        report.add("msfa", type(adapter).__name__, "EquivariantMultiScaleFusionAdapter (pools on its anchor)")
        adapter.__class__ = EquivariantMultiScaleFusionAdapter
        adapter.equivit_energy = energy
    report.input_multiple = (height, width)


FAMILY = Family(
    name="mobilenetv5",
    description="MobileNetV5: Gemma 3n's vision encoder and classifiers (mobilenetv5_*)",
    model_classes=(mobilenetv5.MobileNetV5, mobilenetv5.MobileNetV5Encoder),
    convert=convert_mobilenetv5,
    entry="conv_stem",
    accepted=(
        mobilenetv5.MobileNetV5,
        mobilenetv5.MobileNetV5Encoder,
        EquivariantMultiScaleFusionAdapter,
        attention2d.Attention2d,
        *types_named(blocks, "UniversalInvertedResidual", "EdgeResidual", "MobileAttention", "ConvBnAct"),
    ),
    timm_modules=("mobilenetv5",),
    empty_batch_ok=True,
    examples={
        # A quarter of the widths, a 4 x 4 fusion grid: inputs are multiples of 64; at 128 x 64 the
        # adapter pools its 8 x 4 map by 2 x 1 on the anchor.
        "mobilenetv5": Example(
            "mobilenetv5_base", {"channel_multiplier": 0.25, "msfa_output_resolution": 4, "num_features": 64}, (128, 64)
        ),
    },
)
