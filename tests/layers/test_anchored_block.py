"""AnchoredBasicBlock and AnchoredBottleneck: one anchor for the main path and the downsample shortcut."""

from __future__ import annotations

import functools

import pytest
import torch
from contract import LayerContract
from hypothesis import given
from hypothesis import strategies as st
from timm.models.resnet import BasicBlock, Bottleneck, downsample_avg, downsample_conv
from torch import nn

from equivit.layers import AnchoredBasicBlock, AnchoredBottleneck, AnchoredConv2d
from equivit.testing.strategies import images, shifts
from helpers import is_some_roll

CHANNELS = 4


def _randomise_batch_norms_(module: nn.Module, seed: int) -> nn.Module:
    """Trained-looking batch norms (weights away from 1 and 0, running statistics away from 0 and 1), eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, nn.BatchNorm2d):
                shape = norm.weight.shape
                norm.weight.copy_(1 + 0.5 * torch.randn(shape, generator=generator))
                norm.bias.copy_(0.2 * torch.randn(shape, generator=generator))
                norm.running_mean.copy_(0.2 * torch.randn(shape, generator=generator))
                norm.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
    return module.eval()


def _stock(kind: str, dtype: torch.dtype = torch.float32, avg_down: bool = False) -> nn.Module:
    torch.manual_seed(0)
    block_type = BasicBlock if kind == "basic" else Bottleneck
    out = 8 * block_type.expansion
    make_downsample = downsample_avg if avg_down else downsample_conv
    downsample = make_downsample(CHANNELS, out, 1, stride=2, dtype=dtype)
    block = block_type(CHANNELS, 8, 2, downsample, dtype=dtype)
    return _randomise_batch_norms_(block, seed=1)


@functools.cache
def _anchored(kind: str, avg_down: bool = False) -> nn.Module:
    cls = AnchoredBasicBlock if kind == "basic" else AnchoredBottleneck
    return cls.from_timm(_stock(kind, avg_down=avg_down))  # type: ignore[arg-type]


class TestAnchoredBasicBlock(LayerContract):
    """ResNet's strided basic block with a 1 x 1 convolution shortcut, trained-looking batch norms."""

    output_channels = 8

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return AnchoredBasicBlock.from_timm(_stock("basic", dtype))  # type: ignore[arg-type]

    def make_stock(self) -> nn.Module:
        return _stock("basic")


class TestAnchoredBottleneck(LayerContract):
    """ResNet-D's strided bottleneck: average-pooled shortcut."""

    output_channels = 32

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return AnchoredBottleneck.from_timm(_stock("bottleneck", dtype, avg_down=True))  # type: ignore[arg-type]

    def make_stock(self) -> nn.Module:
        return _stock("bottleneck", avg_down=True)


@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
def test_smoke_shape_and_shared_parameters(kind: str) -> None:
    stock = _stock(kind)
    cls = AnchoredBasicBlock if kind == "basic" else AnchoredBottleneck
    anchored = cls.from_timm(stock)  # type: ignore[arg-type]
    assert isinstance(anchored, type(stock))
    assert anchored.conv1.weight is stock.conv1.weight
    assert anchored.downsample[1].running_mean is stock.downsample[1].running_mean
    assert anchored.conv1 is not stock.conv1  # own modules: the stock block keeps its zero padding
    assert stock.conv2.padding_mode == "zeros"
    assert all(m.padding_mode == "circular" for m in anchored.modules() if isinstance(m, nn.Conv2d))
    assert list(anchored.state_dict()) == list(stock.state_dict())
    anchored.load_state_dict(stock.state_dict(), strict=True)
    assert not anchored.training
    out = anchored(torch.randn(2, CHANNELS, 8, 12))
    assert out.shape == (2, 8 * stock.expansion, 4, 6)
    assert "period=2, energy=l1" in repr(anchored)


def test_constructor() -> None:
    block = AnchoredBottleneck(
        CHANNELS, 8, 2, downsample_avg(CHANNELS, 32, 1, stride=2, dtype=torch.float64), dtype=torch.float64
    )
    assert block.conv1.weight.dtype == torch.float64
    assert block.conv2.padding_mode == "circular"
    assert block(torch.randn(1, CHANNELS, 6, 4, dtype=torch.float64)).shape == (1, 32, 3, 2)
    assert AnchoredBasicBlock(CHANNELS, CHANNELS, 1)(torch.randn(1, CHANNELS, 5, 3)).shape == (1, CHANNELS, 5, 3)


