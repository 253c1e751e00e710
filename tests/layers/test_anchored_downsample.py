"""AnchoredDownsample: anti-aliased downsampling (blur or average pooling) on an anchored input."""

from __future__ import annotations

import pytest
import torch
from contract import LayerContract
from timm.layers import BlurPool2d
from torch import nn

import equivit
from equivit.layers import AnchoredDownsample, make_pool_circular


class TestAnchoredBlurPool(LayerContract):
    stride = 2
    bad_inputs = (
        (lambda: torch.randn(1, 4, 6, 5), r"6 x 5 of input shape \(1, 4, 6, 5\) is not a positive multiple"),
        (lambda: torch.randn(4, 6, 6), "4-D"),
    )

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return AnchoredDownsample(BlurPool2d(self.channels, filt_size=3, stride=2).to(dtype)).eval()

    def make_stock(self) -> nn.Module:
        return BlurPool2d(self.channels, filt_size=3, stride=2).eval()


class TestAnchoredAvgPool(LayerContract):
    stride = 2

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return AnchoredDownsample(nn.AvgPool2d(2, 2)).eval()

    def make_stock(self) -> nn.Module:
        return nn.AvgPool2d(2, 2).eval()


class TestAnchoredPaddedAvgPool(LayerContract):
    """ResNeSt's 3 x 3 average pooling of stride 2 with padding 1: the padding is applied circularly."""

    stride = 2

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return AnchoredDownsample(nn.AvgPool2d(3, 2, padding=1)).eval()

    def make_stock(self) -> nn.Module:
        return nn.AvgPool2d(3, 2, padding=1).eval()


def test_padded_average_pooling_pads_circularly() -> None:
    x = torch.randn(2, 4, 8, 6)
    layer = AnchoredDownsample(nn.AvgPool2d(3, 2, padding=1, count_include_pad=False))
    anchored, _ = equivit.polyphase_anchor(x, 2)
    expected = nn.functional.avg_pool2d(nn.functional.pad(anchored, (1, 1, 1, 1), mode="circular"), 3, 2)
    assert torch.allclose(layer(x), expected, atol=1e-6, rtol=0)
    assert "circular padding 1" in repr(layer)


class TestAnchoredWideBlurPool(LayerContract):
    stride = 2
    channels = 3
    output_channels = 3

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return AnchoredDownsample(BlurPool2d(None, filt_size=5, stride=2).to(dtype), energy="l2").eval()

    def make_stock(self) -> nn.Module:
        return BlurPool2d(None, filt_size=5, stride=2).eval()


def test_blur_is_kept_and_made_circular() -> None:
    blur = BlurPool2d(4, filt_size=3, stride=2)
    layer = AnchoredDownsample(blur)
    assert layer.pool is blur
    assert blur.pad_mode == "circular"
    assert layer.state_dict() == {}  # the filter is a non-persistent buffer: state dicts are unchanged
    x = torch.randn(2, 4, 8, 12)
    anchored, _ = equivit.polyphase_anchor(x, 2)
    wrapped = nn.functional.pad(anchored, (1, 1, 1, 1), mode="circular")
    expected = nn.functional.conv2d(wrapped, blur.filt, stride=2, groups=4)
    assert torch.allclose(layer(x), expected, atol=1e-6, rtol=0)


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="changes the grid"):
        AnchoredDownsample(BlurPool2d(4, filt_size=5, stride=4))
    with pytest.raises(ValueError, match="ceil_mode=True does not map"):
        AnchoredDownsample(nn.AvgPool2d(3, 2, padding=1, ceil_mode=True))
    with pytest.raises(ValueError, match="only poolings without padding"):
        AnchoredDownsample(nn.AvgPool2d(3, 2, ceil_mode=True))  # the last window overhangs
    with pytest.raises(ValueError, match="square strides"):
        AnchoredDownsample(nn.AvgPool2d((2, 1), (2, 1)))
    with pytest.raises(TypeError, match=r"BlurPool2d or nn\.AvgPool2d"):
        make_pool_circular(nn.MaxPool2d(2, 2))
    with pytest.raises(ValueError, match="energy"):
        AnchoredDownsample(nn.AvgPool2d(2, 2), energy="l3")  # type: ignore[arg-type]
