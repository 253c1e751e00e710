"""Conversion of timm convolutional networks: ``ResNet`` and ``ConvNeXt``."""

from __future__ import annotations

from timm.models.convnext import ConvNeXtStage
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from equivit.layers import (
    AnchoredBasicBlock,
    AnchoredBottleneck,
    AnchoredConv2d,
    AnchoredMaxPool2d,
    make_conv_circular,
)
from equivit.layers.anchored_pool import keeps_grid
from equivit.polyphase import Energy
from equivit.report import ConversionReport, UnsupportedModelError

__all__ = ["convert_convnext", "convert_resnet"]


def _describe(conv: nn.Conv2d) -> str:
    k, s, p = tuple(conv.kernel_size), tuple(conv.stride), conv.padding
    return f"Conv2d {k[0]}x{k[1]} stride {s[0]}, padding {p if isinstance(p, str) else tuple(p)}"


def _plain_conv(conv: nn.Module, name: str) -> nn.Conv2d:
    if type(conv) is not nn.Conv2d or isinstance(conv.padding, str):
        raise UnsupportedModelError(
            f"{name}: only plain nn.Conv2d with an explicit padding can be converted, got {type(conv).__name__} "
            f"with padding {getattr(conv, 'padding', None)!r} (dynamic 'same' padding or weight-standardised "
            "convolutions are not supported)"
        )
    return conv


def _anchored_conv(conv: nn.Module, name: str, energy: Energy) -> AnchoredConv2d:
    """A circular ``AnchoredConv2d`` that holds ``conv``'s parameters (period = stride)."""
    conv = _plain_conv(conv, name)
    if not keeps_grid(conv.kernel_size, conv.stride, conv.padding, conv.dilation):  # type: ignore[arg-type]
        raise UnsupportedModelError(
            f"{name}: {_describe(conv)} does not map H x W to H/{conv.stride[0]} x W/{conv.stride[1]}, so its "
            "output cannot be a circular shift; it is not supported"
        )
    return AnchoredConv2d.from_conv(conv, energy=energy, padding_mode="circular")


def _circular(conv: nn.Module, name: str, report: ConversionReport) -> None:
    """Stride-1 convolution: circular padding in place (recorded only when it pads)."""
    conv = _plain_conv(conv, name)
    if all(p == 0 for p in conv.padding):  # type: ignore[union-attr]
        return
    try:
        make_conv_circular(conv)
    except ValueError as error:
        raise UnsupportedModelError(f"{name}: {error}") from error
    report.add(name, f"{_describe(conv)}, zero padding", "same, circular padding")


def _convert_sequence(parent: nn.Module, child: str, prefix: str, report: ConversionReport, energy: Energy) -> int:
    """Anchor every strided conv and pool of ``parent.child`` (a module or a ``Sequential``), one after another.

    Returns:
        The product of the strides (one axis; the strides are square).
    """
    module = getattr(parent, child)
    name = f"{prefix}{child}"
    if isinstance(module, nn.Sequential):
        stride = 1
        for index in range(len(module)):
            stride *= _convert_sequence(module, str(index), f"{name}.", report, energy)
        return stride
    if isinstance(module, nn.Conv2d):
        if tuple(module.stride) == (1, 1):
            _circular(module, name, report)
            return 1
        if module.stride[0] != module.stride[1]:
            raise UnsupportedModelError(f"{name}: non-square stride {tuple(module.stride)} is not supported")
        setattr(parent, child, _anchored_conv(module, name, energy))
        report.add(name, _describe(module), f"AnchoredConv2d (period {module.stride[0]}, circular padding)")
        return module.stride[0]
    if type(module) is nn.MaxPool2d:
        stride = module.stride if isinstance(module.stride, int) else module.stride[0]
        if stride == 1:
            raise UnsupportedModelError(
                f"{name}: stride-1 max pooling (an anti-aliased stem, aa_layer=...) is not supported"
            )
        try:
            setattr(parent, child, AnchoredMaxPool2d.from_pool(module, energy=energy))
        except ValueError as error:
            raise UnsupportedModelError(f"{name}: {error}") from error
        report.add(name, f"MaxPool2d {module.kernel_size} stride {stride}", f"AnchoredMaxPool2d (period {stride})")
        return stride
    if isinstance(module, nn.AvgPool2d | nn.MaxPool2d):
        raise UnsupportedModelError(
            f"{name}: {type(module).__name__} in the stem (anti-aliasing, aa_layer=...) is not supported"
        )
    return 1  # norms and activations act per position; the audit checks them


def _resnet_stages(model: nn.Module) -> list[str]:
    """The ``layer1`` to ``layer4`` that ``model`` holds (a ``features_only`` wrapper may stop early)."""
    return [stage for stage in _STAGES if isinstance(getattr(model, stage, None), nn.Sequential)]


def _check_resnet(model: nn.Module) -> None:
    blocks = [
        (f"{stage}.{index}", block)
        for stage in _resnet_stages(model)
        for index, block in enumerate(getattr(model, stage))
    ]
    for name, block in blocks:
        if type(block) not in (BasicBlock, Bottleneck):
            raise UnsupportedModelError(
                f"{name}: only timm's BasicBlock and Bottleneck are supported, got {type(block).__name__}"
            )
        if type(block.aa) is not nn.Identity:
            raise UnsupportedModelError(
                f"{name}: anti-aliasing layers (aa_layer={type(block.aa).__name__}) are not supported; they are "
                "a different, approximate fix for shifts; build the model without aa_layer"
            )
        if block.se is not None:
            raise UnsupportedModelError(
                f"{name}: attention layers (attn_layer={type(block.se).__name__}) are not supported"
            )
        if type(block.drop_block) is not nn.Identity:
            raise UnsupportedModelError(
                f"{name}: DropBlock (drop_block_rate > 0) is not supported; build the model with drop_block_rate=0"
            )


