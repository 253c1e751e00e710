"""Anchored Swin stage: windows fixed by content, cyclic shifts without the border mask."""

from __future__ import annotations

from typing import ClassVar

import torch
from timm.models._manipulate import checkpoint_seq
from timm.models.swin_transformer import SwinTransformerBlock, SwinTransformerStage, window_partition, window_reverse

from equivit.layers.patch_merging import AnchoredPatchMerging
from equivit.layers.sharing import retype
from equivit.polyphase import Energy, polyphase_anchor
from equivit.roll import roll_from_anchor

__all__ = ["AnchoredSwinStage", "CircularSwinTransformerBlock"]


class CircularSwinTransformerBlock(SwinTransformerBlock):
    r"""timm's ``SwinTransformerBlock`` on a torus: cyclic window shift, no mask, no padding.

    timm masks the shifted windows that wrap around the image border so that no token attends
    across it. On a circularly shifted image there is no border, and the mask, tied to absolute
    positions, breaks equivariance. Without it the block commutes with circular shifts by whole
    windows. The grid must be a multiple of the window (padding would mark the border). Same
    parameters as timm's block.

    Build it with :meth:`from_timm`; the constructor is timm's.

    Shape:
        - x: :math:`(B, H, W, C)`, ``H`` and ``W`` multiples of the window size
        - output: :math:`(B, H, W, C)`
    """

    @classmethod
    def from_timm(cls, block: SwinTransformerBlock) -> CircularSwinTransformerBlock:
        """The same block (same parameter objects) without its attention mask.

        Args:
            block: timm's block.

        Returns:
            The circular block.

        Raises:
            TypeError: If ``block`` is not a ``SwinTransformerBlock``.
        """
        if not isinstance(block, SwinTransformerBlock):
            raise TypeError(f"expected a timm SwinTransformerBlock, got {type(block).__name__}")
        new = retype(block, cls)
        new.attn_mask = None
        new.dynamic_mask = False
        return new

    def get_attn_mask(self, x: torch.Tensor | None = None, **kwargs: object) -> None:
        """No mask: on a torus there is no border to hide."""
        return None

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        """Window attention with a cyclic shift and no mask.

        Raises:
            ValueError: If the grid is not a multiple of the window size.
        """
        _, height, width, channels = x.shape
        (wh, ww), (sh, sw) = self.window_size, self.shift_size
        if height % wh or width % ww:
            raise ValueError(
                f"token grid {height} x {width} is not a multiple of the window {wh} x {ww}; the input image "
                "must be a multiple of equivit_report.input_multiple (padding would break shift equivariance)"
            )
        shifted = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2)) if sh or sw else x
        windows = window_partition(shifted, (wh, ww)).view(-1, wh * ww, channels)
        attended = self.attn(windows, mask=None).view(-1, wh, ww, channels)
        shifted = window_reverse(attended, (wh, ww), height, width)
        return torch.roll(shifted, shifts=(sh, sw), dims=(1, 2)) if sh or sw else shifted


class AnchoredSwinStage(SwinTransformerStage):
    r"""timm's ``SwinTransformerStage`` whose windows are placed by content.

    The stage merges patches (anchored with period 2: :class:`AnchoredPatchMerging`), rolls the
    token grid to its polyphase anchor with period = window, runs its blocks (regular and
    shifted windows, both aligned with the anchored grid, no mask:
    :class:`CircularSwinTransformerBlock`), and rolls the result back. A circular shift of the
    input therefore shifts the output: by exactly ``shift / 2`` when the stage merges and the
    shift is even, by the shift itself otherwise, and by some roll in general. Where the grid is a
    single window, anchoring picks its rotation from the content. Same parameters as timm's
    stage; gradient checkpointing works as in timm.

    Build it with :meth:`from_timm`; the constructor is timm's.

    Shape:
        - x: :math:`(B, H, W, C)`, ``H`` and ``W`` multiples of (2 if merging) x window
        - output: :math:`(B, H', W', C')`, as for timm's stage
    """

    equivit_anchored_children: ClassVar[tuple[str, ...]] = ("downsample", "blocks")
    energy: Energy

    @classmethod
    def from_timm(cls, stage: SwinTransformerStage, *, energy: Energy = "l1") -> AnchoredSwinStage:
        """The same stage (same parameter objects) with anchored merging and circular blocks.

        Args:
            stage: timm's stage, holding ``SwinTransformerBlock`` blocks.
            energy: Energy that picks the anchors.

        Returns:
            The anchored stage.

        Raises:
            TypeError: If ``stage`` is not a ``SwinTransformerStage`` of ``SwinTransformerBlock``.
        """
        if not isinstance(stage, SwinTransformerStage):
            raise TypeError(f"expected a timm SwinTransformerStage, got {type(stage).__name__}")
        kinds = {type(block).__name__ for block in stage.blocks}
        if not all(isinstance(block, SwinTransformerBlock) for block in stage.blocks):
            raise TypeError(f"expected SwinTransformerBlock blocks, got {sorted(kinds)}")
        new = retype(stage, cls)
        new.energy = energy
        if isinstance(stage.downsample, torch.nn.Module) and not isinstance(stage.downsample, torch.nn.Identity):
            new.downsample = AnchoredPatchMerging.from_timm(stage.downsample, energy=energy)  # type: ignore[arg-type]
        new.blocks = torch.nn.Sequential(*(CircularSwinTransformerBlock.from_timm(block) for block in stage.blocks))
        return new

    @property
    def window_size(self) -> tuple[int, int]:
        """The window of the stage's blocks (the anchoring period of its token grid)."""
        size = self.blocks[0].window_size if len(self.blocks) else (1, 1)
        return int(size[0]), int(size[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Merge (anchored), anchor the windows, run the blocks, roll back.

        Args:
            x: Token grid, channels last.

        Returns:
            The stage's output grid, aligned with its input.
        """
        x = self.downsample(x)
        x, offsets = polyphase_anchor(x, self.window_size, energy=self.energy, channels_last=True)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return roll_from_anchor(x, offsets, channels_last=True)
