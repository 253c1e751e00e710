"""AnchoredSwinStage, CircularSwinTransformerBlock and AnchoredPatchMerging: Swin made equivariant."""

from __future__ import annotations

import pytest
import torch
from contract import GridLayer, LayerContract
from hypothesis import given
from hypothesis import strategies as st
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock, SwinTransformerStage
from timm.models.swin_transformer_v2 import SwinTransformerV2Block, SwinTransformerV2Stage
from torch import nn

import equivit
from equivit.layers import (
    AnchoredPatchMerging,
    AnchoredPatchMergingV2,
    CircularSwinTransformerBlock,
    CircularSwinTransformerV2Block,
    anchored_patch_merging,
    anchored_swin_stage,
)
from equivit.testing import FAMILIES, make_images, perturb_weights_
from helpers import check_stage_gradients, is_some_roll

DIM = 8


def _stage(window: int, grid: tuple[int, int], downsample: bool, depth: int = 2, version: int = 1) -> nn.Module:
    """A timm stage (Swin v1 or v2) with trained-looking weights (relative position biases included)."""
    torch.manual_seed(0)
    resolution = (grid[0] * 2, grid[1] * 2) if downsample else grid
    kind = SwinTransformerStage if version == 1 else SwinTransformerV2Stage
    stage = kind(DIM, DIM, resolution, depth=depth, downsample=downsample, num_heads=2, window_size=window)
    return perturb_weights_(stage, seed=0).eval()


def _grid(family: str, height: int, width: int, seed: int) -> torch.Tensor:
    """A (B, H, W, C) token grid of an image family, layer-normalised as Swin's blocks see it."""
    grid = make_images(family, (2, DIM, height, width), seed=seed).permute(0, 2, 3, 1)
    return nn.functional.layer_norm(grid, (DIM,))


