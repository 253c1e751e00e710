"""Anchored spatial-reduction attention for PVT v2 (keys and values from a reduced token grid)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.pvt_v2 import Attention

from equivit.anchor_core import anchor
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.layers.key_order import canonical_token_order
from equivit.layers.sharing import retype

__all__ = ["AnchoredSpatialReductionAttn"]


@equivariant_layer(period="stride", anchored_children=("sr", "pool"))
class AnchoredSpatialReductionAttn(Attention):
    r"""PVT v2's ``Attention`` whose key/value reduction is anchored.

    PVT v2 computes keys and values from a reduced grid: a strided convolution (``sr``, kernel
    = stride = ``sr_ratio``) or, in the linear variant, ``AdaptiveAvgPool2d(7)`` then a 1 x 1
    convolution. Both depend on where their grid falls. Here the grid is rolled to its polyphase
    anchor first, with period ``sr_ratio``, or ``H / 7`` x ``W / 7`` for the pool (which is then
    an average over whole cells: ``H`` and ``W`` must be multiples of 7). Queries are untouched:
    each attends over the set of keys, which a permutation does not change, so the output is
    shift-equivariant. The keys (reduced, or all tokens when ``sr_ratio`` is 1) are put in an
    order chosen from content (:func:`~equivit.layers.canonical_token_order`), so that the
    attention's sums round alike for every shift and the output moves bit for bit. Same
    parameters and ``forward(x, feat_size)`` as timm's module.

    Build it with :meth:`from_timm`; the constructor is timm's. :func:`equivit.convert` anchors
    whole PVT v2 stages instead (:class:`~equivit.layers.AnchoredPvtStage`, one anchor for all the
    stage's blocks); this layer makes one such attention equivariant on its own.

    Shape:
        - x: :math:`(B, H \cdot W, C)` with ``feat_size = (H, W)``
        - output: :math:`(B, H \cdot W, C)`
    """

    @classmethod
    def from_timm(cls, module: Attention, *, energy: Energy = "l1") -> AnchoredSpatialReductionAttn:
        """The same attention (same parameter objects), with its key/value path anchored.

        Args:
            module: PVT v2's ``Attention``.
            energy: Energy that picks the anchor.

        Returns:
            The anchored attention.

        Raises:
            TypeError: If ``module`` is not PVT v2's ``Attention``.
        """
        if not isinstance(module, Attention):
            raise TypeError(f"expected timm's pvt_v2 Attention, got {type(module).__name__}")
        new = retype(module, cls)
        new.energy = energy
        return new

    def period(self, feat_size: list[int]) -> tuple[int, int]:
        """The anchoring period of the key/value reduction on a grid of ``feat_size``.

        Raises:
            ValueError: If the linear variant's grid is not a multiple of its pooled size.
        """
        if self.pool is None:
            ratio = self.sr.stride if self.sr is not None else (1, 1)
            return int(ratio[0]), int(ratio[1])
        pooled = self.pool.output_size
        pooled = pooled if isinstance(pooled, tuple) else (pooled, pooled)
        height, width = feat_size
        if height % pooled[0] or width % pooled[1]:
            raise ValueError(
                f"the linear spatial-reduction attention pools a {height} x {width} grid to {pooled[0]} x "
                f"{pooled[1]}; shift equivariance needs the grid to be a multiple of that (input images a "
                "multiple of equivit_report.input_multiple)"
            )
        return height // pooled[0], width // pooled[1]

    def forward(self, x: torch.Tensor, feat_size: list[int]) -> torch.Tensor:
        """Attend from every token to the keys and values of the anchored, reduced grid.

        Args:
            x: Tokens.
            feat_size: ``(H, W)`` of the token grid.

        Returns:
            Attended tokens.
        """
        batch, tokens, channels = x.shape
        height, width = feat_size
        q = self.q(x).reshape(batch, tokens, self.num_heads, -1).permute(0, 2, 1, 3)
        if self.sr is not None:
            grid = x.reshape(batch, height, width, channels)
            period = self.period(feat_size)
            grid, _ = anchor(grid, period[0], period[1], self.energy, True)
            grid = grid.permute(0, 3, 1, 2)
            if self.pool is not None:
                grid = self.pool(grid)
            reduced = self.sr(grid)
            x = self.norm(reduced.flatten(2).transpose(1, 2))
            if self.act is not None:
                x = self.act(x)
            # The keys in an order chosen from content: attention's sums round alike for every shift.
            x = canonical_token_order(x, [reduced.shape[2], reduced.shape[3]], self.energy)
        else:
            x = canonical_token_order(x, [height, width], self.energy)
        k, v = self.kv(x).reshape(batch, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = self.attn_drop(attn) @ v
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, tokens, channels)))
