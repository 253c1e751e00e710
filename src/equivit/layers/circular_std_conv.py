"""Weight-standardised convolutions (BiT, NFNet) with circular padding, anchored when strided."""

from __future__ import annotations

import torch
from timm.layers.std_conv import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from torch import nn

from equivit.anchor_core import anchor_padded
from equivit.energy import Energy
from equivit.layers.checks import check_map
from equivit.layers.declare import equivariant_layer
from equivit.layers.sharing import parent_method, retype

__all__ = [
    "CircularScaledStdConv2d",
    "CircularScaledStdConv2dSame",
    "CircularStdConv2d",
    "CircularStdConv2dSame",
    "circular_std_conv",
    "is_std_conv",
]


def _pads(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)``: the zero padding ``conv`` applies to a map that is a multiple of its stride.

    Static padding is symmetric; timm's dynamic "same" padding (``same_pad``) pads ``reach - stride``
    in all, the extra pixel at the end (TensorFlow's rule).
    """
    if getattr(conv, "same_pad", False):
        pads = []
        for k, s, d in zip(conv.kernel_size, conv.stride, conv.dilation, strict=True):
            total = max(d * (k - 1) + 1 - s, 0)
            pads += [total // 2, total - total // 2]
        return pads[0], pads[1], pads[2], pads[3]
    ph, pw = conv.padding  # type: ignore[misc]
    return int(ph), int(ph), int(pw), int(pw)


class _CircularStd(nn.Module):
    """Anchor (period = stride), pad circularly, then run timm's weight-standardised convolution unpadded.

    Attributes set per instance by :func:`circular_std_conv`: ``anchor_period`` (int, 1 for stride
    1), ``circular_pads`` (top, bottom, left, right), ``energy`` (str), ``block_name`` (str).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Roll ``x`` to its anchor (when strided), pad it circularly, and convolve.

        Args:
            x: Feature maps.

        Returns:
            The convolution's output, ``H / s x W / s``.

        Raises:
            ValueError: If ``x`` is not 4-D or its size is not a multiple of the stride.
        """
        top, bottom, left, right = self.circular_pads
        period = self.anchor_period
        if period > 1:
            check_map(x, period, self.block_name)
        # One gather: the anchor roll (period 1: none) with the larger padding of each axis, then a
        # view that drops the surplus on the other side (the uneven split of "same" padding).
        ph, pw = max(top, bottom), max(left, right)
        padded = anchor_padded(x, period, period, self.energy, False, (ph, pw))
        padded = padded[:, :, ph - top : padded.shape[2] - (ph - bottom), pw - left : padded.shape[3] - (pw - right)]
        return self._std_conv_forward(padded)

    def _std_conv_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stock forward of the convolution (each class below refers to its parent's function)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        """Timm's description, then the circular padding and the anchoring period."""
        return (
            f"{super().extra_repr()}, circular padding {tuple(self.circular_pads)}, period={self.anchor_period}, "  # type: ignore[misc]
            f"energy={self.energy}"
        )


@equivariant_layer(period="stride")
class CircularStdConv2d(_CircularStd, StdConv2d):
    """timm's ``StdConv2d`` (BiT) with circular padding, anchored with period = stride when strided."""

    _std_conv_forward = parent_method(StdConv2d.forward, "_std_conv_forward")


@equivariant_layer(period="stride")
class CircularStdConv2dSame(_CircularStd, StdConv2dSame):
    """timm's ``StdConv2dSame`` with its "same" split made circular, anchored with period = stride when strided."""

    _std_conv_forward = parent_method(StdConv2dSame.forward, "_std_conv_forward")


@equivariant_layer(period="stride")
class CircularScaledStdConv2d(_CircularStd, ScaledStdConv2d):
    """timm's ``ScaledStdConv2d`` (NFNet) with circular padding, anchored with period = stride when strided."""

    _std_conv_forward = parent_method(ScaledStdConv2d.forward, "_std_conv_forward")


@equivariant_layer(period="stride")
class CircularScaledStdConv2dSame(_CircularStd, ScaledStdConv2dSame):
    """timm's ``ScaledStdConv2dSame`` (NFNet-F) with its "same" split made circular, anchored when strided."""

    _std_conv_forward = parent_method(ScaledStdConv2dSame.forward, "_std_conv_forward")


_CIRCULAR: dict[type[nn.Module], type[nn.Module]] = {
    StdConv2d: CircularStdConv2d,
    StdConv2dSame: CircularStdConv2dSame,
    ScaledStdConv2d: CircularScaledStdConv2d,
    ScaledStdConv2dSame: CircularScaledStdConv2dSame,
}


def is_std_conv(module: nn.Module) -> bool:
    """Whether ``module`` is one of timm's weight-standardised convolutions (exactly; not a subclass)."""
    return type(module) in _CIRCULAR


def circular_std_conv(conv: nn.Conv2d, *, energy: Energy = "l1") -> nn.Conv2d:
    """A weight-standardised convolution of timm with circular padding, anchored when strided.

    BiT (``StdConv2d``) and NFNet (``ScaledStdConv2d`` and their TensorFlow "same" variants)
    standardise their weights in ``forward``, so they cannot become :class:`AnchoredConv2d`. The
    returned module is of a subclass of ``type(conv)`` holding the same parameters (state-dict keys
    unchanged) that rolls its input to the polyphase anchor (period = stride; none at stride 1),
    pads it circularly as ``conv`` padded with zeros (the uneven split of "same" padding kept), and
    runs timm's forward without padding. ``conv`` is left as it was.

    Args:
        conv: A ``StdConv2d``, ``StdConv2dSame``, ``ScaledStdConv2d`` or ``ScaledStdConv2dSame``.
        energy: Energy that picks the anchor.

    Returns:
        The circular convolution.

    Raises:
        TypeError: For another type.
        ValueError: For a non-square stride, or an output that would not be ``H/s x W/s``.

    Shape:
        - input: :math:`(B, C_{in}, H, W)`, ``H`` and ``W`` multiples of the stride
        - output: :math:`(B, C_{out}, H / s, W / s)`
    """
    if type(conv) not in _CIRCULAR:
        raise TypeError(f"expected one of timm's {', '.join(c.__name__ for c in _CIRCULAR)}, got {type(conv).__name__}")
    if energy not in ("l1", "l2"):
        raise ValueError(f"energy must be 'l1' or 'l2', got {energy!r}")
    stride_h, stride_w = conv.stride
    if stride_h != stride_w:
        raise ValueError(f"{type(conv).__name__}: non-square stride {tuple(conv.stride)} is not supported")
    pads = _pads(conv)
    for (k, s, d), before, after in zip(
        zip(conv.kernel_size, conv.stride, conv.dilation, strict=True), pads[::2], pads[1::2], strict=True
    ):
        if not -s <= before + after - d * (k - 1) - 1 <= -1:
            raise ValueError(
                f"{type(conv).__name__} with kernel {tuple(conv.kernel_size)}, stride {tuple(conv.stride)} and "
                f"padding {pads} does not map H x W to H/s x W/s"
            )
    new = retype(conv, _CIRCULAR[type(conv)])
    new.padding = (0, 0)
    if hasattr(new, "same_pad"):
        new.same_pad = False
    new.circular_pads = pads
    new.anchor_period = int(stride_h)
    new.energy = energy
    new.block_name = type(new).__name__
    return new  # type: ignore[return-value]
