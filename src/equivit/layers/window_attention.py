"""Anchored locally-grouped (window) attention for Twins-SVT."""

from __future__ import annotations

import torch
from timm.models.twins import LocallyGroupedAttn

from equivit.layers.sharing import take_over
from equivit.polyphase import Energy, polyphase_anchor
from equivit.roll import roll_from_anchor

__all__ = ["AnchoredLocallyGroupedAttn"]


class AnchoredLocallyGroupedAttn(LocallyGroupedAttn):
    r"""Twins' ``LocallyGroupedAttn`` with its windows placed by the content.

    Window attention depends on where the window grid falls: a shift that is not a multiple of the
    window moves tokens into other windows. Here each sample's token grid is rolled to its
    polyphase anchor (period = window), attention runs inside the windows, and the result is
    rolled back, so the output stays aligned with the input and a circular shift of the input
    gives exactly the same shift of the output. A drop-in replacement: same parameters, same
    ``forward(x, size)``. Unlike timm's module it never pads to a window multiple (zero padding
    breaks equivariance): the grid must be divisible by the window.

    Args:
        dim: Token channels.
        num_heads: Attention heads.
        attn_drop: Attention dropout.
        proj_drop: Output projection dropout.
        ws: Window size (the anchoring period), at least 2.
        energy: Energy that picks the anchor.
        device: Device of the parameters.
        dtype: Dtype of the parameters.

    Shape:
        - x: :math:`(B, H \cdot W, C)` with ``size = (H, W)``, ``H`` and ``W`` multiples of ``ws``
        - output: :math:`(B, H \cdot W, C)`
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        ws: int = 1,
        energy: Energy = "l1",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if ws < 2:
            raise ValueError(f"window size ws must be at least 2, got {ws}")
        super().__init__(dim, num_heads, attn_drop, proj_drop, ws, device=device, dtype=dtype)
        self.energy: Energy = energy

    @classmethod
    def from_timm(cls, module: LocallyGroupedAttn, *, energy: Energy = "l1") -> AnchoredLocallyGroupedAttn:
        """Build from timm's ``LocallyGroupedAttn``, sharing its parameters (no copy).

        Args:
            module: The attention to anchor.
            energy: Energy that picks the anchor.

        Returns:
            The anchored attention.

        Raises:
            TypeError: If ``module`` is not a ``LocallyGroupedAttn``.
        """
        if not isinstance(module, LocallyGroupedAttn):
            raise TypeError(f"expected timm's LocallyGroupedAttn, got {type(module).__name__}")
        new = cls(
            module.dim, module.num_heads, module.attn_drop.p, module.proj_drop.p, module.ws, energy=energy,
            device="meta",
        )  # fmt: skip
        return take_over(new, module)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Anchor the token grid with period ``ws``, attend within windows, roll back.

        Args:
            x: Tokens in row-major grid order.
            size: The grid ``(H, W)``.

        Returns:
            The attended tokens, aligned with ``x``.

        Raises:
            ValueError: If ``x`` does not hold ``H * W`` tokens or the grid is not a multiple of ``ws``.
        """
        batch, tokens, channels = x.shape
        height, width = size
        if tokens != height * width:
            raise ValueError(f"x holds {tokens} tokens, but size {height} x {width} needs {height * width}")
        if height % self.ws or width % self.ws:
            raise ValueError(
                f"token grid H x W = {height} x {width} is not a multiple of the window size {self.ws}: "
                f"the input image must be a multiple of {self.ws} times this stage's stride "
                "(padding to a window multiple would break shift equivariance)"
            )
        if height == self.ws and width == self.ws:  # one window: attention over a set of tokens
            return super().forward(x, size)
        grid, offsets = polyphase_anchor(
            x.reshape(batch, height, width, channels), self.ws, energy=self.energy, channels_last=True
        )
        out = super().forward(grid.reshape(batch, tokens, channels), size)
        return roll_from_anchor(out.view(batch, height, width, channels), offsets, channels_last=True).view(
            batch, tokens, channels
        )
