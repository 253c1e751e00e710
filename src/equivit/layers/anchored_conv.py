"""A strided convolution that anchors its input first, so that its output is shift-equivariant."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from equivit.anchor_core import anchor, anchor_padded
from equivit.energy import Energy
from equivit.layers.circular_conv import CircularConv2d
from equivit.layers.declare import equivariant_layer
from equivit.layers.sharing import take_over

__all__ = ["AnchoredConv2d"]


@equivariant_layer(period="stride")
class AnchoredConv2d(CircularConv2d):
    """``nn.Conv2d`` that rolls each sample to its polyphase anchor (period = stride) before convolving.

    A strided convolution sees one polyphase component of its input at its grid points, and a
    circular shift that is not a multiple of the stride changes which one. Anchoring picks the
    component from the content and rolls it to the origin, so the output for a circularly
    shifted input is exactly a circular shift of the unshifted output. This is the anchored
    patch projection of ViT, DeiT and Twins (kernel = stride); overlapping kernels work too
    when the padding is circular.

    The parameters are those of ``nn.Conv2d`` (same names, same shapes), so state dicts load.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Kernel size.
        stride: Stride; the anchoring period.
        padding: Padding; must be 0 unless ``padding_mode="circular"`` (zero padding marks the
            border, which breaks circular equivariance).
        dilation: Dilation.
        groups: Groups.
        bias: Whether to add a bias.
        padding_mode: ``"zeros"`` (only with ``padding=0``) or ``"circular"``.
        energy: Energy that picks the anchor, ``"l1"`` (default) or ``"l2"``.
        device: Device of the parameters.
        dtype: Dtype of the parameters.

    Raises:
        ValueError: If the padding is not circular and not 0.

    Shape:
        - input: :math:`(B, C_{in}, H, W)`, ``H`` and ``W`` multiples of the stride
        - output: :math:`(B, C_{out}, H_{out}, W_{out})` as for ``nn.Conv2d``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        energy: Energy = "l1",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device=device, dtype=dtype,
        )  # fmt: skip
        if padding_mode != "circular" and any(p != 0 for p in self.padding):  # type: ignore[union-attr]
            raise ValueError(
                f"AnchoredConv2d needs padding=0 or padding_mode='circular', got padding={self.padding} "
                f"with padding_mode={padding_mode!r}: zero padding marks the image border"
            )
        if energy not in ("l1", "l2"):
            raise ValueError(f"energy must be 'l1' or 'l2', got {energy!r}")
        self.energy: str = energy
        # Rows and columns dropped from the top and left of the circularly padded input: a
        # "same" padding with more on the bottom and right (TensorFlow's, timm's Conv2dSame).
        self.same_crop: tuple[int, int] = (0, 0)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, energy: Energy = "l1", padding_mode: str | None = None) -> AnchoredConv2d:
        """Build from an existing ``nn.Conv2d``, sharing its parameters (no copy).

        Args:
            conv: The convolution to anchor; its padding must be 0 unless the result pads circularly.
            energy: Energy that picks the anchor.
            padding_mode: Padding mode of the result (default: ``conv``'s). Pass ``"circular"``
                to anchor a zero-padded convolution (the overlapping patch embeddings of PVT v2,
                the strided convolutions of CNNs); ``conv`` itself is not changed.

        Returns:
            An ``AnchoredConv2d`` whose weight and bias are ``conv``'s own parameters.

        Raises:
            TypeError: If ``conv`` is not an ``nn.Conv2d``.
            ValueError: If the result would zero-pad.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
            conv.dilation, conv.groups, conv.bias is not None, padding_mode or conv.padding_mode, energy=energy,
            device="meta",
        )  # fmt: skip
        return take_over(new, conv)

    @classmethod
    def from_same_conv(cls, conv: nn.Conv2d, *, energy: Energy = "l1") -> AnchoredConv2d:
        """Build from a convolution with TensorFlow's "same" padding (timm's ``Conv2dSame``), sharing its parameters.

        For inputs that are multiples of the stride, "same" pads ``t = d (k - 1) + 1 - s`` on
        each axis, ``t // 2`` before and the rest after. The result pads circularly by the same
        amounts (circularly by the larger one, then drops the surplus before), so on an anchored
        input it computes what the stock convolution computes on it, without the border.

        Args:
            conv: The convolution (stride ``s`` > 1 on some axis, no padding of its own).
            energy: Energy that picks the anchor.

        Returns:
            An ``AnchoredConv2d`` whose weight and bias are ``conv``'s own parameters.

        Raises:
            TypeError: If ``conv`` is not an ``nn.Conv2d``.
            ValueError: If ``conv`` has a padding of its own.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        if isinstance(conv.padding, str) or any(p != 0 for p in conv.padding):
            raise ValueError(f"a 'same'-padded convolution computes its padding; got padding={conv.padding!r}")
        totals = [
            max(d * (k - 1) + 1 - s, 0) for k, s, d in zip(conv.kernel_size, conv.stride, conv.dilation, strict=True)
        ]
        after = (totals[0] - totals[0] // 2, totals[1] - totals[1] // 2)
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, after,  # type: ignore[arg-type]
            conv.dilation, conv.groups, conv.bias is not None, "circular", energy=energy, device="meta",
        )  # fmt: skip
        new.same_crop = (after[0] - totals[0] // 2, after[1] - totals[1] // 2)
        return take_over(new, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anchor ``x`` with period = stride, then convolve.

        Args:
            x: Input feature maps.

        Returns:
            The convolution of the anchored input.

        Raises:
            ValueError: If ``x`` is not 4-D or its size is not a multiple of the stride.
        """
        pad_h, pad_w = self.padding[0], self.padding[1]  # type: ignore[index]
        sh, sw = self.stride[0], self.stride[1]
        if self.padding_mode != "circular" or (pad_h == 0 and pad_w == 0) or x.dim() != 4:
            anchored, _ = anchor(x, sh, sw, self.energy, False)
            return self._conv_forward(anchored, self.weight, self.bias)
        # Roll to the anchor and pad circularly in one gather, then convolve without padding.
        padded = anchor_padded(x, sh, sw, self.energy, False, (pad_h, pad_w))
        crop_h, crop_w = self.same_crop
        if crop_h != 0 or crop_w != 0:
            padded = padded[:, :, crop_h:, crop_w:]
        return F.conv2d(padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        """Conv2d's description plus the energy (and the crop of a "same" padding)."""
        crop = f", same_crop={self.same_crop}" if self.same_crop != (0, 0) else ""
        return f"{super().extra_repr()}{crop}, energy={self.energy}"
