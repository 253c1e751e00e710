"""Conversion steps shared by the convolutional families: anchored strided layers, circular padding."""

from __future__ import annotations

import math
from collections.abc import Mapping

from timm.layers import BlurPool2d
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.mixed_conv2d import MixedConv2d
from timm.layers.pool2d_same import MaxPool2dSame
from torch import nn

from equivit.energy import Energy
from equivit.layers import (
    AnchoredConv2d,
    AnchoredDownsample,
    AnchoredMaxPool2d,
    AnchoredMixedConv2d,
    make_conv_circular,
)
from equivit.layers.anchored_pool import _pair, keeps_grid
from equivit.layers.anchored_residual import anchored_entry, anchored_residual
from equivit.layers.circular_std_conv import circular_std_conv, is_std_conv
from equivit.layers.declare import declared_layers
from equivit.report import ConversionReport, UnsupportedModelError, entry_path

__all__ = [
    "anchor_network_input",
    "anchor_residual_blocks",
    "anchored_conv",
    "convert_convolutions",
    "convert_network",
    "convert_residual_cnn",
    "convert_sequence",
    "describe_conv",
    "pad_circularly",
    "plain_conv",
    "total_stride",
]


def describe_conv(conv: nn.Conv2d) -> str:
    """A convolution in words, for the conversion report: ``"Conv2d 3x3 stride 2, padding (1, 1)"``."""
    k, s, p = tuple(conv.kernel_size), tuple(conv.stride), conv.padding
    return f"Conv2d {k[0]}x{k[1]} stride {s[0]}, padding {p if isinstance(p, str) else tuple(p)}"


def _is_same_conv(conv: nn.Module) -> bool:
    """Whether ``conv`` is timm's ``Conv2dSame`` (TensorFlow's "same" padding, computed per input)."""
    return type(conv) is Conv2dSame


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
    if _is_same_conv(conv):
        return AnchoredConv2d.from_same_conv(conv, energy=energy)  # type: ignore[arg-type]
    conv = plain_conv(conv, name)
    if not keeps_grid(conv.kernel_size, conv.stride, conv.padding, conv.dilation):  # type: ignore[arg-type]
        raise UnsupportedModelError(
            f"{name}: {describe_conv(conv)} does not map H x W to H/{conv.stride[0]} x W/{conv.stride[1]}, so its "
            "output cannot be a circular shift; it is not supported"
        )
    return AnchoredConv2d.from_conv(conv, energy=energy, padding_mode="circular")


