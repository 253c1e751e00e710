"""Anchored locally-grouped (window) attention for Twins-SVT."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.twins import LocallyGroupedAttn

from equivit.anchor_core import choose_offsets
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.layers.sharing import take_over

__all__ = ["AnchoredLocallyGroupedAttn", "window_order_indices"]


@equivariant_layer(period="window")
class AnchoredLocallyGroupedAttn(LocallyGroupedAttn):
    r"""Twins' ``LocallyGroupedAttn`` with its windows placed by the content.

    Window attention depends on where the window grid falls: a shift that is not a multiple of the
    window moves tokens into other windows. Here each sample's token grid is rolled to its
    polyphase anchor (period = window), attention runs inside the windows, and the result is
    rolled back, so the output stays aligned with the input and a circular shift of the input
    gives exactly the same shift of the output. A drop-in replacement: same parameters, same
    ``forward(x, size)``. Unlike timm's module it never pads to a window multiple (zero padding
    breaks equivariance): the grid must be divisible by the window. A grid of one window is
    anchored too, so that its tokens reach the attention in an order chosen from content and the
    output moves bit for bit.

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
        self.energy: str = energy

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
        # One window is anchored too (period = the grid): its tokens then reach the attention in an
        # order chosen from content, so its sums round alike for every shift.
        offsets = choose_offsets(x.reshape(batch, height, width, channels), self.ws, self.ws, self.energy, True)
        # One row copy takes the tokens from the anchored grid straight into window order, and one
        # takes them back: the same number of passes as timm's padding and window transposes.
        gather, scatter = window_order_indices(offsets, (height, width), self.ws)
        windows = x.reshape(batch * tokens, channels).index_select(0, gather)
        out = self._attend(windows.view(batch, -1, self.ws * self.ws, channels))
        out = self.proj(out.reshape(batch * tokens, channels)).index_select(0, scatter)
        return self.proj_drop(out.view(batch, tokens, channels))

    def _attend(self, windows: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention inside each window (timm's computation, fused or not).

        Shape:
            - windows: :math:`(B, N_w, w^2, C)`
            - output: :math:`(B, N_w, w^2, C)`
        """
        batch, count, length, channels = windows.shape
        heads = self.num_heads
        # Windows of all samples as one 4-D batch: the shape fused attention kernels and ONNX expect.
        qkv = self.qkv(windows.reshape(batch * count, length, channels))
        q, k, v = qkv.reshape(batch * count, length, 3, heads, channels // heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = self.attn_drop(attn) @ v
        return out.transpose(1, 2).reshape(batch, count, length, channels)


def window_order_indices(
    offsets: torch.Tensor, size: tuple[int, int], window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Row indices that roll each sample's token grid to its anchor and cut it into windows, and back.

    ``tokens.reshape(B * H * W, C).index_select(0, gather)`` lists, for every sample, the windows of
    the grid rolled by ``-offsets`` in row-major window order, the tokens of each window in
    row-major order (timm's window partition). ``index_select(0, scatter)`` on rows in that order
    restores the original grid: ``scatter`` is the inverse permutation of ``gather``.

    Args:
        offsets: Per-sample anchors ``(i, j)``, int64.
        size: The grid ``(H, W)``, multiples of ``window``.
        window: The window size.

    Returns:
        ``(gather, scatter)``, int64 indices into the ``B * H * W`` rows.

    Shape:
        - offsets: :math:`(B, 2)`
        - gather, scatter: :math:`(B H W,)`
    """
    height, width = size
    device = offsets.device
    batch = offsets.shape[0]
    base = torch.arange(batch, device=device)[:, None, None] * (height * width)
    # gather: window (a, c), position (u, v) reads row (a * w + u + i) mod H, column (c * w + v + j) mod W
    rows = torch.remainder(torch.arange(height, device=device) + offsets[:, :1], height)
    cols = torch.remainder(torch.arange(width, device=device) + offsets[:, 1:], width)
    rows = rows.view(batch, height // window, 1, window, 1)
    cols = cols.view(batch, 1, width // window, 1, window)
    gather = (rows * width + cols).reshape(batch, -1, 1) + base
    # scatter: grid cell (r, s) sits at window-order position of ((r - i) mod H, (s - j) mod W)
    back_rows = torch.remainder(torch.arange(height, device=device) - offsets[:, :1], height)
    back_cols = torch.remainder(torch.arange(width, device=device) - offsets[:, 1:], width)
    windows_per_row = width // window
    row_part = (back_rows // window * windows_per_row) * window * window + back_rows % window * window
    col_part = back_cols // window * window * window + back_cols % window
    scatter = (row_part[:, :, None] + col_part[:, None, :]).reshape(batch, -1, 1) + base
    return gather.reshape(-1), scatter.reshape(-1)
