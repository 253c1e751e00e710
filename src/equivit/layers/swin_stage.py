"""Anchored Swin stages (v1 and v2): windows placed by content, cyclic shifts without the border mask."""

from __future__ import annotations

from typing import ClassVar

import torch
from timm.models._manipulate import checkpoint
from timm.models.swin_transformer import SwinTransformerBlock, SwinTransformerStage
from timm.models.swin_transformer_v2 import SwinTransformerV2Block, SwinTransformerV2Stage
from torch import nn

from equivit.anchor_core import anchor, roll_back
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.layers.patch_merging import anchored_patch_merging
from equivit.layers.sharing import parent_method, retype

__all__ = [
    "AnchoredSwinStage",
    "AnchoredSwinTransformerV2Stage",
    "CircularSwinTransformerBlock",
    "CircularSwinTransformerV2Block",
    "anchored_swin_stage",
]


class _CircularWindows(nn.Module):
    """No attention mask, and no padding: timm's cyclic window shift on a torus."""

    def get_attn_mask(
        self, x: torch.Tensor | None = None, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor | None:
        """No mask: on a torus there is no border to hide."""
        return None

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        """Window attention as timm computes it, once the grid is checked to be a multiple of the window.

        Raises:
            ValueError: If the grid is not a multiple of the window size.
        """
        _, height, width, _ = x.shape
        wh, ww = self.window_size
        if height % wh or width % ww:
            raise ValueError(
                f"token grid {height} x {width} is not a multiple of the window {wh} x {ww}; the input image "
                "must be a multiple of equivit_report.input_multiple (padding would break shift equivariance)"
            )
        return self._timm_attn(x)

    def _timm_attn(self, x: torch.Tensor) -> torch.Tensor:
        """The window attention of the timm block (each subclass refers to its timm parent's function)."""
        raise NotImplementedError


@equivariant_layer(period="")
class CircularSwinTransformerBlock(_CircularWindows, SwinTransformerBlock):
    r"""timm's ``SwinTransformerBlock`` on a torus: cyclic window shift, no mask, no padding.

    timm masks the shifted windows that wrap around the image border so that no token attends
    across it. On a circularly shifted image there is no border, and the mask, tied to absolute
    positions, breaks equivariance. Without it the block commutes with circular shifts by whole
    windows. The grid must be a multiple of the window (padding would mark the border). Same
    parameters as timm's block; build it with :func:`anchored_swin_stage` or :meth:`from_timm`.

    Shape:
        - x: :math:`(B, H, W, C)`, ``H`` and ``W`` multiples of the window size
        - output: :math:`(B, H, W, C)`
    """

    _timm_attn = parent_method(SwinTransformerBlock._attn, "_timm_attn")

    @classmethod
    def from_timm(cls, block: nn.Module) -> CircularSwinTransformerBlock | CircularSwinTransformerV2Block:
        """The same block (same parameter objects) without its attention mask; v1 or v2.

        Args:
            block: timm's ``SwinTransformerBlock`` or ``SwinTransformerV2Block``.

        Returns:
            The circular block.

        Raises:
            TypeError: If ``block`` is neither.
        """
        if isinstance(block, SwinTransformerBlock):
            new: CircularSwinTransformerBlock | CircularSwinTransformerV2Block = retype(block, cls)
        elif isinstance(block, SwinTransformerV2Block):
            new = retype(block, CircularSwinTransformerV2Block)
        else:
            raise TypeError(f"expected a timm SwinTransformerBlock, got {type(block).__name__}")
        new.attn_mask = None
        new.dynamic_mask = False
        return new


@equivariant_layer(period="")
class CircularSwinTransformerV2Block(_CircularWindows, SwinTransformerV2Block):
    r"""Swin v2's block (post-norm, continuous position bias) on a torus, as :class:`CircularSwinTransformerBlock`.

    Shape:
        - x: :math:`(B, H, W, C)`, ``H`` and ``W`` multiples of the window size
        - output: :math:`(B, H, W, C)`
    """

    _timm_attn = parent_method(SwinTransformerV2Block._attn, "_timm_attn")


class _AnchoredWindows(nn.Module):
    """Merge (anchored), anchor the grid with period = window, run the blocks, roll back."""

    __jit_unused_properties__: ClassVar[list[str]] = ["window_size"]  # TorchScript reads _scripted_window

    @property
    def window_size(self) -> tuple[int, int]:
        """The window of the stage's blocks (the anchoring period of its token grid)."""
        return self._scripted_window()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Merge (anchored), anchor the windows, run the blocks, roll back.

        Args:
            x: Token grid, channels last.

        Returns:
            The stage's output grid, aligned with its input.

        Raises:
            ValueError: If the grid is not a multiple of (2 if merging) x window.
        """
        x = self.downsample(x)
        window = self._scripted_window()
        x, offsets = anchor(x, window[0], window[1], self.energy, True)  # one node when FX traces the stage
        for block in self.blocks:  # type: ignore[attr-defined]
            if not torch.jit.is_scripting():
                x = checkpoint(block, x) if self.grad_checkpointing else block(x)
            else:
                x = block(x)
        return roll_back(x, offsets, True)

    @torch.jit.unused
    def set_input_size(self, *args: object, **kwargs: object) -> None:
        """Refused: a converted stage keeps the grid and windows it was converted with.

        timm's resize would give the blocks border masks again (which break equivariance) and
        change the periods the model's input check knows. Resize the stock model, then convert it.

        Raises:
            NotImplementedError: Always.
        """
        raise NotImplementedError(
            "a converted Swin stage keeps the windows it was converted with: call set_input_size on the stock "
            "timm model, then convert it (equivit.convert)"
        )

    def _scripted_window(self) -> tuple[int, int]:
        """:attr:`window_size` in a form TorchScript compiles (every block of a stage has the same window)."""
        size = (1, 1)
        for block in self.blocks:  # type: ignore[attr-defined]
            size = (block.window_size[0], block.window_size[1])
        return size


@equivariant_layer(period="window", anchored_children=("downsample", "blocks"), fx="traced")
class AnchoredSwinStage(_AnchoredWindows, SwinTransformerStage):
    r"""timm's ``SwinTransformerStage`` whose windows are placed by content.

    The stage merges patches (anchored with period 2: :class:`AnchoredPatchMerging`), rolls the
    token grid to its polyphase anchor with period = window, runs its blocks (regular and
    shifted windows, both aligned with the anchored grid, no mask:
    :class:`CircularSwinTransformerBlock`), and rolls the result back. A circular shift of the
    input therefore shifts the output: by exactly ``shift / 2`` when the stage merges and the
    shift is even, by the shift itself otherwise, and by some roll in general. Where the grid is a
    single window, anchoring picks its rotation from the content. Same parameters as timm's
    stage; gradient checkpointing works as in timm. Build it with :func:`anchored_swin_stage`.

    Shape:
        - x: :math:`(B, H, W, C)`, ``H`` and ``W`` multiples of (2 if merging) x window
        - output: :math:`(B, H', W', C')`, as for timm's stage
    """


@equivariant_layer(period="window", anchored_children=("downsample", "blocks"), fx="traced")
class AnchoredSwinTransformerV2Stage(_AnchoredWindows, SwinTransformerV2Stage):
    r"""Swin v2's stage, anchored as :class:`AnchoredSwinStage`.

    Shape:
        - x: :math:`(B, H, W, C)`, ``H`` and ``W`` multiples of (2 if merging) x window
        - output: :math:`(B, H', W', C')`, as for timm's stage
    """


def anchored_swin_stage(
    stage: nn.Module, *, energy: Energy = "l1"
) -> AnchoredSwinStage | AnchoredSwinTransformerV2Stage:
    """The anchored version of a Swin v1 or v2 stage, sharing its parameters (no copy).

    Its patch merging is anchored and its blocks become circular (no mask); the stage object
    given is left as it was.

    Args:
        stage: timm's ``SwinTransformerStage`` or ``SwinTransformerV2Stage``.
        energy: Energy that picks the anchors.

    Returns:
        The anchored stage.

    Raises:
        TypeError: If ``stage`` is neither, or holds blocks of another type.
    """
    if isinstance(stage, SwinTransformerStage):
        new: AnchoredSwinStage | AnchoredSwinTransformerV2Stage = retype(stage, AnchoredSwinStage)
        block_type: type = SwinTransformerBlock
    elif isinstance(stage, SwinTransformerV2Stage):
        new = retype(stage, AnchoredSwinTransformerV2Stage)
        block_type = SwinTransformerV2Block
    else:
        raise TypeError(f"expected a timm SwinTransformerStage, got {type(stage).__name__}")
    if not all(type(block) is block_type for block in stage.blocks):
        kinds = sorted({type(block).__name__ for block in stage.blocks})
        raise TypeError(f"expected {block_type.__name__} blocks, got {kinds}")
    new.energy = energy
    if not isinstance(stage.downsample, nn.Identity):
        new.downsample = anchored_patch_merging(stage.downsample, energy=energy)
    blocks = [CircularSwinTransformerBlock.from_timm(block) for block in stage.blocks]
    # Sequential (v1) or ModuleList (v2): the same keys either way
    new.blocks = nn.Sequential(*blocks) if isinstance(stage.blocks, nn.Sequential) else nn.ModuleList(blocks)
    return new