def pad_circularly(conv: nn.Module, name: str, report: ConversionReport) -> None:
    """Stride-1 convolution: circular padding in place (recorded only when it pads).

    A stride-1 ``Conv2dSame`` with an odd reach pads as much on each side: it becomes a
    :class:`~equivit.layers.CircularConv2d` with that padding (the same object and parameters).
    """
    if _is_same_conv(conv):
        reach = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        if any(r % 2 for r in reach):
            raise UnsupportedModelError(
                f"{name}: a stride-1 'same' convolution with an even kernel pads unevenly; it is not supported"
            )
        conv.__class__ = nn.Conv2d
        conv.padding = (reach[0] // 2, reach[1] // 2)
        report.add(name, f"Conv2dSame {tuple(conv.kernel_size)}, dynamic zero padding", "same, circular padding")
        make_conv_circular(conv)  # type: ignore[arg-type]
        return
    if type(conv) is nn.Conv2d and conv.padding == "same":  # torch's own "same": even split for odd reaches
        reach = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        if any(r % 2 for r in reach):
            raise UnsupportedModelError(
                f"{name}: padding='same' with an even kernel pads unevenly; it is not supported"
            )
        conv.padding = (reach[0] // 2, reach[1] // 2)
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
    if is_std_conv(module):  # weight-standardised (BiT, NFNet): its own circular subclass
        try:
            setattr(parent, child, circular_std_conv(module, energy=energy))
        except ValueError as error:
            raise UnsupportedModelError(f"{name}: {error}") from error
        stride = int(module.stride[0])
        after = f"Circular{type(module).__name__}" + (f" (period {stride})" if stride > 1 else "")
        report.add(name, f"{type(module).__name__} {tuple(module.kernel_size)} stride {stride}", after)
        return stride
    if isinstance(module, nn.Conv2d):
        if tuple(module.stride) == (1, 1):
            pad_circularly(module, name, report)
            return 1
        if module.stride[0] != module.stride[1]:
            raise UnsupportedModelError(f"{name}: non-square stride {tuple(module.stride)} is not supported")
        anchored = anchored_conv(module, name, energy)
        setattr(parent, child, anchored)
        before = (
            f"Conv2dSame {tuple(module.kernel_size)} stride {module.stride[0]}"
            if _is_same_conv(module)
            else (describe_conv(module))
        )
        report.add(name, before, f"AnchoredConv2d (period {module.stride[0]}, circular padding)")
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
    if type(module) is MaxPool2dSame:
        setattr(parent, child, anchored_same_max_pool(module, name, energy))
        stride = _pair(module.stride)[0]
        report.add(name, f"MaxPool2dSame {module.kernel_size} stride {stride}", f"AnchoredMaxPool2d (period {stride})")
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


def anchored_same_max_pool(pool: MaxPool2dSame, name: str, energy: Energy) -> AnchoredMaxPool2d:
    """Timm's TensorFlow-"same" max pooling anchored, its uneven padding split kept, made circular.

    TensorFlow pads ``(k - 1) d + 1 - s`` in all on a map that the stride divides, the odd one at
    the end (3x3, stride 2: nothing before, one after). :class:`~equivit.layers.AnchoredMaxPool2d`
    pads ``p`` before and ``p + t`` after with ``ceil_mode``'s trailing ``t``, so ``p`` = half the
    total, rounded down, and ``ceil_mode=True`` give the same split.

    Args:
        pool: The pooling.
        name: Its path, for the messages.
        energy: Energy that picks the anchor.

    Returns:
        The anchored pooling.

    Raises:
        UnsupportedModelError: If the stride is not square or the window is shorter than the stride.
    """
    kernel, stride, dilation = _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.dilation)
    totals = [d * (k - 1) + 1 - s for k, s, d in zip(kernel, stride, dilation, strict=True)]
    if stride[0] != stride[1] or min(totals) < 0:
        raise UnsupportedModelError(f"{name}: MaxPool2dSame with kernel {kernel}, stride {stride} is not supported")
    try:
        return AnchoredMaxPool2d(kernel, stride, (totals[0] // 2, totals[1] // 2), dilation, True, energy=energy)
    except ValueError as error:
        raise UnsupportedModelError(f"{name}: {error}") from error


def _is_strided(module: nn.Module) -> bool:
    """Whether a convolution or pooling has a stride other than 1 on some axis."""
    stride = getattr(module, "stride", 1)
    return any(s != 1 for s in ((stride, stride) if isinstance(stride, int) else tuple(stride)))


def convert_convolutions(model: nn.Module, report: ConversionReport, energy: Energy) -> int:
    """The generic CNN policy: anchor every strided convolution and pooling alone, pad every other circularly.

    Valid for networks in which no residual shortcut spans a strided operator (EfficientNet,
    MobileNet V2/V3/V4, MNASNet, LCNet...: their blocks skip only at stride 1). Each strided
    ``nn.Conv2d`` becomes an :class:`~equivit.layers.AnchoredConv2d` (period = stride, circular
    padding); each strided ``nn.MaxPool2d`` an :class:`~equivit.layers.AnchoredMaxPool2d`; each
    strided blur or average pooling an :class:`~equivit.layers.AnchoredDownsample`; every stride-1
    convolution that pads pads circularly. Anchored layers (:func:`~equivit.layers.declare.equivariant_layer`
    with a period) are left alone with what they hold. What is left is for the audit to judge.

    Args:
        model: The model, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Returns:
        The product of the strides met (one axis; strides are square), for ``report.input_multiple``
        of a chain-like network.

    Raises:
        UnsupportedModelError: For a convolution or pooling that cannot be made equivariant,
            naming it.
    """
    stride = 1
    skipped: list[str] = []
    anchored = tuple(declaration.layer for declaration in declared_layers() if declaration.period)
    for name, module in list(model.named_modules()):
        if any(name.startswith(root + ".") for root in skipped):
            continue
        if isinstance(module, anchored):  # already anchored, with what it holds
            skipped.append(name)
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(module, MixedConv2d) and not isinstance(module, AnchoredMixedConv2d):
            skipped.append(name)  # its groups are converted with it
            if all(tuple(conv.stride) == (1, 1) for conv in module.values()):
                for key, conv in module.items():
                    pad_circularly(conv, f"{name}.{key}", report)
                continue
            if any(_is_same_conv(conv) for conv in module.values()):
                raise UnsupportedModelError(
                    f"{name}: a strided MixedConv2d with 'same' padding (Conv2dSame groups) is not supported"
                )
            try:
                anchored_mixed = AnchoredMixedConv2d.from_mixed(module, energy=energy)
            except ValueError as error:
                raise UnsupportedModelError(f"{name}: {error}") from error
            setattr(parent, child, anchored_mixed)
            report.add(name, "MixedConv2d", f"AnchoredMixedConv2d (period {anchored_mixed.stride}, one anchor)")
            stride *= anchored_mixed.stride
        elif (
            isinstance(module, nn.Conv2d)  # strided: anchored; stride 1: circular padding
            or type(module) is nn.MaxPool2d  # strided: anchored; stride 1: circular padding
            or (isinstance(module, nn.MaxPool2d | nn.AvgPool2d | BlurPool2d) and _is_strided(module))
            or (type(module) is nn.AvgPool2d and module.padding not in (0, (0, 0)))  # circular padding
        ):
            stride *= convert_sequence(parent, child, f"{parent_name}." if parent_name else "", report, energy)
    return stride


def _strides_inside(module: nn.Module) -> set[tuple[int, int]]:
    """The strides of the strided convolutions and poolings in ``module``."""
    found = set()
    for part in module.modules():
        if isinstance(part, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d | BlurPool2d) and _is_strided(part):
            stride = part.stride
            found.add((stride, stride) if isinstance(stride, int) else (int(stride[0]), int(stride[-1])))
    return found


def anchor_residual_blocks(
    model: nn.Module, report: ConversionReport, energy: Energy, blocks: Mapping[type[nn.Module], tuple[str, ...]]
) -> int:
    """Give every strided residual block of the listed types one anchor for its main path and shortcut.

    A block type maps to the names of its children that hold strided operators in parallel paths
    (``{Bottleneck: ("conv2", "downsample")}``); each block of such a type that downsamples becomes
    :func:`~equivit.layers.anchored_residual` of it. Blocks that do not downsample are left for
    :func:`convert_convolutions`.

    Args:
        model: The model, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.
        blocks: Block type -> the children its anchor covers.

    Returns:
        The product of the anchored blocks' strides (one axis).

    Raises:
        UnsupportedModelError: For a block with unequal or non-square strides, or one whose strided
            operators sit outside the listed children, naming it.
    """
    stride = 1
    replaced: list[str] = []
    for name, module in list(model.named_modules()):
        if type(module) not in blocks or any(name.startswith(root + ".") for root in replaced):
            continue
        strides = _strides_inside(module)
        if not strides:
            continue
        (stride_h, stride_w) = next(iter(strides))
        if len(strides) != 1 or stride_h != stride_w:
            raise UnsupportedModelError(f"{name}: a block with strides {sorted(strides)} cannot share one anchor")
        period = stride_h
        try:
            anchored = anchored_residual(module, period, blocks[type(module)], energy=energy)
        except ValueError as error:
            raise UnsupportedModelError(f"{name}: {error}") from error
        model.set_submodule(name, anchored)
        replaced.append(name)
        report.add(
            name,
            type(module).__name__,
            f"{type(anchored).__name__} (period {period}, one anchor for {', '.join(blocks[type(module)])}, "
            "circular padding)",
        )
        stride *= period
    return stride


def convert_residual_cnn(
    model: nn.Module, report: ConversionReport, energy: Energy, *, blocks: Mapping[type[nn.Module], tuple[str, ...]]
) -> None:
    """Convert a residual CNN: its strided blocks of the listed types share one anchor, the rest by the generic policy.

    :func:`anchor_residual_blocks` with ``blocks``, then :func:`convert_convolutions` for the stem,
    the head and everything else; ``report.input_multiple`` is the product of the strides. A family
    file uses it as its converter through ``functools.partial(convert_residual_cnn, blocks=...)``.

    Args:
        model: The model, changed in place (or timm's ``features_only`` wrapper of one).
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.
        blocks: Block type -> the children its anchor covers (``{Bottleneck: ("conv2", "downsample")}``).

    Raises:
        UnsupportedModelError: For a part that cannot be converted, naming it.
    """
    stride = anchor_residual_blocks(model, report, energy, blocks)
    stride *= convert_convolutions(model, report, energy)
    report.input_multiple = (stride, stride)


def total_stride(model: nn.Module) -> int:
    """The least common multiple of the reductions in timm's ``feature_info`` of ``model`` (its total stride).

    Raises:
        UnsupportedModelError: If ``model`` has no ``feature_info`` with reductions.
    """
    info = getattr(model, "feature_info", None)
    entries = getattr(info, "info", info)  # a features_only wrapper's FeatureInfo, or the model's list
    reductions = [
        int(entry["reduction"]) for entry in entries or () if isinstance(entry, dict) and "reduction" in entry
    ]
    if not reductions:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no feature_info with reductions to take its stride from"
        )
    return math.lcm(*reductions)


def anchor_network_input(model: nn.Module, report: ConversionReport, energy: Energy, entry: str, period: int) -> None:
    """Anchor the network input once, in its entry module (:func:`~equivit.layers.anchored_entry`).

    Args:
        model: The model, changed in place (or timm's ``features_only`` wrapper of one).
        report: Where the change is recorded.
        energy: Energy that picks the anchor.
        entry: Path of the entry module in the model (the family's ``entry``).
        period: The anchoring period, the network's total stride.
    """
    path = entry_path(model, entry)
    stem = model.get_submodule(path)
    model.set_submodule(path, anchored_entry(stem, period, energy=energy))
    report.add(path, type(stem).__name__, f"input anchored (period {period}), then {type(stem).__name__}")
    report.input_period = period


def convert_network(
    model: nn.Module, report: ConversionReport, energy: Energy, *, entry: str, period_factor: int = 1
) -> None:
    """Convert a CNN whose branches meet at different resolutions: one anchor at the input, circular padding after.

    :func:`convert_convolutions` anchors every strided convolution and pooling and pads every
    other convolution circularly; then the entry module anchors the network input with period =
    the total stride (:func:`anchor_network_input`), which keeps parallel paths aligned wherever
    they meet (see :func:`~equivit.layers.anchored_entry`). ``report.input_multiple`` is that
    period. A family file uses it through ``functools.partial(convert_network, entry="stem")``.

    Args:
        model: The model, changed in place (or timm's ``features_only`` wrapper of one).
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.
        entry: Path of the module that receives the images.
        period_factor: Multiplies the period, for a network that pools in its forward code beyond
            its last stage (GhostNet V2's attention pools by two at stride 32: period 64).

    Raises:
        UnsupportedModelError: For a part that cannot be converted, naming it.
    """
    period = total_stride(model) * period_factor
    convert_convolutions(model, report, energy)
    anchor_network_input(model, report, energy, entry, period)
    report.input_multiple = (period, period)
