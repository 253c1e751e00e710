"""Weight-standardised convolutions of BiT and NFNet: circular padding, anchored when strided."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from contract import LayerContract
from timm.layers.std_conv import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from torch import nn

import equivit
from equivit.layers import CircularScaledStdConv2dSame, CircularStdConv2d, circular_std_conv


def _conv(cls: type[nn.Conv2d], stride: int, dtype: torch.dtype = torch.float32, **kwargs: object) -> nn.Conv2d:
    torch.manual_seed(0)
    return cls(4, 4, 3, stride=stride, **kwargs).to(dtype).eval()  # type: ignore[call-arg]


class TestStridedStdConv(LayerContract):
    stride = 2
    bad_inputs = (
        (lambda: torch.randn(1, 4, 6, 5), r"6 x 5 of input shape \(1, 4, 6, 5\) is not a positive multiple"),
        (lambda: torch.randn(4, 6, 6), "4-D"),
    )

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return circular_std_conv(_conv(StdConv2d, 2, dtype, padding=1))

    def make_stock(self) -> nn.Module:
        return _conv(StdConv2d, 2, padding=1)


class TestStridedScaledStdConvSame(LayerContract):
    """NFNet-F's TensorFlow "same" padding: 0 before, 1 after at stride 2, made circular."""

    stride = 2

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return circular_std_conv(_conv(ScaledStdConv2dSame, 2, dtype))

    def make_stock(self) -> nn.Module:
        return _conv(ScaledStdConv2dSame, 2)


class TestScaledStdConv(LayerContract):
    """Stride 1: no anchor, circular padding only."""

    stride = 1
    bad_inputs = ((lambda: torch.randn(1, 3, 6, 6), "expected input.* to have 4 channels"),)
    error_type = RuntimeError

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return circular_std_conv(_conv(ScaledStdConv2d, 1, dtype, padding=1))

    def make_stock(self) -> nn.Module:
        return _conv(ScaledStdConv2d, 1, padding=1)


def test_same_padding_keeps_the_uneven_split_and_the_parameters() -> None:
    stock = _conv(StdConv2dSame, 2)
    layer = circular_std_conv(stock)
    x = torch.randn(2, 4, 8, 6)
    anchored, _ = equivit.polyphase_anchor(x, 2)
    reference = _conv(StdConv2dSame, 2)
    reference.same_pad = False
    expected = reference(F.pad(anchored, (0, 1, 0, 1), mode="circular"))
    assert torch.allclose(layer(x), expected, atol=1e-6, rtol=0)
    assert layer.state_dict().keys() == stock.state_dict().keys()
    assert stock.same_pad  # the stock module is left as it was
    assert isinstance(layer, StdConv2dSame)


def test_errors() -> None:
    with pytest.raises(TypeError, match="StdConv2d"):
        circular_std_conv(nn.Conv2d(3, 3, 3))
    with pytest.raises(ValueError, match="energy"):
        circular_std_conv(_conv(StdConv2d, 1, padding=1), energy="l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not map H x W to H/s x W/s"):
        circular_std_conv(_conv(StdConv2d, 2, padding=0))
    with pytest.raises(ValueError, match="non-square stride"):
        circular_std_conv(StdConv2d(4, 4, 3, stride=(2, 1), padding=1))


def test_declared_and_accepted_by_the_audit() -> None:
    from equivit.audit import equivariance_violations

    model = nn.Sequential(
        circular_std_conv(_conv(StdConv2d, 2, padding=1)), circular_std_conv(_conv(ScaledStdConv2dSame, 2))
    )
    assert equivariance_violations(model) == []
    assert isinstance(model[0], CircularStdConv2d)
    assert isinstance(model[1], CircularScaledStdConv2dSame)
    assert equivariance_violations(nn.Sequential(_conv(StdConv2d, 2, padding=1)))  # the stock one is flagged
