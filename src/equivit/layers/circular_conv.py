"""A stride-1 circular convolution that also works on grids smaller than its padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from equivit.layers.pos_conv import make_conv_circular
from equivit.layers.sharing import take_over

__all__ = ["WrappingCircularConv2d"]


class WrappingCircularConv2d(nn.Conv2d):
    """Stride-1 ``nn.Conv2d`` with circular padding that may wrap around the grid more than once.

    ``padding_mode="circular"`` in torch pads by at most the grid size. ConvNeXt's 7x7 depthwise
    convolutions meet grids of 2 or 3 tokens in the last stage of small images (64 or 96
    pixels); the circular convolution is still well defined there (the grid is periodic), and
    this layer computes it by gathering rows and columns modulo the grid size. Same parameters
    as ``nn.Conv2d``; on grids at least as large as the padding it is ``nn.Conv2d`` itself.

    Shape:
        - input: :math:`(B, C_{in}, H, W)`
        - output: :math:`(B, C_{out}, H, W)`
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> WrappingCircularConv2d:
        """Build from a stride-1 "same"-padded ``nn.Conv2d``, sharing its parameters (no copy).

        Args:
            conv: The convolution.

        Returns:
            The circular convolution.

        Raises:
            ValueError: If ``conv`` is strided or its padding is not "same" (see ``make_conv_circular``).
        """
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
            conv.dilation, conv.groups, conv.bias is not None, device="meta",  # type: ignore[arg-type]
        )  # fmt: skip
        make_conv_circular(new)
        return take_over(new, conv)

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        pad_h, pad_w = self.padding  # type: ignore[misc]
        height, width = input.shape[-2], input.shape[-1]
        if pad_h <= height and pad_w <= width:
            return super()._conv_forward(input, weight, bias)
        rows = torch.remainder(torch.arange(-pad_h, height + pad_h, device=input.device), height)
        cols = torch.remainder(torch.arange(-pad_w, width + pad_w, device=input.device), width)
        padded = input.index_select(-2, rows).index_select(-1, cols)
        return F.conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups)
