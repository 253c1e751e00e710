"""AnchoredLocallyGroupedAttn and AnchoredGlobalSubSampleAttn: Twins attention made equivariant."""

from __future__ import annotations

import pytest
import torch
from contract import GridLayer, LayerContract
from hypothesis import given
from hypothesis import strategies as st
from timm.models.twins import GlobalSubSampleAttn, LocallyGroupedAttn
from torch import nn

import equivit
from equivit.layers import AnchoredGlobalSubSampleAttn, AnchoredLocallyGroupedAttn
from equivit.testing import FAMILIES, make_images, perturb_weights_
from helpers import is_some_roll, roll_tokens

DIM = 8


def _lsa(ws: int = 3, dtype: torch.dtype = torch.float32) -> AnchoredLocallyGroupedAttn:
    torch.manual_seed(0)
    return AnchoredLocallyGroupedAttn(DIM, num_heads=2, ws=ws, dtype=dtype).eval()


def _gsa(sr: int = 2, dtype: torch.dtype = torch.float32) -> AnchoredGlobalSubSampleAttn:
    torch.manual_seed(0)
    return perturb_weights_(AnchoredGlobalSubSampleAttn(DIM, num_heads=2, sr_ratio=sr, dtype=dtype)).eval()


def _tokens(family: str, height: int, width: int, seed: int) -> torch.Tensor:
    grid = make_images(family, (2, DIM, height, width), seed=seed)  # (B, C, H, W)
    return nn.functional.layer_norm(grid.permute(0, 2, 3, 1), (DIM,)).reshape(2, height * width, DIM)


def _window_pair(fused: bool) -> tuple[LocallyGroupedAttn, AnchoredLocallyGroupedAttn]:
    """timm's window attention (window 3, perturbed weights) and its anchored twin, fused or not."""
    stock = perturb_weights_(LocallyGroupedAttn(DIM, num_heads=2, ws=3)).eval()
    anchored = AnchoredLocallyGroupedAttn.from_timm(stock)
    stock.fused_attn = anchored.fused_attn = fused
    return stock, anchored


class TestAnchoredLocallyGroupedAttn(LayerContract):
    """Twins' window attention (window 3): anchored with the window, rolled back: any shift is exact."""

    channels, stride, output_stride, output_channels = DIM, 3, 1, DIM
    bad_inputs = ((lambda: torch.randn(1, DIM, 5, 6), "5 x 6 is not a multiple of the window size 3"),)
    energy_in_repr = False

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return AnchoredLocallyGroupedAttn.from_timm(self.make_stock().to(dtype))

    def make_stock(self) -> nn.Module:
        torch.manual_seed(0)
        return perturb_weights_(LocallyGroupedAttn(DIM, num_heads=2, ws=3)).eval()

    aligned_output = True
    atol = 1e-5

    def wrap(self, layer: nn.Module) -> nn.Module:
        return GridLayer(layer, "tokens")


class TestAnchoredGlobalSubSampleAttn(TestAnchoredLocallyGroupedAttn):
    """Twins' global attention over keys and values reduced by a stride-2 convolution."""

    stride = 2
    bad_inputs = ((lambda: torch.randn(1, DIM, 5, 6), r"5 x 6 .*not a (positive )?multiple"),)

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return AnchoredGlobalSubSampleAttn.from_timm(self.make_stock().to(dtype))

    def make_stock(self) -> nn.Module:
        torch.manual_seed(0)
        return perturb_weights_(GlobalSubSampleAttn(DIM, num_heads=2, sr_ratio=2)).eval()


def test_smoke_from_timm_shares_parameters_and_matches_when_anchor_is_origin() -> None:
    stock = LocallyGroupedAttn(DIM, num_heads=2, ws=2).eval()
    anchored = AnchoredLocallyGroupedAttn.from_timm(stock)
    assert anchored.qkv.weight is stock.qkv.weight
    x = torch.randn(1, 16, DIM)
    assert anchored(x, (4, 4)).shape == (1, 16, DIM)
    stock_gsa = GlobalSubSampleAttn(DIM, num_heads=2, sr_ratio=2).eval()
    anchored_gsa = AnchoredGlobalSubSampleAttn.from_timm(stock_gsa)
    assert anchored_gsa.sr.weight is stock_gsa.sr.weight
    assert anchored_gsa.norm.weight is stock_gsa.norm.weight
    assert anchored_gsa(x, (4, 4)).shape == (1, 16, DIM)
    # with sr_ratio 1 the keys are only put in content order: timm's result, to rounding
    plain = GlobalSubSampleAttn(DIM, num_heads=2, sr_ratio=1).eval()
    assert torch.allclose(AnchoredGlobalSubSampleAttn.from_timm(plain)(x, (4, 4)), plain(x, (4, 4)), atol=1e-6)


