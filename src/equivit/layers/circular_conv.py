"""Circular convolution without torch's padded copy for depthwise maps, and for any grid size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from equivit.device_paths import takes_host_paths
from equivit.layers.declare import equivariant_layer
from equivit.layers.sharing import parent_method
from equivit.tables import cached_table

__all__ = ["CircularConv2d", "circular_conv2d", "make_circular"]


def _take(x: torch.Tensor, dim: int, start: int, stop: int) -> torch.Tensor:
    """``x`` at indices ``start .. stop - 1`` (modulo its size) along ``dim``, from slices (keeps the layout)."""
    size = x.shape[dim]
    parts: list[torch.Tensor] = []
    while start < stop:
        first = start % size
        length = min(size - first, stop - start)
        parts.append(x.narrow(dim, first, length))
        start += length
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _pad_circular(x: torch.Tensor, ph: int, pw: int, channels_last: bool) -> torch.Tensor:
    """``x`` padded circularly, in one pass when the padding fits the grid, channels-last or contiguous."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    height, width = x.shape[-2], x.shape[-1]
    if ph > height or pw > width:
        return _take(_take(x, -2, -ph, height + ph), -1, -pw, width + pw).contiguous(memory_format=layout)
    shape = list(x.shape[:-2]) + [height + 2 * ph, width + 2 * pw]  # noqa: RUF005 (TorchScript: no unpacking)
    padded = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)
    padded[..., ph : ph + height, pw : pw + width] = x
    padded[..., :ph, pw : pw + width] = x[..., height - ph :, :]
    padded[..., ph + height :, pw : pw + width] = x[..., :ph, :]
    padded[..., :, :pw] = padded[..., :, width : width + pw]
    padded[..., :, pw + width :] = padded[..., :, pw : 2 * pw]
    return padded


def _padded_positions(height: int, width: int, ph: int, pw: int, device: torch.device) -> torch.Tensor:
    """Flat source position of every position of the circularly padded grid.

    Shape:
        - output: :math:`((H + 2 p_h)(W + 2 p_w),)`, int64
    """
    rows = torch.remainder(torch.arange(-ph, height + ph, device=device), height)
    cols = torch.remainder(torch.arange(-pw, width + pw, device=device), width)
    return (rows[:, None] * width + cols[None, :]).flatten()


def _pad_by_table(x: torch.Tensor, ph: int, pw: int, channels_last: bool) -> torch.Tensor:
    """``x`` padded circularly by one ``index_select`` with a cached table (one kernel on an accelerator).

    A channels-last map moves whole tokens and stays channels-last.

    Shape:
        - x: :math:`(B, C, H, W)`
        - output: :math:`(B, C, H + 2 p_h, W + 2 p_w)`
    """
    batch, channels, height, width = x.shape
    table = cached_table(
        ("circular_pad", height, width, ph, pw), x.device, lambda: _padded_positions(height, width, ph, pw, x.device)
    )
    size = (height + 2 * ph, width + 2 * pw)
    if channels_last:
        tokens = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        return tokens.index_select(1, table).view(batch, size[0], size[1], channels).permute(0, 3, 1, 2)
    return x.reshape(batch, channels, height * width).index_select(2, table).view(batch, channels, size[0], size[1])


def _pads_by_table(x: torch.Tensor) -> bool:
    """Whether the accelerator paths apply: one table lookup instead of copies (eager, not traced)."""
    if x.dim() == 4 and not takes_host_paths(x):
        return not torch.compiler.is_compiling() and not torch.jit.is_tracing()
    return False


