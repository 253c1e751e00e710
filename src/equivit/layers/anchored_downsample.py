"""A parameter-free downsampling (average pooling, blur pooling) run on its input's polyphase anchor."""

from __future__ import annotations

import torch
from timm.layers import BlurPool2d
from torch import nn

from equivit.anchor_core import anchor, anchor_padded
from equivit.energy import Energy
from equivit.layers.anchored_pool import keeps_grid
from equivit.layers.checks import check_map as _check_input
from equivit.layers.declare import equivariant_layer

__all__ = ["AnchoredDownsample", "make_pool_circular"]


def _stride_of(pool: nn.Module) -> int:
    stride = pool.stride
    pair = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if len(pair) != 2 or pair[0] != pair[1] or int(pair[0]) < 1:
        raise ValueError(f"{type(pool).__name__}: only square strides are supported, got {stride!r}")
    return int(pair[0])


def make_pool_circular(pool: nn.Module) -> nn.Module:
    """Make a parameter-free pooling pad circularly (in place), or check that it does not pad.

    ``BlurPool2d`` (timm's anti-aliasing filter) pads by reflection: its padding mode becomes
    ``"circular"``. An ``nn.AvgPool2d`` must not pad (its zero padding marks the border, and
    ``count_include_pad`` weighs border windows differently).

    Args:
        pool: A ``BlurPool2d`` or an ``nn.AvgPool2d``.

    Returns:
        ``pool``.

    Raises:
        TypeError: For another module type.
        ValueError: If it does not map ``H x W`` to ``H/s x W/s`` or an average pooling pads.
    """
    stride = _stride_of(pool)
    if isinstance(pool, BlurPool2d):
        pad = pool.padding
        if len(set(pad)) != 1 or not keeps_grid(pool.filt_size, stride, pad[0]):
            raise ValueError(
                f"BlurPool2d with filter {pool.filt_size}, stride {stride}, padding {pad} changes the grid"
            )
        pool.pad_mode = "circular"
        return pool
    if type(pool) is nn.AvgPool2d:
        kernel = pool.kernel_size if isinstance(pool.kernel_size, int) else max(pool.kernel_size)
        overhangs = pool.ceil_mode and kernel > stride  # ceil_mode changes nothing when windows tile the map
        if pool.padding not in (0, (0, 0)) or overhangs or not keeps_grid(pool.kernel_size, stride, 0):  # type: ignore[arg-type]
            raise ValueError(
                f"AvgPool2d with kernel {pool.kernel_size}, stride {pool.stride}, padding {pool.padding} and "
                f"ceil_mode={pool.ceil_mode}: only poolings without padding that map H x W to H/s x W/s are supported"
            )
        return pool
    raise TypeError(f"expected timm's BlurPool2d or nn.AvgPool2d, got {type(pool).__name__}")


@equivariant_layer(period="stride", anchored_children=("pool",))
class AnchoredDownsample(nn.Module):
    """A parameter-free strided pooling that runs on its input rolled to the polyphase anchor (period = stride).

    For the anti-aliased downsampling of timm's models (``aa_layer``: ``BlurPool2d``, or a 2 x 2
    ``nn.AvgPool2d``): the blur is kept, and made circular, and the sampling phase is chosen from
    content, so the output for a circularly shifted input is exactly a circular shift of the
    unshifted output (by the shift divided by the stride, when that is whole; otherwise by some
    roll). The pooling has no parameters and ``BlurPool2d``'s filter is a non-persistent buffer,
    so wrapping it leaves state dicts unchanged.

    Args:
        pool: A ``BlurPool2d`` (made circular in place) or an ``nn.AvgPool2d`` (a padding of its
            own is taken out of it and applied circularly before it).
        energy: Energy that picks the anchor, ``"l1"`` (default) or ``"l2"``.

    Raises:
        TypeError: If ``pool`` is of another type.
        ValueError: As :func:`make_pool_circular`, or for an unknown energy.

    Shape:
        - input: :math:`(B, C, H, W)`, ``H`` and ``W`` multiples of the stride
        - output: :math:`(B, C, H / s, W / s)`
    """

    def __init__(self, pool: nn.Module, *, energy: Energy = "l1") -> None:
        super().__init__()
        if energy not in ("l1", "l2"):
            raise ValueError(f"energy must be 'l1' or 'l2', got {energy!r}")
        padding = 0
        if type(pool) is nn.AvgPool2d and pool.padding not in (0, (0, 0)):
            # A padded average pooling (ResNeSt's 3 x 3, stride 2, padding 1): padded circularly here instead.
            pad = pool.padding if isinstance(pool.padding, int) else pool.padding[0]
            even = pool.padding in (pad, (pad, pad))
            if not even or pool.ceil_mode or not keeps_grid(pool.kernel_size, _stride_of(pool), pad):  # type: ignore[arg-type]
                raise ValueError(
                    f"AvgPool2d with kernel {pool.kernel_size}, stride {pool.stride}, padding {pool.padding} and "
                    f"ceil_mode={pool.ceil_mode} does not map H x W to H/s x W/s with an even padding"
                )
            pool.padding, padding = 0, int(pad)
        self.pool = pool if padding else make_pool_circular(pool)
        self.stride = _stride_of(pool)
        self.energy = energy
        self.circular_padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anchor ``x`` with period = stride, then pool.

        Args:
            x: Feature maps.

        Returns:
            The pooled maps.

        Raises:
            ValueError: If ``x`` is not 4-D or its size is not a positive multiple of the stride.
        """
        _check_input(x, self.stride, "AnchoredDownsample", "stride")
        padding = self.circular_padding
        if padding:
            return self.pool(anchor_padded(x, self.stride, self.stride, self.energy, False, (padding, padding)))
        anchored, _ = anchor(x, self.stride, self.stride, self.energy, False)
        return self.pool(anchored)

    def extra_repr(self) -> str:
        """The anchoring period and energy."""
        padding = f", circular padding {self.circular_padding}" if self.circular_padding else ""
        return f"period={self.stride}{padding}, energy={self.energy}"
