"""timm's ``MixedConv2d`` (MixNet) with a stride: its channel groups share one anchor."""

from __future__ import annotations

import torch
from timm.layers.mixed_conv2d import MixedConv2d

from equivit.anchor_core import anchor
from equivit.energy import Energy
from equivit.layers.anchored_pool import keeps_grid
from equivit.layers.checks import check_map as _check_input
from equivit.layers.circular_conv import make_circular
from equivit.layers.declare import equivariant_layer
from equivit.layers.sharing import parent_method, retype

__all__ = ["AnchoredMixedConv2d"]


@equivariant_layer(period="stride")
class AnchoredMixedConv2d(MixedConv2d):
    """A strided ``MixedConv2d`` that anchors its whole input once, then runs every kernel group on it.

    ``MixedConv2d`` splits the channels into groups, each convolved with its own kernel size and
    the same stride. Anchoring each group's convolution on its own channels could choose a
    different phase per group, and the concatenated output would no longer move as one map; here
    the input is anchored once (period = stride, energies over all channels) and every group's
    convolution pads circularly. The groups are the stock module's own convolutions (same keys in
    the state dict).

    Raises:
        ValueError: If a group's convolution has another stride, a non-square stride, or does not
            map ``H x W`` to ``H/s x W/s``.

    Shape:
        - input: :math:`(B, C_{in}, H, W)`, ``H`` and ``W`` multiples of the stride
        - output: :math:`(B, C_{out}, H / s, W / s)`
    """

    _timm_forward = parent_method(MixedConv2d.forward, "_timm_forward")

    @classmethod
    def from_mixed(cls, mixed: MixedConv2d, *, energy: Energy = "l1") -> AnchoredMixedConv2d:
        """Build from timm's ``MixedConv2d``, sharing its convolutions.

        Args:
            mixed: The module; its convolutions are switched to circular padding in place.
            energy: Energy that picks the anchor.

        Returns:
            The anchored module.

        Raises:
            TypeError: If ``mixed`` is not a ``MixedConv2d``.
            ValueError: As for the class.
        """
        if not isinstance(mixed, MixedConv2d):
            raise TypeError(f"expected timm's MixedConv2d, got {type(mixed).__name__}")
        if energy not in ("l1", "l2"):
            raise ValueError(f"energy must be 'l1' or 'l2', got {energy!r}")
        strides = {tuple(conv.stride) for conv in mixed.values()}  # type: ignore[attr-defined]
        if len(strides) != 1 or len(set(next(iter(strides)))) != 1:
            raise ValueError(f"MixedConv2d groups need one square stride, got {sorted(strides)}")
        stride = int(next(iter(strides))[0])
        for key, conv in mixed.items():
            if isinstance(conv.padding, str) or not keeps_grid(
                conv.kernel_size, conv.stride, conv.padding, conv.dilation
            ):
                raise ValueError(
                    f"MixedConv2d group {key}: kernel {tuple(conv.kernel_size)}, stride {stride}, padding "
                    f"{conv.padding} does not map H x W to H/{stride} x W/{stride}"
                )
            make_circular(conv)
        new = retype(mixed, cls)
        new.stride = stride
        new.energy = energy
        new.equivit_anchored_children = tuple(mixed.keys())  # the groups run on the anchored input
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anchor ``x`` with period = stride, then run the kernel groups.

        Args:
            x: Feature maps.

        Returns:
            The concatenated group outputs.

        Raises:
            ValueError: If ``x`` is not 4-D or its size is not a positive multiple of the stride.
        """
        _check_input(x, self.stride, "AnchoredMixedConv2d", "stride")
        anchored, _ = anchor(x, self.stride, self.stride, self.energy, False)
        return self._timm_forward(anchored)

    def extra_repr(self) -> str:
        """The anchoring period and energy."""
        return f"period={self.stride}, energy={self.energy}"
