"""AnchoredPvtStage: PVT v2's stage with one anchor for its token grid."""

from __future__ import annotations

import pytest
import torch
from contract import LayerContract
from hypothesis import given
from hypothesis import strategies as st
from timm.models.pvt_v2 import PyramidVisionTransformerStage
from torch import nn

from equivit.layers import AnchoredConv2d, AnchoredPvtStage, CircularConv2d, anchored_pvt_stage
from equivit.testing import FAMILIES, make_images, perturb_weights_
from helpers import check_stage_gradients

DIM = 8


def _stage(downsample: bool, sr_ratio: int = 2, depth: int = 2, linear: bool = False) -> nn.Module:
    """A timm stage with trained-looking weights; with downsampling its input has 4 channels."""
    torch.manual_seed(0)
    stage = PyramidVisionTransformerStage(
        4 if downsample else DIM, DIM, depth, downsample=downsample, num_heads=2, sr_ratio=sr_ratio, linear_attn=linear
    )
    return perturb_weights_(stage, seed=0).eval()


def _input(family: str, grid: tuple[int, int], downsample: bool, seed: int) -> torch.Tensor:
    """A stage input of an image family: a (B, 4, H, W) map, or a (B, H, W, C) token grid."""
    if downsample:
        return make_images(family, (2, 4, grid[0], grid[1]), seed=seed)
    images = make_images(family, (2, DIM, grid[0], grid[1]), seed=seed)
    return nn.functional.layer_norm(images.permute(0, 2, 3, 1), (DIM,))


class TestAnchoredPvtStage(LayerContract):
    """PVT v2's stage: overlapping patch embedding (stride 2), the grid anchored as a whole, blocks (sr 2)."""

    channels, stride, output_stride, output_channels = 4, 4, 2, DIM  # the keys' reduction needs an even grid
    gradient_blocks = (1, 1)
    aligned_output = True

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return anchored_pvt_stage(self.make_stock().to(dtype))

    def make_stock(self) -> nn.Module:
        return _stage(downsample=True)


def test_smoke_shares_parameters_and_keys() -> None:
    stock = _stage(downsample=True)
    anchored = anchored_pvt_stage(stock)
    assert isinstance(anchored, AnchoredPvtStage)
    assert anchored.blocks[1].attn.q.weight is stock.blocks[1].attn.q.weight
    assert isinstance(anchored.downsample.proj, AnchoredConv2d)
    assert anchored.downsample.proj.padding_mode == "circular"
    assert all(isinstance(block.mlp.dwconv, CircularConv2d) for block in anchored.blocks)
    assert type(stock) is PyramidVisionTransformerStage  # the timm stage object keeps its class
    assert list(anchored.state_dict()) == list(stock.state_dict())
    out = anchored(torch.randn(2, 4, 8, 12))
    assert out.shape == (2, DIM, 4, 6)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert anchored_pvt_stage(_stage(downsample=False))(torch.randn(1, 4, 6, DIM)).shape == (1, DIM, 4, 6)


def test_errors() -> None:
    with pytest.raises(TypeError, match="expected timm's PyramidVisionTransformerStage, got Linear"):
        anchored_pvt_stage(nn.Linear(2, 2))
    stage = anchored_pvt_stage(_stage(downsample=True))
    with pytest.raises(ValueError, match=r"not a positive multiple of the stride \(2, 2\)"):
        stage(torch.randn(1, 4, 7, 8))
    with pytest.raises(ValueError, match=r"expected a \(B, H, W, C\) token grid, got shape \(4, 4, 8\)"):
        anchored_pvt_stage(_stage(downsample=False))(torch.randn(4, 4, DIM))


@given(
    family=st.sampled_from(FAMILIES),
    grid=st.tuples(st.sampled_from([4, 6, 8]), st.sampled_from([4, 6, 8])),
    sr_ratio=st.sampled_from([1, 2, 4]),
    linear=st.booleans(),
    downsample=st.booleans(),
    shift=st.tuples(st.integers(-9, 9), st.integers(-9, 9)),
    seed=st.integers(0, 2**16),
)
def test_output_of_a_shifted_input_is_the_shifted_output_bit_for_bit(
    family: str,
    grid: tuple[int, int],
    sr_ratio: int,
    linear: bool,
    downsample: bool,
    shift: tuple[int, int],
    seed: int,
) -> None:
    """Every shift that the embedding's stride divides moves the output by shift / stride, exactly."""
    factor = 2 if downsample else 1
    stage = anchored_pvt_stage(_stage(downsample, sr_ratio=sr_ratio, linear=linear))
    x = _input(family, (grid[0] * factor, grid[1] * factor), downsample, seed)
    shift = (shift[0] * factor, shift[1] * factor)
    dims = (2, 3) if downsample else (1, 2)
    with torch.no_grad():
        reference = stage(x)
        shifted = stage(torch.roll(x, shift, dims=dims))
    expected = torch.roll(reference, (shift[0] // factor, shift[1] // factor), dims=(2, 3))
    assert torch.equal(shifted, expected), float((shifted - expected).abs().max())


def test_gradients_and_gradient_checkpointing() -> None:
    stage = anchored_pvt_stage(_stage(downsample=True, depth=2)).double()
    check_stage_gradients(stage, torch.randn(1, 4, 4, 8, dtype=torch.float64, requires_grad=True))
