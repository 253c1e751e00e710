"""Circular convolution without torch's padded copy for depthwise maps, and for any grid size."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CircularConv2d", "circular_conv2d", "make_circular"]


def _take(x: torch.Tensor, dim: int, start: int, stop: int) -> torch.Tensor:
    """``x`` at indices ``start .. stop - 1`` (modulo its size) along ``dim``, from slices (keeps the layout)."""
    size = x.shape[dim]
    parts = []
    while start < stop:
        first = start % size
        length = min(size - first, stop - start)
        parts.append(x.narrow(dim, first, length))
        start += length
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _pad_circular(x: torch.Tensor, ph: int, pw: int, layout: torch.memory_format) -> torch.Tensor:
    """``x`` padded circularly, in one pass when the padding fits the grid, in ``layout``."""
    height, width = x.shape[-2:]
    if ph > height or pw > width:
        return _take(_take(x, -2, -ph, height + ph), -1, -pw, width + pw).contiguous(memory_format=layout)
    shape = (*x.shape[:-2], height + 2 * ph, width + 2 * pw)
    padded = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)
    padded[..., ph : ph + height, pw : pw + width] = x
    padded[..., :ph, pw : pw + width] = x[..., height - ph :, :]
    padded[..., ph + height :, pw : pw + width] = x[..., :ph, :]
    padded[..., :, :pw] = padded[..., :, width : width + pw]
    padded[..., :, pw + width :] = padded[..., :, pw : 2 * pw]
    return padded


def circular_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    r"""``F.conv2d`` of ``x`` padded circularly by ``padding``; any grid size, the layout of ``x`` kept.

    torch's ``padding_mode="circular"`` copies the input into a padded tensor and loses a
    channels-last layout on the way, which costs several times a depthwise convolution. Here a
    depthwise convolution on a grid larger than 4 x its padding runs with zero padding, which is
    already right away from the border, and only the output rows and columns whose window crosses
    the border are recomputed, from thin strips of the input taken modulo the grid: no padded copy.
    Other convolutions (compute-bound, where a copy of the input is cheap next to the work) and
    small grids get a padded copy in the input's layout, wrapping as often as needed, so grids
    smaller than the padding work too.

    Args:
        x: Input.
        weight: Convolution weight.
        bias: Convolution bias, or None.
        stride: ``(sh, sw)``.
        padding: ``(ph, pw)``, circular.
        dilation: ``(dh, dw)``.
        groups: Groups.

    Returns:
        The circular convolution, in the layout ``F.conv2d`` gives.

    Shape:
        - x: :math:`(B, C_{in}, H, W)`
        - output: :math:`(B, C_{out}, H_{out}, W_{out})` as for ``F.conv2d`` with the same padding
    """
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if ph == 0 and pw == 0:
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)
    height, width = x.shape[-2:]
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    depthwise = groups > 1 and groups == x.shape[1]
    if not depthwise or height <= 4 * ph or width <= 4 * pw:
        # A dense convolution costs far more than copying its input once, and recomputing its
        # border would add a share of its work that grows as the grid shrinks: pad by copying
        # (wrapping as often as a small grid needs), keeping the layout.
        return F.conv2d(_pad_circular(x, ph, pw, layout), weight, bias, stride, 0, dilation, groups)
    out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    out_h, out_w = out.shape[-2:]
    reach_h, reach_w = dh * (weight.shape[-2] - 1), dw * (weight.shape[-1] - 1)
    # Output rows [top, bottom) and columns [left, right) never see the padding.
    top, left = min(out_h, math.ceil(ph / sh)), min(out_w, math.ceil(pw / sw))
    bottom = max(top, min(out_h, (height - 1 + ph - reach_h) // sh + 1))
    right = max(left, min(out_w, (width - 1 + pw - reach_w) // sw + 1))

    def rows_strip(first: int, last: int) -> torch.Tensor:  # output rows [first, last), every column
        strip = _take(x, -2, first * sh - ph, (last - 1) * sh - ph + reach_h + 1)
        strip = _take(strip, -1, -pw, width + pw).contiguous(memory_format=layout)
        return F.conv2d(strip, weight, bias, stride, 0, dilation, groups)

    def cols_strip(first: int, last: int) -> torch.Tensor:  # output columns [first, last), every row
        strip = _take(x, -1, first * sw - pw, (last - 1) * sw - pw + reach_w + 1)
        strip = _take(strip, -2, -ph, height + ph).contiguous(memory_format=layout)
        return F.conv2d(strip, weight, bias, stride, 0, dilation, groups)

    if (sh, sw) == (1, 1) and (out_h, out_w) == (height, width):
        # Same-size output: the bottom rows and then the top ones are one wrapped run of rows
        # (likewise the columns), so two strip convolutions do instead of four.
        if top > 0 or bottom < out_h:
            rows = rows_strip(bottom, out_h + top)
            out[..., bottom:, :] = rows[..., : out_h - bottom, :]
            out[..., :top, :] = rows[..., out_h - bottom :, :]
        if left > 0 or right < out_w:
            cols = cols_strip(right, out_w + left)
            out[..., :, right:] = cols[..., : out_w - right]
            out[..., :, :left] = cols[..., out_w - right :]
        return out
    if top > 0:
        out[..., :top, :] = rows_strip(0, top)
    if bottom < out_h:
        out[..., bottom:, :] = rows_strip(bottom, out_h)
    if left > 0:
        out[..., :, :left] = cols_strip(0, left)
    if right < out_w:
        out[..., :, right:] = cols_strip(right, out_w)
    return out


class CircularConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose ``padding_mode="circular"`` runs as :func:`circular_conv2d`.

    Same parameters and results as ``nn.Conv2d`` with circular padding, but without copying the
    input into a padded tensor, keeping a channels-last layout, and also for grids smaller than
    the padding (ConvNeXt's 7 x 7 depthwise convolutions on the 2 x 3 last grid of a 64 x 96
    image). With another padding mode it is ``nn.Conv2d``. :func:`make_circular` turns an
    existing ``nn.Conv2d`` into one in place.

    Shape:
        - input: :math:`(B, C_{in}, H, W)`
        - output: :math:`(B, C_{out}, H_{out}, W_{out})` as for ``nn.Conv2d``
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "circular":
            return super()._conv_forward(input, weight, bias)
        return circular_conv2d(
            input,
            weight,
            bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,  # type: ignore[arg-type]
        )


def make_circular(conv: nn.Conv2d) -> nn.Conv2d:
    """Switch ``conv`` to circular padding computed by :func:`circular_conv2d`, in place.

    A plain ``nn.Conv2d`` becomes a :class:`CircularConv2d` (same object, same parameters and
    state-dict keys); a subclass that already computes its circular padding this way
    (``CircularConv2d``, ``AnchoredConv2d``) only gets ``padding_mode="circular"``.

    Args:
        conv: The convolution; explicit integer padding.

    Returns:
        ``conv`` itself.

    Raises:
        TypeError: If ``conv`` is not an ``nn.Conv2d``, or a subclass of its own.
        ValueError: If its padding is a string (``"same"``, ``"valid"``).
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
    if isinstance(conv.padding, str):
        raise ValueError(f"expected an explicit padding, got padding={conv.padding!r}")
    if type(conv) is nn.Conv2d:
        conv.__class__ = CircularConv2d
    elif not isinstance(conv, CircularConv2d):
        raise TypeError(f"{type(conv).__name__} is a subclass of nn.Conv2d that equivit cannot make circular")
    conv.padding_mode = "circular"
    return conv