def test_errors() -> None:
    downsample = downsample_conv(CHANNELS, 8, 1, stride=2)
    with pytest.raises(ValueError, match="DropBlock"):
        AnchoredBasicBlock(CHANNELS, 8, 2, downsample, drop_block=nn.Dropout2d)
    with pytest.raises(ValueError, match=r"aa: a pooling .* must be one of .* have the block stride 2"):
        AnchoredBasicBlock(CHANNELS, 8, 2, downsample, aa_layer=lambda channels, stride: nn.AvgPool2d(4, 4))
    with pytest.raises(ValueError, match=r"downsample\.0: a strided convolution .* padding \(0, 0\)"):
        AnchoredBasicBlock(CHANNELS, 8, 2, nn.Sequential(nn.Conv2d(CHANNELS, 8, 3, 2), nn.BatchNorm2d(8)))
    strided_conv1 = Bottleneck(CHANNELS, 8, 2, downsample_conv(CHANNELS, 32, 1, stride=2))
    strided_conv1.conv1.stride = (2, 2)
    expected = r"conv1: a strided convolution .* must be one of \('conv2', 'aa', 'downsample'\)"
    with pytest.raises(ValueError, match=expected):
        AnchoredBottleneck.from_timm(strided_conv1)
    with pytest.raises(ValueError, match="energy"):
        AnchoredBasicBlock(CHANNELS, 8, 2, downsample, energy="l3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="BasicBlock"):
        AnchoredBasicBlock.from_timm(_stock("bottleneck"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Bottleneck"):
        AnchoredBottleneck.from_timm(nn.Conv2d(1, 1, 1))  # type: ignore[arg-type]
    block = _anchored("basic")
    with pytest.raises(
        ValueError, match=r"17 x 16 .* \(1, 4, 17, 16\) is not a positive multiple of the block stride 2"
    ):
        block(torch.randn(1, CHANNELS, 17, 16))
    with pytest.raises(ValueError, match="4-D"):
        block(torch.randn(CHANNELS, 16, 16))


def _inputs(data: st.DataObject) -> torch.Tensor:
    shape = (data.draw(st.integers(1, 3)), CHANNELS, 2 * data.draw(st.integers(1, 4)), 2 * data.draw(st.integers(1, 4)))
    return data.draw(images(shape=shape))


@given(data=st.data(), config=st.sampled_from([("basic", False), ("bottleneck", False), ("bottleneck", True)]))
def test_output_of_shifted_input_is_a_roll(data: st.DataObject, config: tuple[str, bool]) -> None:
    block = _anchored(*config)
    x = _inputs(data)
    shift = data.draw(shifts(x.shape[2], x.shape[3]))
    with torch.no_grad():
        reference, shifted = block(x), block(torch.roll(x, shift, dims=(2, 3)))
    # The anchored inputs are exact rolls of each other; the convolutions round differently at
    # different positions, by float32 rounding of the outputs.
    tolerance = 1e-6 * max(1.0, float(reference.abs().max()))
    for b in range(x.shape[0]):
        assert is_some_roll(shifted[b], reference[b], dims=(1, 2), atol=tolerance), f"sample {b}"


@given(data=st.data(), kind=st.sampled_from(["basic", "bottleneck"]))
def test_shift_by_whole_strides_rolls_by_the_shift_over_the_stride(data: st.DataObject, kind: str) -> None:
    block = _anchored(kind)
    x = _inputs(data)
    blocks = data.draw(shifts(x.shape[2] // 2, x.shape[3] // 2))
    with torch.no_grad():
        expected = torch.roll(block(x), blocks, dims=(2, 3))
        shifted = block(torch.roll(x, (2 * blocks[0], 2 * blocks[1]), dims=(2, 3)))
    assert torch.allclose(shifted, expected, rtol=0, atol=1e-6 * max(1.0, float(expected.abs().max())))


def test_anchoring_the_two_paths_separately_is_not_equivariant() -> None:
    """Why one shared anchor: in a bottleneck, conv2 sees conv1's output and the shortcut sees the
    block input; anchored each on its own, they can pick different phases and the sum is misaligned."""
    separate = AnchoredBottleneck.from_timm(_stock("bottleneck"))  # type: ignore[arg-type]
    separate.__class__ = Bottleneck  # no shared anchor ...
    for parent, child in ((separate, "conv2"), (separate.downsample, "0")):  # ... but each path anchored
        conv = getattr(parent, child)
        new = AnchoredConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                             bias=False, padding_mode="circular")  # fmt: skip
        new.load_state_dict(conv.state_dict())
        setattr(parent, child, new)
    shared = _anchored("bottleneck")
    torch.manual_seed(2)
    x = torch.randn(8, CHANNELS, 8, 8)
    with torch.no_grad():
        results = {}
        for name, block in (("separate", separate), ("shared", shared)):
            reference, shifted = block(x), block(torch.roll(x, (1, 3), dims=(2, 3)))
            results[name] = [is_some_roll(shifted[b], reference[b], dims=(1, 2), atol=1e-5) for b in range(8)]
    assert all(results["shared"])
    assert not all(results["separate"]), results
