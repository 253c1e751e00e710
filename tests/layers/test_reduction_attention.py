"""AnchoredSpatialReductionAttn: PVT v2's attention with strided or pooled keys and values, anchored."""

from __future__ import annotations

import pytest
import torch
from contract import GridLayer, LayerContract
from hypothesis import given
from hypothesis import strategies as st
from timm.models.pvt_v2 import Attention
from torch import nn

from equivit.layers import AnchoredSpatialReductionAttn
from equivit.testing import FAMILIES, make_images, perturb_weights_
from helpers import roll_tokens

DIM = 8


def _attention(sr_ratio: int, linear: bool = False) -> Attention:
    torch.manual_seed(0)
    return perturb_weights_(Attention(DIM, num_heads=2, sr_ratio=sr_ratio, linear_attn=linear), seed=0).eval()


def _tokens(family: str, height: int, width: int, seed: int) -> torch.Tensor:
    grid = make_images(family, (2, DIM, height, width), seed=seed).permute(0, 2, 3, 1)
    return nn.functional.layer_norm(grid, (DIM,)).reshape(2, height * width, DIM)


class TestAnchoredSpatialReductionAttn(LayerContract):
    """PVT v2's attention with keys and values reduced by a stride-2 convolution; output aligned with the input."""

    channels, stride, output_stride, output_channels = DIM, 2, 1, DIM
    bad_inputs = ((lambda: torch.randn(1, DIM, 5, 6), r"5 x 6 .*not a positive multiple"),)
    energy_in_repr = False  # the anchor is in its forward
    linear = False

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return AnchoredSpatialReductionAttn.from_timm(self.make_stock().to(dtype))

    def make_stock(self) -> nn.Module:
        return _attention(2, linear=self.linear)

    aligned_output = True
    atol = 1e-5

    def wrap(self, layer: nn.Module) -> nn.Module:
        return GridLayer(layer, "tokens_list")


class TestAnchoredLinearSpatialReductionAttn(TestAnchoredSpatialReductionAttn):
    """PVT v2-li's attention: keys and values pooled to 7 x 7, so the period is the grid over 7."""

    stride = 7
    gradient_blocks = (1, 1)
    max_blocks = 2
    linear = True
    bad_inputs = ((lambda: torch.randn(1, DIM, 8, 7), r"pools a 8 x 7 grid to 7 x 7"),)


def test_smoke_shares_parameters_and_matches_timm_on_anchored_input() -> None:
    stock = _attention(2)
    anchored = AnchoredSpatialReductionAttn.from_timm(stock)
    assert anchored.sr.weight is stock.sr.weight
    assert anchored.kv.weight is stock.kv.weight
    assert list(anchored.state_dict()) == list(stock.state_dict())
    x = torch.randn(2, 24, DIM)
    assert anchored(x, [4, 6]).shape == (2, 24, DIM)
    assert anchored.period((4, 6)) == (2, 2)
    assert AnchoredSpatialReductionAttn.from_timm(_attention(1, linear=True)).period((14, 21)) == (2, 3)
    # with sr_ratio 1 nothing is reduced, the keys are only put in content order: timm's result, to rounding
    plain = _attention(1)
    assert torch.allclose(AnchoredSpatialReductionAttn.from_timm(plain)(x, [4, 6]), plain(x, [4, 6]), atol=1e-6)


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"5 x 6 of input shape \(2, 5, 6, 8\) is not a positive multiple"):
        AnchoredSpatialReductionAttn.from_timm(_attention(2))(torch.randn(2, 30, DIM), [5, 6])
    with pytest.raises(ValueError, match="pools a 8 x 14 grid to 7 x 7"):
        AnchoredSpatialReductionAttn.from_timm(_attention(1, linear=True))(torch.randn(2, 112, DIM), [8, 14])
    with pytest.raises(TypeError, match="pvt_v2 Attention"):
        AnchoredSpatialReductionAttn.from_timm(nn.Linear(2, 2))  # type: ignore[arg-type]


@given(
    family=st.sampled_from(FAMILIES),
    variant=st.sampled_from(["sr2", "sr3", "linear"]),
    cells=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    shift=st.tuples(st.integers(-20, 20), st.integers(-20, 20)),
    seed=st.integers(0, 2**16),
)
def test_output_of_shifted_tokens_is_the_same_shift(
    family: str, variant: str, cells: tuple[int, int], shift: tuple[int, int], seed: int
) -> None:
    linear = variant == "linear"
    period = 7 if linear else int(variant[-1])
    size = (period * cells[0], period * cells[1])
    module = AnchoredSpatialReductionAttn.from_timm(_attention(1 if linear else period, linear=linear))
    x = _tokens(family, *size, seed)
    with torch.no_grad():
        reference = module(x, list(size))
        shifted = module(roll_tokens(x, size, shift), list(size))
    expected = roll_tokens(reference, size, shift)
    assert torch.allclose(shifted, expected, rtol=0, atol=1e-5), float((shifted - expected).abs().max())


@pytest.mark.parametrize("linear", [False, True])
def test_gradients(linear: bool) -> None:
    module = AnchoredSpatialReductionAttn.from_timm(_attention(1 if linear else 2, linear=linear)).double()
    module.fused_attn = False  # double backward of the fused kernel is not on every build
    size = [7, 7] if linear else [4, 4]
    x = torch.randn(1, size[0] * size[1], DIM, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: module(t, size), (x,))
    assert torch.autograd.gradgradcheck(lambda t: module(t, size), (x,))