def _strip_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    channels_last: bool,
    dim: int,
    first: int,
    last: int,
) -> torch.Tensor:
    """Output rows (``dim=-2``) or columns (``dim=-1``) ``[first, last)`` of :func:`circular_conv2d`.

    All of the other axis. Convolves a thin strip of the input taken modulo the grid, padded circularly
    along the other axis.
    """
    layout = torch.channels_last if channels_last else torch.contiguous_format
    other = -1 if dim == -2 else -2
    axis = 0 if dim == -2 else 1
    step, pad, reach = stride[axis], padding[axis], dilation[axis] * (weight.shape[dim] - 1)
    strip = _take(x, dim, first * step - pad, (last - 1) * step - pad + reach + 1)
    strip = _take(strip, other, -padding[1 - axis], x.shape[other] + padding[1 - axis]).contiguous(memory_format=layout)
    return F.conv2d(strip, weight, bias, stride, 0, dilation, groups)


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
    depthwise convolution on a grid of at least 32 x its padding along each axis runs with zero
    padding, which is already right away from the border, and only the output rows and columns
    whose window crosses the border are recomputed, from thin strips of the input taken modulo
    the grid: no padded copy. Other convolutions (compute-bound, where a copy of the input is
    cheap next to the work) and smaller grids (where the strips are a large share of the work
    and the two extra calls cost more than the copy) get one padded copy in the input's layout,
    wrapping as often as needed, so grids smaller than the padding work too. The threshold comes
    from ``benchmarks/bench_circular_conv.py`` (``docs/benchmarks.md``).

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
    sh, sw, ph, pw = stride[0], stride[1], padding[0], padding[1]
    if ph == 0 and pw == 0:
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)
    height, width = x.shape[-2], x.shape[-1]
    channels_last = x.is_contiguous(memory_format=torch.channels_last)  # the padded copies keep the layout
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips only this exact condition)
        if _pads_by_table(x):
            # Accelerators: a padded copy by one table lookup and one convolution (two launches)
            # cost less than the border strips' small launches; the copy is cheap in device memory.
            return F.conv2d(_pad_by_table(x, ph, pw, channels_last), weight, bias, stride, 0, dilation, groups)
    depthwise = groups > 1 and groups == x.shape[1]
    if not depthwise or height < 32 * ph or width < 32 * pw:
        # A dense convolution costs far more than copying its input once, and recomputing its
        # border would add a share of its work that grows as the grid shrinks: pad by copying
        # (wrapping as often as a small grid needs), keeping the layout.
        return F.conv2d(_pad_circular(x, ph, pw, channels_last), weight, bias, stride, 0, dilation, groups)
    out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    out_h, out_w = out.shape[-2], out.shape[-1]
    reach_h, reach_w = dilation[0] * (weight.shape[-2] - 1), dilation[1] * (weight.shape[-1] - 1)
    # Output rows [top, bottom) and columns [left, right) never see the padding.
    top, left = min(out_h, (ph + sh - 1) // sh), min(out_w, (pw + sw - 1) // sw)
    bottom = max(top, min(out_h, (height - 1 + ph - reach_h) // sh + 1))
    right = max(left, min(out_w, (width - 1 + pw - reach_w) // sw + 1))
    if sh == 1 and sw == 1 and out_h == height and out_w == width:
        # Same-size output: the bottom rows and then the top ones are one wrapped run of rows
        # (likewise the columns), so two strip convolutions do instead of four.
        if top > 0 or bottom < out_h:
            rows = _strip_conv(
                x, weight, bias, stride, padding, dilation, groups, channels_last, -2, bottom, out_h + top
            )
            out[..., bottom:, :] = rows[..., : out_h - bottom, :]
            out[..., :top, :] = rows[..., out_h - bottom :, :]
        if left > 0 or right < out_w:
            cols = _strip_conv(
                x, weight, bias, stride, padding, dilation, groups, channels_last, -1, right, out_w + left
            )
            out[..., :, right:] = cols[..., : out_w - right]
            out[..., :, :left] = cols[..., out_w - right :]
        return out
    if top > 0:
        out[..., :top, :] = _strip_conv(x, weight, bias, stride, padding, dilation, groups, channels_last, -2, 0, top)
    if bottom < out_h:
        out[..., bottom:, :] = _strip_conv(
            x, weight, bias, stride, padding, dilation, groups, channels_last, -2, bottom, out_h
        )
    if left > 0:
        out[..., :, :left] = _strip_conv(x, weight, bias, stride, padding, dilation, groups, channels_last, -1, 0, left)
    if right < out_w:
        out[..., :, right:] = _strip_conv(
            x, weight, bias, stride, padding, dilation, groups, channels_last, -1, right, out_w
        )
    return out


@equivariant_layer(period="")
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

    _conv2d_forward = parent_method(nn.Conv2d._conv_forward, "_conv2d_forward")

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "circular":
            return self._conv2d_forward(input, weight, bias)
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
