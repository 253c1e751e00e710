"""The EfficientNet and MobileNet families: timm ``EfficientNet`` and ``MobileNetV3`` (one builder, many networks).

Both are chains of blocks from timm's ``_efficientnet_blocks`` whose residual shortcut exists only
at stride 1, so the generic policy (:func:`equivit.cnn_policy.convert_convolutions`) converts them:
each strided convolution is anchored on its own input, every other convolution pads circularly.
Squeeze-excitation pools over the whole grid and is kept.
"""

from __future__ import annotations

import math

import torch
from timm.layers import attention2d
from timm.models import _efficientnet_blocks as blocks
from timm.models import efficientnet, mobilenetv3
from torch import nn

from equivit.anchor_core import anchor, roll_back
from equivit.cnn_policy import convert_convolutions, convert_sequence
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.layers.sharing import parent_method
from equivit.registry import Example, Family, types_named
from equivit.report import ConversionReport, UnsupportedModelError

__all__ = [
    "EFFICIENTNET",
    "MOBILENETV3",
    "GridAnchoredMultiQueryAttention2d",
    "anchor_attention",
    "convert_efficientnet",
]

_BLOCKS = types_named(
    blocks,
    "ConvBnAct",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "UniversalInvertedResidual",
    "EdgeResidual",
    "MobileAttention",
)


_CONDCONV = "CondConv2d (per-sample mixtures of kernels) pads with zeros; it is not converted yet"


@equivariant_layer(period="grid", anchored_children=("query", "key", "value", "output"))
class GridAnchoredMultiQueryAttention2d(attention2d.MultiQueryAttention2d):
    """timm's ``MultiQueryAttention2d`` run on its input rolled to the anchor with period = the grid.

    Attention over the whole grid has no position terms, so it is equivariant as timm wrote it;
    but a rolled grid sums its keys in another order, which rounds differently, and in float16
    the difference grows through the layers after it. Anchored with period = the grid, every
    shift of the input gives the attention the same tokens in the same order; its output is rolled
    back. The strided keys and values (anchored depthwise convolutions, period = stride) run on
    the anchored map too. Strided queries are refused (timm upsamples them bilinearly with clamped
    edges).

    Shape:
        - x: :math:`(B, C, H, W)`, ``H`` and ``W`` multiples of ``kv_stride``
        - output: :math:`(B, C_{out}, H, W)`
    """

    equivit_energy = "l1"
    _stock_forward = parent_method(attention2d.MultiQueryAttention2d.forward, "_stock_forward")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anchor the grid, attend, roll the output back.

        Args:
            x: Feature maps.

        Returns:
            The attention's output in the input's frame.
        """
        anchored, offsets = anchor(x, x.shape[-2], x.shape[-1], self.equivit_energy, False)
        return roll_back(self._stock_forward(anchored), offsets, False)


def anchor_attention(model: nn.Module, report: ConversionReport, energy: Energy) -> int:
    """Convert every ``MultiQueryAttention2d`` in ``model`` to a :class:`GridAnchoredMultiQueryAttention2d`.

    Its strided key/value convolutions are anchored first (period = stride): they branch off the
    main path, so they are converted here, before the chain of strides is counted; their maps are
    at the block's reduction times ``kv_stride``, which may exceed the network's last reduction.

    A model with such attention cannot run an empty batch (timm reshapes with -1): the report says so.

    Returns:
        The reduction of the most reduced key/value map (1 when there is none).

    Raises:
        UnsupportedModelError: For attention with strided queries.
    """
    multiple, reduction = 1, 1
    for name, module in list(model.named_modules()):
        if isinstance(module, attention2d.MultiQueryAttention2d):
            if module.has_query_strides:
                raise UnsupportedModelError(
                    f"{name}: strided queries (average pooled, then upsampled bilinearly with clamped edges) are "
                    "not supported"
                )
            for branch in ("key", "value"):
                if hasattr(getattr(module, branch), "down_conv"):
                    convert_sequence(getattr(module, branch), "down_conv", f"{name}.{branch}.", report, energy)
            module.__class__ = GridAnchoredMultiQueryAttention2d
            module.equivit_energy = energy
            report.empty_batch_ok = False  # timm's multi-query attention reshapes with -1
            report.add(name, "MultiQueryAttention2d", "GridAnchoredMultiQueryAttention2d (period = the grid)")
            multiple = max(multiple, reduction * module.kv_stride)
        elif isinstance(module, nn.Conv2d) and ".key." not in name and ".value." not in name:
            reduction *= int(module.stride[0])
    return multiple


def convert_efficientnet(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm EfficientNet or MobileNetV3 (or its ``features_only`` model) shift-equivariant, in place.

    The stem and every strided block convolution (depthwise ``conv_dw``, ``conv_exp`` of edge
    residuals, the ``dw_start`` / ``dw_mid`` of MobileNetV4's universal blocks, the strided keys
    and values of MobileNetV4's multi-query attention) become
    :class:`~equivit.layers.AnchoredConv2d` (period = stride, circular padding); every other padded
    convolution pads circularly. No parameter is added or renamed. ``report.input_multiple`` is the
    network's total stride (32), or the reduction of a key/value map where that is larger.

    Args:
        model: The model, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: For a convolution that cannot be converted (dynamic "same"
            padding), naming it.
    """
    key_value = anchor_attention(model, report, energy)
    stride = math.lcm(convert_convolutions(model, report, energy), key_value)
    report.input_multiple = (stride, stride)


