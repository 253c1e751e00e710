"""Anchored PVT v2 stage: one anchor for the whole token grid, the blocks run in the anchored frame."""

from __future__ import annotations

import torch
from timm.models._manipulate import checkpoint
from timm.models.pvt_v2 import MlpWithDepthwiseConv, OverlapPatchEmbed, PyramidVisionTransformerStage
from torch import nn

from equivit.anchor_core import anchor, roll_back
from equivit.energy import Energy
from equivit.layers.anchored_conv import AnchoredConv2d
from equivit.layers.declare import equivariant_layer
from equivit.layers.pos_conv import make_conv_circular
from equivit.layers.sharing import retype
from equivit.report import shape_text

__all__ = ["AnchoredPvtStage", "anchored_pvt_stage"]


@equivariant_layer(period="grid", anchored_children=("blocks",), fx="traced")
class AnchoredPvtStage(PyramidVisionTransformerStage):
    r"""timm's PVT v2 stage whose blocks see the token grid from an origin chosen by content.

    After its downsampling embedding (anchored with its stride: :class:`AnchoredConv2d`, circular
    padding), the stage rolls the token grid to its polyphase anchor with period = the whole
    grid: the origin goes to a token chosen from content, ties broken by content
    (:func:`~equivit.polyphase_anchor`). A circular shift of the stage input then reaches the
    blocks as the same grid, bit for bit, so the blocks need no anchoring of their own: the
    spatial-reduction attention (a strided convolution, or the linear variant's pooling) sees
    the same phase and sums its keys in the same order for every shift. The blocks' depthwise
    convolutions pad circularly, so that the result does not depend on where the origin falls
    either. The output is rolled back to the input's frame, and left channels-last (timm copies
    it into a contiguous tensor; the next stage's anchored embedding then moves whole tokens).

    One anchor and one roll back per stage replace an anchor and a key ordering in every
    attention. Same parameters and state-dict keys as timm's stage; gradient checkpointing works
    as in timm. Build it with :func:`anchored_pvt_stage`.

    Shape:
        - x: :math:`(B, C', H', W')` with a downsampling embedding, else :math:`(B, H, W, C)`
        - output: :math:`(B, C, H, W)`, in ``torch.channels_last`` memory format
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed (anchored), roll the grid to its content-chosen origin, run the blocks, roll back.

        Args:
            x: The previous stage's map, or the stem's token grid for the first stage.

        Returns:
            The stage's output grid, aligned with its input.

        Raises:
            ValueError: If the grid is not 4-D, or not a multiple of the embedding's stride.
        """
        if self.downsample is not None:
            x = self.downsample(x)
        if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips only this exact condition)
            if isinstance(x, torch.Tensor) and x.dim() != 4:  # (not an FX proxy)
                raise ValueError(f"expected a (B, H, W, C) token grid, got shape {shape_text(list(x.shape))}")
        batch, height, width, channels = x.shape
        feat_size = [height, width]
        x, offsets = anchor(x, height, width, self.energy, True)  # one node when FX traces the stage
        x = x.reshape(batch, height * width, channels)
        for block in self.blocks:
            if not torch.jit.is_scripting():
                x = checkpoint(block, x, feat_size) if self.grad_checkpointing else block(x, feat_size)
            else:
                x = block(x, feat_size)
        x = roll_back(self.norm(x).reshape(batch, height, width, -1), offsets, True)
        return x.permute(0, 3, 1, 2)


def anchored_pvt_stage(stage: nn.Module, *, energy: Energy = "l1") -> AnchoredPvtStage:
    """The anchored version of a PVT v2 stage, sharing its parameters (no copy).

    Its downsampling embedding is anchored with its stride and pads circularly, the depthwise
    convolutions of its blocks pad circularly. The new stage holds the given stage's modules: the
    embedding's projection is replaced and the convolutions are switched in place, so the given
    stage (which keeps timm's class and forward) sees these changes; convert a copy to keep it.

    Args:
        stage: timm's ``PyramidVisionTransformerStage``.
        energy: Energy that picks the anchors.

    Returns:
        The anchored stage.

    Raises:
        TypeError: If ``stage`` is not timm's PVT v2 stage, or its embedding is not timm's.
    """
    if not isinstance(stage, PyramidVisionTransformerStage):
        raise TypeError(f"expected timm's PyramidVisionTransformerStage, got {type(stage).__name__}")
    if stage.downsample is not None and not isinstance(stage.downsample, OverlapPatchEmbed):
        raise TypeError(f"expected timm's OverlapPatchEmbed as downsampling, got {type(stage.downsample).__name__}")
    new = retype(stage, AnchoredPvtStage)
    new.energy = energy
    if stage.downsample is not None and not isinstance(stage.downsample.proj, AnchoredConv2d):
        stage.downsample.proj = AnchoredConv2d.from_conv(stage.downsample.proj, energy=energy, padding_mode="circular")
    for module in stage.blocks.modules():
        if isinstance(module, MlpWithDepthwiseConv):
            make_conv_circular(module.dwconv)
    return new
