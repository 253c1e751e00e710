"""Conversion steps shared by the convolutional families: anchored strided layers, circular padding."""

from __future__ import annotations

from timm.layers import BlurPool2d
from torch import nn

from equivit.layers import AnchoredConv2d, AnchoredDownsample, AnchoredMaxPool2d, make_conv_circular
from equivit.layers.anchored_pool import keeps_grid
from equivit.polyphase import Energy
from equivit.report import ConversionReport, UnsupportedModelError

__all__ = ["anchored_conv", "convert_sequence", "describe_conv", "pad_circularly", "plain_conv"]


def describe_conv(conv: nn.Conv2d) -> str:
    """A convolution in words, for the conversion report: ``"Conv2d 3x3 stride 2, padding (1, 1)"``."""
    k, s, p = tuple(conv.kernel_size), tuple(conv.stride), conv.padding
    return f"Conv2d {k[0]}x{k[1]} stride {s[0]}, padding {p if isinstance(p, str) else tuple(p)}"


def plain_conv(conv: nn.Module, name: str) -> nn.Conv2d:
    """``conv`` if it is a plain ``nn.Conv2d`` with an explicit padding, else an error naming it.

    Raises:
        UnsupportedModelError: For dynamic "same" padding and convolution subclasses.
    """
    if type(conv) is not nn.Conv2d or isinstance(conv.padding, str):
        raise UnsupportedModelError(
            f"{name}: only plain nn.Conv2d with an explicit padding can be converted, got {type(conv).__name__} "
            f"with padding {getattr(conv, 'padding', None)!r} (dynamic 'same' padding or weight-standardised "
            "convolutions are not supported)"
        )
    return conv


def anchored_conv(conv: nn.Module, name: str, energy: Energy) -> AnchoredConv2d:
    """A circular ``AnchoredConv2d`` that holds ``conv``'s parameters (period = stride)."""
    conv = plain_conv(conv, name)
    if not keeps_grid(conv.kernel_size, conv.stride, conv.padding, conv.dilation):  # type: ignore[arg-type]
        raise UnsupportedModelError(
            f"{name}: {describe_conv(conv)} does not map H x W to H/{conv.stride[0]} x W/{conv.stride[1]}, so its "
            "output cannot be a circular shift; it is not supported"
        )
    return AnchoredConv2d.from_conv(conv, energy=energy, padding_mode="circular")


def pad_circularly(conv: nn.Module, name: str, report: ConversionReport) -> None:
    """Stride-1 convolution: circular padding in place (recorded only when it pads)."""
    conv = plain_conv(conv, name)
    if all(p == 0 for p in conv.padding):  # type: ignore[union-attr]
        return
    try:
        make_conv_circular(conv)
    except ValueError as error:
        raise UnsupportedModelError(f"{name}: {error}") from error
    report.add(name, f"{describe_conv(conv)}, zero padding", "same, circular padding")


def convert_sequence(parent: nn.Module, child: str, prefix: str, report: ConversionReport, energy: Energy) -> int:
    """Anchor every strided conv and pool of ``parent.child`` (a module or a ``Sequential``), one after another.

    Returns:
        The product of the strides (one axis; the strides are square).
    """
    module = getattr(parent, child)
    name = f"{prefix}{child}"
    if isinstance(module, nn.Sequential):
        stride = 1
        for index in range(len(module)):
            stride *= convert_sequence(module, str(index), f"{name}.", report, energy)
        return stride
    if isinstance(module, nn.Conv2d):
        if tuple(module.stride) == (1, 1):
            pad_circularly(module, name, report)
            return 1
        if module.stride[0] != module.stride[1]:
            raise UnsupportedModelError(f"{name}: non-square stride {tuple(module.stride)} is not supported")
        setattr(parent, child, anchored_conv(module, name, energy))
        report.add(name, describe_conv(module), f"AnchoredConv2d (period {module.stride[0]}, circular padding)")
        return module.stride[0]
    if type(module) is nn.MaxPool2d:
        # Stride 1 (the max pooling before an anti-aliased stem's blur): period 1, circular padding.
        stride = module.stride if isinstance(module.stride, int) else module.stride[0]
        try:
            setattr(parent, child, AnchoredMaxPool2d.from_pool(module, energy=energy))
        except ValueError as error:
            raise UnsupportedModelError(f"{name}: {error}") from error
        after = f"AnchoredMaxPool2d (period {stride})" if stride > 1 else "AnchoredMaxPool2d (circular padding)"
        report.add(name, f"MaxPool2d {module.kernel_size} stride {stride}", after)
        return stride
    if isinstance(module, BlurPool2d) or type(module) is nn.AvgPool2d:
        try:
            anchored = AnchoredDownsample(module, energy=energy)
        except (TypeError, ValueError) as error:
            raise UnsupportedModelError(f"{name}: {error}") from error
        setattr(parent, child, anchored)
        report.add(name, type(module).__name__, f"AnchoredDownsample (period {anchored.stride}, circular padding)")
        return anchored.stride
    if isinstance(module, nn.AvgPool2d | nn.MaxPool2d):
        raise UnsupportedModelError(f"{name}: {type(module).__name__} subclasses are not supported")
    return 1  # norms and activations act per position; the audit checks them