class TestAnchoredSwinStage(LayerContract):
    """Swin v1's stage: patch merging (period 2), then windows of 2 (period 4 on the input grid)."""

    channels, stride, output_stride, output_channels = DIM, 4, 2, DIM
    gradient_blocks = (1, 1)
    version = 1
    bad_inputs = ((lambda: torch.randn(1, DIM, 6, 8), r"3 x 4 .*not a positive multiple of the stride \(2, 2\)"),)
    energy_in_repr = False  # the anchors are in its patch merging and its forward

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return anchored_swin_stage(self.make_stock().to(dtype))

    def make_stock(self) -> nn.Module:
        return _stage(2, (4, 4), downsample=True, version=self.version)

    aligned_output = True
    atol = 1e-5

    def wrap(self, layer: nn.Module) -> nn.Module:
        return GridLayer(layer, "grid")

    def symmetric(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Ties of the merging anchor (period 2) or of the window anchor on the merged grid."""
        grid = GridLayer(layer, "grid").layer_input(x).permute(0, 2, 3, 1)
        merged = layer.downsample(grid)
        return equivit.unresolved_ties(grid, 2, channels_last=True) | equivit.unresolved_ties(
            merged, 2, channels_last=True
        )


class TestAnchoredSwinTransformerV2Stage(TestAnchoredSwinStage):
    """Swin v2's stage: post-norm blocks, continuous position bias."""

    version = 2


@pytest.mark.parametrize("version", [1, 2])
def test_smoke_from_timm_shares_parameters(version: int) -> None:
    stock = _stage(2, (4, 4), downsample=True, version=version)
    anchored = anchored_swin_stage(stock)
    assert anchored.blocks[1].attn.qkv.weight is stock.blocks[1].attn.qkv.weight
    assert anchored.downsample.reduction.weight is stock.downsample.reduction.weight
    assert isinstance(anchored.downsample, AnchoredPatchMerging if version == 1 else AnchoredPatchMergingV2)
    circular = CircularSwinTransformerBlock if version == 1 else CircularSwinTransformerV2Block
    assert all(isinstance(block, circular) for block in anchored.blocks)
    assert all(block.attn_mask is None for block in anchored.blocks)
    assert stock.blocks[1].attn_mask is not None  # the timm stage is left as it was
    assert list(anchored.state_dict()) == list(stock.state_dict())
    assert anchored.window_size == (2, 2)
    assert anchored(torch.randn(1, 8, 8, DIM)).shape == (1, 4, 4, DIM)


@pytest.mark.parametrize("kind", [SwinTransformerBlock, SwinTransformerV2Block])
def test_without_shifts_or_masks_the_block_equals_timm(kind: type) -> None:
    """With no cyclic shift there is no mask: the circular block computes exactly timm's block."""
    torch.manual_seed(0)
    block = kind(DIM, (4, 6), num_heads=2, window_size=2, shift_size=0).eval()
    x = torch.randn(2, 4, 6, DIM)
    assert torch.allclose(CircularSwinTransformerBlock.from_timm(block)(x), block(x), atol=1e-6)


def test_errors() -> None:
    stage = anchored_swin_stage(_stage(3, (3, 3), downsample=False))
    with pytest.raises(
        ValueError, match=r"4 x 6 of input shape \(1, 4, 6, 8\) is not a positive multiple of the stride \(3, 3\)"
    ):
        stage(torch.randn(1, 4, 6, DIM))
    block = CircularSwinTransformerBlock.from_timm(SwinTransformerBlock(DIM, (6, 6), num_heads=2, window_size=3))
    with pytest.raises(ValueError, match="token grid 4 x 6 is not a multiple of the window 3 x 3"):
        block(torch.randn(1, 4, 6, DIM))
    merging = anchored_patch_merging(PatchMerging(DIM))
    with pytest.raises(ValueError, match="not a positive multiple of the stride"):
        merging(torch.randn(1, 3, 4, DIM))
    with pytest.raises(ValueError, match="4-D"):
        merging(torch.randn(4, 4, DIM))
    for factory in (anchored_swin_stage, CircularSwinTransformerBlock.from_timm, anchored_patch_merging):
        with pytest.raises(TypeError, match="expected a timm"):
            factory(nn.Linear(2, 2))  # type: ignore[arg-type]


@given(
    family=st.sampled_from(FAMILIES),
    window=st.sampled_from([2, 3]),
    blocks=st.tuples(st.integers(1, 2), st.integers(1, 3)),
    shift=st.tuples(st.integers(-13, 13), st.integers(-13, 13)),
    downsample=st.booleans(),
    seed=st.integers(0, 2**16),
    version=st.sampled_from([1, 2]),
)
def test_stage_output_of_a_shifted_grid_is_shifted(
    family: str, window: int, blocks: tuple[int, int], shift: tuple[int, int], downsample: bool, seed: int, version: int
) -> None:
    """Shifted input -> shifted output: by ``shift / 2`` after merging an even shift, else by some roll."""
    grid = (window * blocks[0], window * blocks[1])
    stage = anchored_swin_stage(_stage(window, grid, downsample, version=version))
    factor = 2 if downsample else 1
    x = _grid(family, grid[0] * factor, grid[1] * factor, seed)
    with torch.no_grad():
        reference = stage(x)
        shifted = stage(torch.roll(x, shift, dims=(1, 2)))
    merged = stage.downsample(x) if downsample else x
    tied = equivit.unresolved_ties(merged, window, channels_last=True)
    exact = all(s % factor == 0 for s in shift)
    for b in range(2):
        if exact and not tied[b] and not (downsample and equivit.unresolved_ties(x[b : b + 1], 2, channels_last=True)):
            expected = torch.roll(reference[b], (shift[0] // factor, shift[1] // factor), dims=(0, 1))
            assert torch.allclose(shifted[b], expected, rtol=0, atol=1e-5), float((shifted[b] - expected).abs().max())
        else:
            assert is_some_roll(shifted[b], reference[b], dims=(0, 1), atol=1e-5)


@pytest.mark.parametrize("version", [1, 2])
def test_gradients_and_gradient_checkpointing(version: int) -> None:
    stage = anchored_swin_stage(_stage(2, (2, 2), downsample=True, depth=2, version=version)).double()
    check_stage_gradients(stage, torch.randn(1, 4, 4, DIM, dtype=torch.float64, requires_grad=True))