def test_errors() -> None:
    with pytest.raises(ValueError, match="5 x 6 is not a multiple of the window size 3"):
        _lsa(3)(torch.randn(1, 30, DIM), (5, 6))
    with pytest.raises(ValueError, match="5 x 6 is not a multiple of the reduction stride 2"):
        _gsa(2)(torch.randn(1, 30, DIM), (5, 6))
    with pytest.raises(ValueError, match="holds 30 tokens"):
        _lsa(3)(torch.randn(1, 30, DIM), (6, 6))
    with pytest.raises(ValueError, match="at least 2"):
        AnchoredLocallyGroupedAttn(DIM, ws=1)
    with pytest.raises(TypeError):
        AnchoredLocallyGroupedAttn.from_timm(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AnchoredGlobalSubSampleAttn.from_timm(nn.Linear(2, 2))  # type: ignore[arg-type]


@given(
    family=st.sampled_from(FAMILIES),
    window=st.sampled_from([2, 3]),
    blocks=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    shift=st.tuples(st.integers(-9, 9), st.integers(-9, 9)),
    seed=st.integers(0, 2**16),
    layer=st.sampled_from(["lsa", "gsa"]),
)
def test_output_of_shifted_tokens_is_the_same_shift(
    family: str, window: int, blocks: tuple[int, int], shift: tuple[int, int], seed: int, layer: str
) -> None:
    size = (window * blocks[0], window * blocks[1])
    module = _lsa(window) if layer == "lsa" else _gsa(window)
    x = _tokens(family, *size, seed)
    with torch.no_grad():
        reference = module(x, size)
        shifted = module(roll_tokens(x, size, shift), size)
    expected = roll_tokens(reference, size, shift)
    grid = x.reshape(2, *size, DIM)
    tied = equivit.unresolved_ties(grid, window, channels_last=True)
    for b in range(2):
        if layer == "gsa" or not tied[b]:
            assert torch.allclose(shifted[b], expected[b], rtol=0, atol=1e-5), float((shifted - expected).abs().max())
        else:
            # A tie left means the grid repeats with a period the windows do not share; no choice
            # of anchor can then shift the windowed output with the input. It is a roll of the
            # reference output (by a period of the input), which is what the next layers need.
            assert is_some_roll(shifted[b].view(*size, DIM), reference[b].view(*size, DIM), dims=(0, 1), atol=1e-5)


@pytest.mark.parametrize("layer", ["lsa", "gsa"])
def test_gradients(layer: str) -> None:
    module = (_lsa(2) if layer == "lsa" else _gsa(2)).double()
    module.fused_attn = False  # double backward of the fused kernel is not implemented on every build
    x = torch.randn(1, 16, DIM, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: module(t, (4, 4)), (x,))
    assert torch.autograd.gradgradcheck(lambda t: module(t, (4, 4)), (x,))


def test_window_order_indices_match_roll_and_partition() -> None:
    from equivit.layers.window_attention import window_order_indices

    batch, height, width, ws = 3, 6, 9, 3
    grid = torch.randn(batch, height, width, 2)
    offsets = torch.tensor([[0, 0], [1, 2], [2, 1]])
    gather, scatter = window_order_indices(offsets, (height, width), ws)
    rolled = torch.stack([torch.roll(grid[b], (-int(o[0]), -int(o[1])), dims=(0, 1)) for b, o in enumerate(offsets)])
    expected = rolled.reshape(batch, height // ws, ws, width // ws, ws, 2).transpose(2, 3).reshape(-1, 2)
    assert torch.equal(grid.reshape(-1, 2).index_select(0, gather), expected)
    assert torch.equal(expected.index_select(0, scatter), grid.reshape(-1, 2))


@pytest.mark.parametrize("fused", [True, False])
def test_anchored_window_attention_is_timm_attention_on_the_anchored_grid(fused: bool) -> None:
    """Same numbers as timm's module run on the grid rolled to the anchor, then rolled back."""
    stock, anchored = _window_pair(fused)
    x = _tokens("random", 6, 9, seed=3)
    grid = x.reshape(2, 6, 9, DIM)
    rolled, offsets = equivit.polyphase_anchor(grid, 3, channels_last=True)
    expected = equivit.roll_from_anchor(
        stock(rolled.reshape(x.shape), (6, 9)).reshape(grid.shape), offsets, channels_last=True
    )
    torch.testing.assert_close(anchored(x, (6, 9)), expected.reshape(x.shape), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_one_window_grid_is_timm_attention_and_permutation_equivariant(fused: bool) -> None:
    """A grid of exactly one window is anchored with the grid as period: timm's numbers, and any roll commutes."""
    stock, anchored = _window_pair(fused)
    x = _tokens("random", 3, 3, seed=5)
    torch.testing.assert_close(anchored(x, (3, 3)), stock(x, (3, 3)), rtol=1e-5, atol=1e-6)
    shifted = anchored(roll_tokens(x, (3, 3), (1, 2)), (3, 3))
    torch.testing.assert_close(shifted, roll_tokens(anchored(x, (3, 3)), (3, 3), (1, 2)), rtol=1e-5, atol=1e-6)


def test_an_input_with_a_symmetry_moves_the_output_by_the_shift_up_to_that_symmetry() -> None:
    """The documented limit of layers that roll their output back (docs/anchoring.md).

    Rows alternating between two patterns: a roll by two rows leaves the grid unchanged, and two
    is not a multiple of the window (3), so the anchor cannot tell the phases two rows apart. A
    shift by ``s`` rows then moves the output by ``s`` plus a multiple of two: a shift that
    gives the same input, but not the shift itself.
    """
    layer = TestAnchoredLocallyGroupedAttn().make()
    rows = torch.randn(2, 6, DIM, generator=torch.Generator().manual_seed(0))
    grid = nn.functional.layer_norm(rows[torch.arange(6) % 2], (DIM,)).unsqueeze(0)  # (1, 6, 6, C)
    assert bool(equivit.unresolved_ties(grid, 3, channels_last=True))

    def attend(g: torch.Tensor) -> torch.Tensor:
        return layer(g.reshape(1, 36, DIM), (6, 6)).reshape(1, 6, 6, DIM)

    with torch.no_grad():
        reference = attend(grid)
        moved_by = []
        for shift in range(6):
            shifted = attend(torch.roll(grid, shift, dims=1))
            moves = [k for k in range(6) if torch.allclose(shifted, torch.roll(reference, k, dims=1), atol=1e-5)]
            assert moves, shift
            assert all(torch.equal(torch.roll(grid, k, dims=1), torch.roll(grid, shift, dims=1)) for k in moves)
            moved_by.append(moves[0])
    assert moved_by != list(range(6))  # not the shift itself: exact equivariance fails on such inputs
