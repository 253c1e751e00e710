"""AnchoredConv2d: the anchored strided convolution (patch projection)."""

from __future__ import annotations

import pytest
import torch
from contract import LayerContract
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from equivit.layers import AnchoredConv2d
from equivit.testing.strategies import images, shifts
from helpers import is_some_roll


class TestPatchProjection(LayerContract):
    """A ViT-style patch projection: kernel = stride = 4."""

    channels, stride, output_channels = 3, 4, 5
    bad_inputs = (
        (lambda: torch.randn(1, 3, 17, 16), "17 x 16"),
        (lambda: torch.randn(3, 16, 16), "4-D"),
    )

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return AnchoredConv2d.from_conv(self.make_stock().to(dtype))

    def make_stock(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Conv2d(3, 5, 4, 4).eval()


class TestCircularlyPaddedStridedConv(LayerContract):
    """A stem convolution: 3 x 3, stride 2, padding 1 made circular."""

    stride, output_channels = 2, 6

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return AnchoredConv2d.from_conv(self.make_stock().to(dtype), padding_mode="circular")

    def make_stock(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Conv2d(4, 6, 3, 2, 1).eval()


def test_smoke_shape_and_shared_parameters() -> None:
    conv = nn.Conv2d(3, 8, 4, 4)
    anchored = AnchoredConv2d.from_conv(conv)
    assert anchored.weight is conv.weight
    assert anchored.bias is conv.bias
    out = anchored(torch.randn(2, 3, 16, 24))
    assert out.shape == (2, 8, 4, 6)
    assert "energy=l1" in repr(anchored)
    assert AnchoredConv2d(3, 8, 3, 2, padding=1, padding_mode="circular")(torch.randn(1, 3, 8, 8)).shape == (1, 8, 4, 4)


def test_errors() -> None:
    with pytest.raises(ValueError, match="zero padding"):
        AnchoredConv2d(3, 8, 3, 2, padding=1)
    with pytest.raises(ValueError, match="energy"):
        AnchoredConv2d(3, 8, 4, 4, energy="l3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"nn\.Conv2d"):
        AnchoredConv2d.from_conv(nn.Linear(3, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="17 x 16"):
        AnchoredConv2d(3, 8, 4, 4)(torch.randn(1, 3, 17, 16))
    with pytest.raises(ValueError, match="4-D"):
        AnchoredConv2d(3, 8, 4, 4)(torch.randn(3, 16, 16))


@given(data=st.data(), stride=st.sampled_from([(2, 2), (4, 4), (2, 3), (4, 2)]))
def test_output_of_shifted_input_is_a_roll(data: st.DataObject, stride: tuple[int, int]) -> None:
    x = data.draw(images(stride, max_blocks=4))
    shift = data.draw(shifts(x.shape[2], x.shape[3]))
    torch.manual_seed(0)
    conv = AnchoredConv2d(x.shape[1], 5, stride, stride, dtype=x.dtype)
    with torch.no_grad():
        reference, shifted = conv(x), conv(torch.roll(x, shift, dims=(2, 3)))
    # The anchored inputs are exact rolls of each other; the convolution may round differently at
    # different output positions (vectorised tails), so its outputs agree to rounding of the dtype.
    tolerance = (1e-5 if x.dtype == torch.float32 else 2e-2) * max(1.0, float(reference.abs().max()))
    for b in range(x.shape[0]):
        assert is_some_roll(shifted[b].float(), reference[b].float(), dims=(1, 2), atol=tolerance), f"sample {b}"


def test_gradients() -> None:
    torch.manual_seed(0)
    conv = AnchoredConv2d(2, 3, 2, 2, dtype=torch.float64)
    x = torch.randn(2, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    weight, bias = conv.weight.detach().requires_grad_(), conv.bias.detach().requires_grad_()

    def call(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(conv, {"weight": w, "bias": b}, (t,))

    assert torch.autograd.gradcheck(call, (x, weight, bias))
    assert torch.autograd.gradcheck(conv, (x,))
    assert torch.autograd.gradgradcheck(conv, (x,))
