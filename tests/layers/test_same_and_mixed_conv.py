"""TensorFlow "same" convolutions (timm's Conv2dSame) and MixNet's MixedConv2d, anchored."""

from __future__ import annotations

import pytest
import torch
from contract import LayerContract
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.mixed_conv2d import MixedConv2d
from torch import nn

import equivit
from equivit.layers import AnchoredConv2d, AnchoredMixedConv2d


def _same(kernel: int, stride: int, dtype: torch.dtype = torch.float32) -> Conv2dSame:
    torch.manual_seed(0)
    return Conv2dSame(4, 4, kernel, stride, bias=True).to(dtype).eval()


class TestAnchoredSameConv(LayerContract):
    stride = 2

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return AnchoredConv2d.from_same_conv(_same(3, 2, dtype)).eval()

    def make_stock(self) -> nn.Module:
        return _same(3, 2)


class TestAnchoredWideSameConv(LayerContract):
    stride = 2

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return AnchoredConv2d.from_same_conv(_same(5, 2, dtype), energy="l2").eval()

    def make_stock(self) -> nn.Module:
        return _same(5, 2)


def _mixed(dtype: torch.dtype = torch.float32) -> MixedConv2d:
    torch.manual_seed(0)
    return MixedConv2d(4, 4, [3, 5], stride=2, padding="", depthwise=True).to(dtype).eval()


class TestAnchoredMixedConv(LayerContract):
    stride = 2
    bad_inputs = (
        (lambda: torch.randn(1, 4, 6, 5), r"6 x 5 of input shape \(1, 4, 6, 5\) is not a positive multiple"),
        (lambda: torch.randn(4, 6, 6), "4-D"),
    )

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return AnchoredMixedConv2d.from_mixed(_mixed(dtype)).eval()

    def make_stock(self) -> nn.Module:
        return _mixed()


@pytest.mark.parametrize(("kernel", "before", "after"), [(3, 0, 1), (5, 1, 2), (2, 0, 0), (4, 1, 1)])
def test_same_conv_is_the_tensorflow_padding_made_circular(kernel: int, before: int, after: int) -> None:
    """On an anchored input: pad ``t // 2`` before and the rest after, circularly, then a valid convolution."""
    stock = _same(kernel, 2)
    layer = AnchoredConv2d.from_same_conv(stock)
    assert layer.weight is stock.weight
    x = torch.randn(2, 4, 8, 12)
    anchored, _ = equivit.polyphase_anchor(x, 2)
    padded = nn.functional.pad(anchored, (before, after, before, after), mode="circular")
    expected = nn.functional.conv2d(padded, stock.weight, stock.bias, 2)
    assert expected.shape == (2, 4, 4, 6)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)
    # Away from the border the stock convolution computes the same on the anchored input.
    inner = stock(anchored)[:, :, 1:-1, 1:-1]
    torch.testing.assert_close(layer(x)[:, :, 1:-1, 1:-1], inner, rtol=0, atol=1e-6)


def test_mixed_groups_share_one_anchor() -> None:
    """Each group anchored on its own channels would pick its own phase; one anchor keeps them aligned."""
    mixed = _mixed()
    layer = AnchoredMixedConv2d.from_mixed(mixed)
    assert layer.equivit_anchored_children == ("0", "1")
    x = torch.randn(3, 4, 8, 8)
    anchored, _ = equivit.polyphase_anchor(x, 2)
    splits = torch.split(anchored, mixed.splits, 1)
    expected = torch.cat([conv(part) for conv, part in zip(mixed.values(), splits, strict=True)], 1)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)


def test_errors() -> None:
    with pytest.raises(TypeError, match="MixedConv2d"):
        AnchoredMixedConv2d.from_mixed(nn.Conv2d(1, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="computes its padding"):
        AnchoredConv2d.from_same_conv(nn.Conv2d(4, 4, 3, 2, padding=1))
    with pytest.raises(ValueError, match="energy"):
        AnchoredMixedConv2d.from_mixed(_mixed(), energy="l3")  # type: ignore[arg-type]