EFFICIENTNET = Family(
    name="efficientnet",
    description="EfficientNet, EfficientNet-V2, MobileNetV2, MNASNet, MixNet, FBNet, TinyNet (timm's EfficientNet)",
    model_classes=(efficientnet.EfficientNet, efficientnet.EfficientNetFeatures),
    convert=convert_efficientnet,
    entry="conv_stem",
    accepted=(efficientnet.EfficientNet, efficientnet.EfficientNetFeatures, *_BLOCKS),
    timm_modules=("efficientnet",),
    excluded={
        "*_cc_*": _CONDCONV,
        "tf_mixnet_*": (
            "a strided MixedConv2d of TensorFlow 'same' convolutions (Conv2dSame groups) is not converted yet"
        ),
        "efficientnet_[hx]_*": (
            "a stride-1 'same' convolution with an even kernel (after the space-to-depth stem) pads unevenly; "
            "not converted yet"
        ),
    },
    empty_batch_ok=True,
    examples={
        "efficientnet": Example("test_efficientnet", {}, (64, 96)),
        "mixnet": Example("mixnet_s", {}, (64, 64)),  # strided MixedConv2d: one anchor for its kernel groups
    },
)

MOBILENETV3 = Family(
    name="mobilenetv3",
    description="MobileNetV3, MobileNetV4 (convolutional), LCNet, FBNetV3 (timm's MobileNetV3)",
    model_classes=(mobilenetv3.MobileNetV3, mobilenetv3.MobileNetV3Features),
    convert=convert_efficientnet,
    entry="conv_stem",
    accepted=(mobilenetv3.MobileNetV3, mobilenetv3.MobileNetV3Features, attention2d.Attention2d, *_BLOCKS),
    timm_modules=("mobilenetv3", "hardcorenas"),
    empty_batch_ok=True,
    examples={
        "mobilenetv3_tf": Example("tf_mobilenetv3_small_minimal_100", {}, (64, 64)),  # TensorFlow "same" padding
        "mobilenetv4": Example("mobilenetv4_conv_small_035", {}, (64, 96)),  # universal inverted residuals
        # Multi-query attention with strided keys and values (anchored on the block's input).
        "mobilenetv4_hybrid": Example("mobilenetv4_hybrid_medium", {}, (64, 96), quick=False),
    },
)
