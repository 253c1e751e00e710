"""CircularPosConv and make_conv_circular: positional encodings that commute with rolls."""

from __future__ import annotations

import pytest
import torch
from contract import LayerContract
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from equivit.layers import CircularPosConv, make_conv_circular


def _random(layer: CircularPosConv, seed: int = 0) -> CircularPosConv:
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in layer.parameters():
            param.normal_()
    return layer


class _Residual(nn.Module):
    """``x + conv(x)``: the stock counterpart of the encoding, with zero padding."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class TestCircularPosConv(LayerContract):
    """The positional encoding ``x + dwconv(x)`` with trained-like weights; stock: zero padding."""

    stride, max_blocks, gradient_blocks = 1, 9, (3, 4)
    energy_in_repr = False
    bad_inputs = ((lambda: torch.randn(1, 3, 6, 6), "expected input.* to have 4 channels"),)
    error_type = RuntimeError

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return _random(CircularPosConv(4, dtype=dtype))

    def make_stock(self) -> nn.Module:
        stock = nn.Conv2d(4, 4, 3, 1, 1, groups=4)
        stock.load_state_dict(self.make().proj.state_dict())
        return _Residual(stock)

    def parameters_shared(self, layer: nn.Module, stock: nn.Module) -> bool:
        return torch.equal(layer.proj.weight, stock.conv.weight)


def test_smoke_starts_as_identity() -> None:
    layer = CircularPosConv(8)
    x = torch.randn(2, 8, 5, 7)
    assert torch.equal(layer(x), x)
    assert layer.proj.padding_mode == "circular"
    assert layer.proj.groups == 8


def test_errors() -> None:
    with pytest.raises(ValueError, match="odd"):
        CircularPosConv(8, kernel_size=4)
    with pytest.raises(ValueError, match="dim"):
        CircularPosConv(0)
    with pytest.raises(ValueError, match="stride"):
        make_conv_circular(nn.Conv2d(4, 4, 3, 2, 1))
    with pytest.raises(ValueError, match="same"):
        make_conv_circular(nn.Conv2d(4, 4, 3, 1, 0))
    with pytest.raises(TypeError):
        make_conv_circular(nn.Linear(4, 4))  # type: ignore[arg-type]


@given(
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    shift=st.tuples(st.integers(-20, 20), st.integers(-20, 20)),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_commutes_with_rolls(height: int, width: int, shift: tuple[int, int], dtype: torch.dtype) -> None:
    layer = _random(CircularPosConv(4, dtype=dtype))
    x = torch.randn(2, 4, height, width, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(layer(torch.roll(x, shift, dims=(2, 3))), torch.roll(layer(x), shift, dims=(2, 3)))


def test_gradients() -> None:
    layer = _random(CircularPosConv(3, dtype=torch.float64))
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    assert torch.autograd.gradgradcheck(layer, (x,))
