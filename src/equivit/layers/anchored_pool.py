"""A strided max pooling that anchors its input first and pads circularly (the ResNet stem pool)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from equivit.anchor_core import anchor_padded
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.polyphase import normalize_stride
from equivit.report import shape_text

__all__ = ["AnchoredMaxPool2d", "keeps_grid", "separable_max_pool2d"]


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[-1]))


def keeps_grid(
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
    dilation: int | tuple[int, int] = 1,
) -> bool:
    """Whether a strided window operator maps an ``H x W`` input to exactly ``H/s x W/s``.

    That holds for every ``H`` and ``W`` that are multiples of the stride exactly when
    ``-s <= 2 p - d (k - 1) - 1 <= -1`` on each axis (3x3 stride 2 padding 1, 7x7 stride 2
    padding 3, 1x1 or 2x2 stride 2 without padding, ...). With circular padding, such an operator
    on an input rolled by ``s * k`` gives its output rolled by ``k``: the output grid wraps
    around exactly like the input.

    Args:
        kernel_size: ``k``, an int or a pair.
        stride: ``s``, an int or a pair.
        padding: ``p`` on each side, an int or a pair.
        dilation: ``d``, an int or a pair.

    Returns:
        True if the output is exactly the input size divided by the stride.
    """
    return all(
        -s <= 2 * p - d * (k - 1) - 1 <= -1
        for k, s, p, d in zip(_pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation), strict=True)
    )


def _pooled_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """The output length of torch's max pooling on one axis (its rule for ``ceil_mode`` included)."""
    reach = dilation * (kernel - 1) + 1
    if not ceil_mode:
        return (size + 2 * padding - reach) // stride + 1
    out = -(-(size + 2 * padding - reach) // stride) + 1
    return out - 1 if (out - 1) * stride >= size + padding else out  # a window may not start in the padding


def separable_max_pool2d(
    x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int] = (1, 1)
) -> torch.Tensor:
    r"""``F.max_pool2d(x, kernel_size, stride, 0, dilation)`` as maxima of strided slices, columns then rows.

    The same values as ``F.max_pool2d`` (a maximum does not round; NaN propagates in both), but
    several times as fast on the CPU for ``(B, C, H, W)`` maps, where torch's pooling kernel does
    not vectorise: each output is the maximum over the window's columns, then over its rows,
    every step one element-wise maximum of two strided views. Its gradient splits between equal
    maxima where ``F.max_pool2d`` picks the first, so :class:`AnchoredMaxPool2d` uses it only for
    inputs that do not require a gradient.

    Args:
        x: Input, already padded.
        kernel_size: ``(kh, kw)``.
        stride: ``(sh, sw)``.
        dilation: ``(dh, dw)``.

    Returns:
        The pooled maps.

    Shape:
        - x: :math:`(B, C, H, W)`
        - output: :math:`(B, C, \lfloor (H - d_h (k_h - 1) - 1) / s_h \rfloor + 1, \ldots)` as for ``F.max_pool2d``
    """
    height, width = x.shape[-2], x.shape[-1]
    out_h = (height - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    out_w = (width - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    if out_h <= 0 or out_w <= 0:
        raise ValueError(
            f"separable_max_pool2d: a {kernel_size[0]}x{kernel_size[1]} window with dilation {dilation} does not fit "
            f"the {height} x {width} input of shape {shape_text(list(x.shape))}"
        )
    span_w = (out_w - 1) * stride[1] + 1
    columns = x[..., :, 0 : span_w : stride[1]]
    for b in range(1, kernel_size[1]):
        start = b * dilation[1]
        columns = torch.maximum(columns, x[..., :, start : start + span_w : stride[1]])
    span_h = (out_h - 1) * stride[0] + 1
    pooled = columns[..., 0 : span_h : stride[0], :]
    for a in range(1, kernel_size[0]):
        start = a * dilation[0]
        pooled = torch.maximum(pooled, columns[..., start : start + span_h : stride[0], :])
    if kernel_size[0] == 1:
        pooled = pooled.clone()  # a strided view of ``x`` or of the column maxima: give it its own memory
    return pooled


@equivariant_layer(period="stride")
class AnchoredMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that anchors its input (period = stride) and pads circularly.

    A strided max pooling sees one polyphase component of its input at its window centres, and
    its ``-inf`` padding marks the image border; both break circular-shift equivariance. Here
    each sample is rolled to its polyphase anchor, padded circularly by ``padding``, and pooled
    without padding, so the output for a circularly shifted input is exactly a circular shift of
    the unshifted output. This is the stem pooling of ResNet (3x3, stride 2, padding 1).

    On the CPU, for inputs that do not require a gradient, the pooling runs as
    :func:`separable_max_pool2d` (same values, several times as fast as torch's kernel on
    ``(B, C, H, W)`` maps); otherwise as ``F.max_pool2d``. The output keeps a channels-last layout.

    There are no parameters; the attributes are those of ``nn.MaxPool2d``.

    Args:
        kernel_size: Window size.
        stride: Stride (default ``kernel_size``); the anchoring period.
        padding: Circular padding on each side.
        dilation: Dilation of the window.
        ceil_mode: As in ``nn.MaxPool2d`` (VoVNet, HGNet, SENet): the last window, which overhangs
            the end of the map, wraps around to its start instead of being cut.
        energy: Energy that picks the anchor, ``"l1"`` (default) or ``"l2"``.

    Raises:
        ValueError: If the output would not be exactly the input size divided by the stride
            (see :func:`keeps_grid`), or the energy is unknown.

    Shape:
        - input: :math:`(B, C, H, W)`, ``H`` and ``W`` multiples of the stride
        - output: :math:`(B, C, H / s_h, W / s_w)`
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        ceil_mode: bool = False,
        *,
        energy: Energy = "l1",
    ) -> None:
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode=ceil_mode)
        kernel, step = _pair(self.kernel_size), normalize_stride(_pair(self.stride))
        pad, dil = _pair(self.padding), _pair(self.dilation)
        # ceil_mode: the last window overhangs the end by this much; it wraps around instead.
        trailing = tuple(
            max(0, d * (k - 1) + 1 - s - 2 * p) if ceil_mode else 0
            for k, s, p, d in zip(kernel, step, pad, dil, strict=True)
        )
        if not all(
            -s <= 2 * p + t - d * (k - 1) - 1 <= -1 and _pooled_size(8 * s, k, s, p, d, ceil_mode) == 8
            for k, s, p, d, t in zip(kernel, step, pad, dil, trailing, strict=True)
        ):
            raise ValueError(
                f"AnchoredMaxPool2d with kernel {kernel}, stride {step}, padding {pad}, dilation {dil} and "
                f"ceil_mode={ceil_mode} would not map H x W to H/{step[0]} x W/{step[1]}; use a padding p with "
                "-s <= 2p - d(k-1) - 1 <= -1 (for example 3x3, stride 2, padding 1)"
            )
        if energy not in ("l1", "l2"):
            raise ValueError(f"energy must be 'l1' or 'l2', got {energy!r}")
        self.energy: str = energy
        # The stride and padding as pairs of ints (nn.MaxPool2d keeps an int or a pair), typed for TorchScript.
        self.period: tuple[int, int] = step
        self.circular_padding: tuple[int, int] = pad
        self.trailing_padding: tuple[int, int] = (int(trailing[0]), int(trailing[1]))
        self.window: tuple[int, int] = kernel
        self.window_dilation: tuple[int, int] = dil

    @classmethod
    def from_pool(cls, pool: nn.MaxPool2d, *, energy: Energy = "l1") -> AnchoredMaxPool2d:
        """Build from an existing ``nn.MaxPool2d`` with the same window, stride, padding and dilation.

        Args:
            pool: The pooling to anchor; its padding becomes circular.
            energy: Energy that picks the anchor.

        Returns:
            The anchored pooling.

        Raises:
            TypeError: If ``pool`` is not an ``nn.MaxPool2d``.
            ValueError: If ``pool`` uses ``return_indices``, or its output would not be the input
                size divided by the stride.
        """
        if not isinstance(pool, nn.MaxPool2d):
            raise TypeError(f"expected an nn.MaxPool2d, got {type(pool).__name__}")
        if pool.return_indices:
            raise ValueError("AnchoredMaxPool2d does not support return_indices=True")
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, energy=energy)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anchor ``x`` with period = stride, pad it circularly, then max-pool without padding.

        Args:
            x: Input feature maps.

        Returns:
            The pooled maps.

        Raises:
            ValueError: If ``x`` is not 4-D or its size is not a multiple of the stride.
        """
        sh, sw = self.period
        if x.dim() != 4:
            raise ValueError(
                f"AnchoredMaxPool2d expects a 4-D tensor (B, C, H, W), got shape {shape_text(list(x.shape))}"
            )
        height, width = x.shape[2], x.shape[3]
        if height % sh != 0 or width % sw != 0 or height == 0 or width == 0:
            raise ValueError(
                f"AnchoredMaxPool2d: spatial size H x W = {height} x {width} of input shape "
                f"{shape_text(list(x.shape))} is not a positive multiple of the stride ({sh}, {sw})"
            )
        # Roll to the anchor and pad circularly in one gather, then pool without padding.
        th, tw = self.trailing_padding
        ph, pw = self.circular_padding
        anchored = anchor_padded(x, sh, sw, self.energy, False, (ph + th, pw + tw))
        if th or tw:  # ceil_mode: the last window wraps around; drop the extra padding before the start
            anchored = anchored[:, :, th:, tw:]
        # The roll keeps a channels-last layout, and both poolings keep their input's.
        if x.device.type == "cpu" and not x.requires_grad:
            return separable_max_pool2d(anchored, self.window, self.period, self.window_dilation)
        return F.max_pool2d(anchored, self.kernel_size, self.period, 0, self.dilation)

    def extra_repr(self) -> str:
        """MaxPool2d's description plus the circular padding and the energy."""
        return f"{super().extra_repr()}, padding_mode=circular, energy={self.energy}"
