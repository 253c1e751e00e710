"""Depthwise-convolution positional encoding with circular padding (CPVT's PEG, made circular)."""

from __future__ import annotations

import torch
from torch import nn

from equivit.layers.circular_conv import CircularConv2d, make_circular
from equivit.layers.declare import equivariant_layer

__all__ = ["CircularPosConv", "make_conv_circular"]


@equivariant_layer(period="")
class CircularPosConv(nn.Module):
    """``x + depthwise_conv(x)``, with circular padding: a positional encoding that commutes with rolls.

    Replaces an absolute position embedding, which pins content to positions and so breaks shift
    equivariance. The convolution tells each token about its neighbourhood. CPVT's zero padding
    also told tokens where the border is, which is what breaks equivariance; with circular padding
    there is no border and the layer commutes with circular shifts.

    The weights start at zero, so a converted pretrained model starts as the original one without
    the grid part of its position embedding; training learns the encoding.

    Args:
        dim: Channels.
        kernel_size: Odd kernel size (3 in CPVT and Twins).
        bias: Whether the convolution has a bias.
        device: Device of the parameters.
        dtype: Dtype of the parameters.

    Raises:
        ValueError: If ``kernel_size`` is not a positive odd number or ``dim`` is not positive.

    Shape:
        - input: :math:`(B, C, H, W)`
        - output: :math:`(B, C, H, W)`
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 3,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.proj = CircularConv2d(
            dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=bias, padding_mode="circular",
            device=device, dtype=dtype,
        )  # fmt: skip
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero the convolution: the layer starts as the identity."""
        nn.init.zeros_(self.proj.weight)
        if self.proj.bias is not None:
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the circular depthwise convolution of ``x`` to ``x``.

        Args:
            x: Token grid.

        Returns:
            ``x + conv(x)``.
        """
        return x + self.proj(x)


def make_conv_circular(conv: nn.Conv2d) -> nn.Conv2d:
    """Switch a stride-1 "same"-padded ``nn.Conv2d`` to circular padding, in place (same parameters).

    Zero padding marks the image border; circular padding has none, so a stride-1 convolution
    with it commutes with circular shifts. Twins' ``PosConv``, PVT v2's and ConvNeXt's depthwise
    convolutions and ResNet's 3 x 3 convolutions are made circular this way. The convolution
    becomes a :class:`~equivit.layers.CircularConv2d` (any grid size, also smaller than the
    padding).

    Args:
        conv: A convolution with stride 1.

    Returns:
        ``conv`` itself.

    Raises:
        TypeError: If ``conv`` is not an ``nn.Conv2d``.
        ValueError: If its stride is not 1 (anchor it instead: ``AnchoredConv2d``), or its padding
            is not a "same" padding.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
    if tuple(conv.stride) != (1, 1):
        raise ValueError(f"only stride-1 convolutions can be made circular, got stride {tuple(conv.stride)}")
    if isinstance(conv.padding, str):
        raise ValueError(f"expected an explicit padding, got padding={conv.padding!r}")
    reach = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
    same = tuple(r // 2 for r in reach)
    if tuple(conv.padding) != same or any(r % 2 for r in reach):
        raise ValueError(
            f"circular padding keeps the grid only with 'same' padding (odd kernel, padding {same}), "
            f"got kernel {tuple(conv.kernel_size)} and padding {tuple(conv.padding)}"
        )
    return make_circular(conv)