_STAGES = ("layer1", "layer2", "layer3", "layer4")


def convert_resnet(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ResNet shift-equivariant, in place. No parameter is added or renamed.

    The stem's strided convolution (7x7 stride 2, or the first 3x3 of a deep stem) becomes an
    :class:`~equivit.layers.AnchoredConv2d` with circular padding, the stem max pooling an
    :class:`~equivit.layers.AnchoredMaxPool2d`, and every strided residual block an
    :class:`~equivit.layers.AnchoredBasicBlock` or :class:`~equivit.layers.AnchoredBottleneck`,
    which anchors its input once for both its main path and its downsample shortcut. Every other
    padded convolution pads circularly. Deep stems (``resnet*c``, ``*d``, ``*s``...), average-pool
    shortcuts (``avg_down``), a convolution in place of the stem pooling and dilated stages
    (``output_stride`` 8 or 16) are handled. Anti-aliasing, attention (SE, ECA, ...) and DropBlock
    layers are refused. ``report.input_multiple`` is the product of the strides (32).

    Args:
        model: The model, changed in place: a ``ResNet``, or timm's ``features_only`` wrapper of one.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: For the variants above that are not supported.
    """
    _check_resnet(model)
    stride = _convert_sequence(model, "conv1", "", report, energy)
    stride *= _convert_sequence(model, "maxpool", "", report, energy)
    for stage in _resnet_stages(model):
        for index, block in enumerate(getattr(model, stage)):
            name = f"{stage}.{index}"
            if block.stride == 1:
                for path, module in block.named_modules():
                    if isinstance(module, nn.Conv2d):
                        _circular(module, f"{name}.{path}", report)
                continue
            anchored = AnchoredBasicBlock if isinstance(block, BasicBlock) else AnchoredBottleneck
            try:
                getattr(model, stage)[index] = anchored.from_timm(block, energy=energy)
            except ValueError as error:
                raise UnsupportedModelError(f"{name}: {error}") from error
            report.add(
                name,
                type(block).__name__,
                f"{anchored.__name__} (period {block.stride}, one anchor for the main path and the shortcut, "
                "circular padding)",
            )
            stride *= block.stride
    report.input_multiple = (stride, stride)


def convert_convnext(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ConvNeXt shift-equivariant, in place. No parameter is added or renamed.

    The patchify stem (4x4 stride 4) and each stage's downsampling convolution (2x2 stride 2,
    after a LayerNorm2d) become :class:`~equivit.layers.AnchoredConv2d`; an overlapping stem
    (two 3x3 stride-2 convolutions) is anchored convolution by convolution, with circular
    padding. The depthwise 7x7 convolutions of the blocks pad circularly. LayerNorms, MLPs,
    GRN (ConvNeXt V2) and the pooled head act per position or on the whole grid.
    ``report.input_multiple`` is the product of the strides (32). Dilated stages
    (``output_stride`` 8 or 16) and blocks with a projection shortcut are refused.

    Args:
        model: The model, changed in place: a ``ConvNeXt``, or timm's ``features_only`` wrapper of one.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: For the variants above that are not supported.
    """
    # The stem is ``stem`` in the model and ``stem_0``, ``stem_1``, ... in timm's flattened
    # ``features_only`` wrapper; the stages are found by type.
    stride = 1
    for child, _ in list(model.named_children()):
        if child == "stem" or child.startswith("stem_"):
            stride *= _convert_sequence(model, child, "", report, energy)
    stages = [(name, module) for name, module in model.named_modules() if isinstance(module, ConvNeXtStage)]
    for stage_name, stage in stages:
        prefix = f"{stage_name}."
        if isinstance(stage.downsample, nn.Sequential):
            conv = stage.downsample[-1]
            if isinstance(conv, nn.Conv2d) and tuple(conv.stride) == (1, 1) and max(conv.kernel_size) > 1:
                raise UnsupportedModelError(
                    f"{prefix}downsample: dilated stages (output_stride < 32) are not supported"
                )
            stride *= _convert_sequence(stage, "downsample", prefix, report, energy)
        for block_index, block in enumerate(stage.blocks):
            name = f"{prefix}blocks.{block_index}"
            if type(block.shortcut) is not nn.Identity:
                raise UnsupportedModelError(
                    f"{name}.shortcut: blocks with a projection shortcut ({type(block.shortcut).__name__}) are not "
                    "supported"
                )
            if tuple(block.conv_dw.stride) != (1, 1):
                raise UnsupportedModelError(f"{name}.conv_dw: strided depthwise convolutions are not supported")
            conv = _plain_conv(block.conv_dw, f"{name}.conv_dw")
            try:
                make_conv_circular(conv)
            except ValueError as error:
                raise UnsupportedModelError(f"{name}.conv_dw: {error}") from error
            report.add(f"{name}.conv_dw", f"{_describe(conv)}, zero padding", "same, circular padding")
    report.input_multiple = (stride, stride)
