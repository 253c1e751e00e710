"""Anchored global sub-sampled attention for Twins (keys and values from a strided reduction)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.twins import GlobalSubSampleAttn

from equivit.anchor_core import anchor
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.layers.key_order import canonical_token_order
from equivit.layers.sharing import take_over

__all__ = ["AnchoredGlobalSubSampleAttn"]


@equivariant_layer(period="stride", anchored_children=("sr",))
class AnchoredGlobalSubSampleAttn(GlobalSubSampleAttn):
    r"""Twins' ``GlobalSubSampleAttn`` whose key/value reduction is anchored.

    The keys and values come from a strided convolution (``sr``, kernel = stride = ``sr_ratio``)
    of the token grid, which depends on where its grid falls. Here the grid is rolled to its
    polyphase anchor (period = ``sr_ratio``) before the reduction. Queries are untouched: each
    query attends over the set of keys, and a permutation of the keys does not change the
    result, so the output stays aligned with the input and is shift-equivariant. The keys
    (reduced, or all tokens when ``sr_ratio == 1``) are put in an order chosen from content
    (:func:`~equivit.layers.canonical_token_order`), so that the attention's sums round alike for
    every shift and the output moves bit for bit. Same parameters and ``forward(x, size)`` as
    timm's module.

    Args:
        dim: Token channels.
        num_heads: Attention heads.
        attn_drop: Attention dropout.
        proj_drop: Output projection dropout.
        sr_ratio: Reduction stride (the anchoring period).
        energy: Energy that picks the anchor.
        device: Device of the parameters.
        dtype: Dtype of the parameters.

    Shape:
        - x: :math:`(B, H \cdot W, C)` with ``size = (H, W)``, ``H`` and ``W`` multiples of ``sr_ratio``
        - output: :math:`(B, H \cdot W, C)`
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        sr_ratio: int = 1,
        energy: Energy = "l1",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(dim, num_heads, attn_drop, proj_drop, sr_ratio, device=device, dtype=dtype)
        self.energy: str = energy

    @classmethod
    def from_timm(cls, module: GlobalSubSampleAttn, *, energy: Energy = "l1") -> AnchoredGlobalSubSampleAttn:
        """Build from timm's ``GlobalSubSampleAttn``, sharing its parameters (no copy).

        Args:
            module: The attention to anchor.
            energy: Energy that picks the anchor.

        Returns:
            The anchored attention.

        Raises:
            TypeError: If ``module`` is not a ``GlobalSubSampleAttn``.
        """
        if not isinstance(module, GlobalSubSampleAttn):
            raise TypeError(f"expected timm's GlobalSubSampleAttn, got {type(module).__name__}")
        new = cls(
            module.dim, module.num_heads, module.attn_drop.p, module.proj_drop.p, module.sr_ratio, energy=energy,
            device="meta",
        )  # fmt: skip
        if module.norm is not None and new.norm is not None:
            new.norm = module.norm  # keeps its eps and type
        return take_over(new, module)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Attend from every token to keys and values reduced from the anchored grid.

        Args:
            x: Tokens in row-major grid order.
            size: The grid ``(H, W)``.

        Returns:
            The attended tokens, aligned with ``x``.

        Raises:
            ValueError: If ``x`` does not hold ``H * W`` tokens or the grid is not a multiple of ``sr_ratio``.
        """
        batch, tokens, channels = x.shape
        height, width = size
        heads = self.num_heads
        if tokens != height * width:
            raise ValueError(f"x holds {tokens} tokens, but size {height} x {width} needs {height * width}")
        q = self.q(x).reshape(batch, tokens, heads, channels // heads).permute(0, 2, 1, 3)
        if self.sr is not None:
            if height % self.sr_ratio or width % self.sr_ratio:
                raise ValueError(
                    f"token grid H x W = {height} x {width} is not a multiple of the reduction stride "
                    f"{self.sr_ratio}: the input image must be a multiple of {self.sr_ratio} times this "
                    "stage's stride"
                )
            grid, _ = anchor(x.reshape(batch, height, width, channels), self.sr_ratio, self.sr_ratio, self.energy, True)
            reduced = self.sr(grid.permute(0, 3, 1, 2))
            x = self.norm(reduced.flatten(2).transpose(1, 2))
            # The keys in an order chosen from content: attention's sums round alike for every shift.
            x = canonical_token_order(x, [reduced.shape[2], reduced.shape[3]], self.energy)
        else:
            x = canonical_token_order(x, [height, width], self.energy)
        kv = self.kv(x).reshape(batch, -1, 2, heads, channels // heads).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = x.transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(x))
