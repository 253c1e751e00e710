"""anchored_residual: any residual block whose main path and shortcut both downsample, anchored once."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch
from contract import LayerContract
from timm.layers import BatchNormAct2d, create_conv2d
from timm.models import regnet, resnetv2
from torch import nn

import equivit
from equivit.layers import AnchoredConv2d, AnchoredDownsample, anchored_entry, anchored_residual, make_circular
from equivit.testing import assert_shift_equivariant, make_images, perturb_weights_


def _regnet_block(dtype: torch.dtype = torch.float32, downsample: str = "conv1x1") -> nn.Module:
    torch.manual_seed(0)
    block = regnet.Bottleneck(4, 4, stride=2, group_size=2, se_ratio=0.25, downsample=downsample)
    return perturb_weights_(block).to(dtype).eval()


class TestAnchoredRegNetBottleneck(LayerContract):
    stride = 2
    bad_inputs = (
        (lambda: torch.randn(1, 4, 6, 5), r"6 x 5 of input shape \(1, 4, 6, 5\) is not a positive multiple"),
        (lambda: torch.randn(4, 6, 6), "4-D"),
    )

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return anchored_residual(_regnet_block(dtype), 2, ("conv2", "downsample")).eval()

    def make_stock(self) -> nn.Module:
        return _regnet_block()


class TestAnchoredPreActBottleneck(LayerContract):
    stride = 2
    output_channels = 8

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return anchored_residual(self.make_stock().to(dtype), 2, ("conv2", "downsample"), energy="l2").eval()

    def make_stock(self) -> nn.Module:
        torch.manual_seed(0)
        block = resnetv2.PreActBottleneck(
            4,
            8,
            stride=2,
            bottle_ratio=0.5,
            conv_layer=create_conv2d,
            norm_layer=BatchNormAct2d,
            proj_layer=resnetv2.DownsampleConv,
        )
        return perturb_weights_(block).eval()


def test_one_anchor_for_both_paths() -> None:
    """Anchoring the main path and the shortcut each on its own input would misalign their sum."""
    stock = _regnet_block()
    block = anchored_residual(stock, 2, ("conv2", "downsample"))
    assert type(block).__name__ == "AnchoredBottleneck"
    assert isinstance(block, regnet.Bottleneck)
    assert block.conv2.conv.weight is stock.conv2.conv.weight  # the stock block's own parameters
    assert stock.conv2.conv.padding_mode == "zeros"  # and the stock block is left as it was
    assert list(block.state_dict()) == list(stock.state_dict())
    assert type(anchored_residual(_regnet_block(), 2, ("conv2", "downsample"))) is type(block)  # one class


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"conv2\.conv: a strided convolution .* must be one of \('downsample',\)"):
        anchored_residual(_regnet_block(), 2, ("downsample",))
    with pytest.raises(ValueError, match="block stride 4"):
        anchored_residual(_regnet_block(), 4, ("conv2", "downsample"))


def test_a_saved_model_loads_in_a_new_process(tmp_path) -> None:
    """Generated classes are found by name when unpickled, also where none was generated yet."""
    block = anchored_residual(_regnet_block(), 2, ("conv2", "downsample"))
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.save({"block": block, "x": x, "y": block(x)}, tmp_path / "block.pt")
    code = (
        "import torch; saved = torch.load({!r}, weights_only=False); "
        "assert type(saved['block']).__name__ == 'AnchoredBottleneck'; "
        "assert torch.equal(saved['block'](saved['x']), saved['y'])"
    ).format(str(tmp_path / "block.pt"))
    subprocess.run([sys.executable, "-c", code], check=True)


def _two_strided_paths(dtype: torch.dtype = torch.float32) -> nn.Module:
    """A stem whose two paths downsample apart and meet: a strided 3x3 conv path and a pooled 1x1 path."""

    class TwoPaths(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(4, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1))
            self.pool = nn.Sequential(nn.AvgPool2d(4, 4), nn.Conv2d(4, 4, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) + self.pool(x)

    torch.manual_seed(0)
    return TwoPaths().to(dtype).eval()


class TestAnchoredEntry(LayerContract):
    """One anchor of period 4 on the input; inside, plain strided circular convolutions and poolings."""

    stride = 4
    bad_inputs = (
        (lambda: torch.randn(1, 4, 8, 6), r"8 x 6 of input shape \(1, 4, 8, 6\) is not a positive multiple of the"),
        (lambda: torch.randn(4, 8, 8), "4-D"),
    )

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        stem = _two_strided_paths(dtype)
        for conv in (stem.conv[0], stem.conv[2]):
            make_circular(conv)
        return anchored_entry(stem, 4).eval()

    def make_stock(self) -> nn.Module:
        return _two_strided_paths()


def test_anchoring_each_path_alone_misaligns_them() -> None:
    """Negative control: an anchor per strided layer lets the two paths pick different phases."""
    stem = _two_strided_paths()
    stem.conv[0] = AnchoredConv2d.from_conv(stem.conv[0], padding_mode="circular")
    stem.conv[2] = AnchoredConv2d.from_conv(stem.conv[2], padding_mode="circular")
    stem.pool[0] = AnchoredDownsample(stem.pool[0])
    x = make_images("random", (4, 4, 16, 16), seed=0).float()
    with pytest.raises(AssertionError, match="not shift-equivariant"), torch.no_grad():
        assert_shift_equivariant(stem, x, shifts_per_input=4)


def test_entry_errors() -> None:
    with pytest.raises(ValueError, match="positive int period"):
        anchored_entry(nn.Conv2d(3, 3, 3), 0)
    with pytest.raises(ValueError, match="energy"):
        anchored_entry(nn.Conv2d(3, 3, 3), 2, energy="l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already anchors its input"):
        anchored_entry(anchored_residual(_regnet_block(), 2, ("conv2", "downsample")), 4)


def test_an_entry_keeps_its_state_dict_and_pickles() -> None:
    stem = _two_strided_paths()
    entry = anchored_entry(stem, 4)
    assert entry.state_dict().keys() == stem.state_dict().keys()
    assert type(entry).__name__ == "AnchoredTwoPaths"
    assert "period=4" in repr(entry)


def test_a_sliced_sequential_entry_keeps_the_anchor_where_the_images_enter() -> None:
    """timm's forward_intermediates slices stems (VoVNet: ``stem[:-1]`` then ``stem[-1]``)."""
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1, padding_mode="circular"), nn.ReLU(), nn.Conv2d(4, 4, 1))
    entry = anchored_entry(stem, 4)
    head, tail = entry[:-1], entry[1:]
    assert isinstance(head, type(entry))
    assert (head.anchor_period, head.energy) == (4, "l1")
    assert type(tail) is nn.Sequential
    assert entry[-1] is entry[2]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(entry[-1](head(x)), entry(x))


@pytest.mark.parametrize("name", ["ese_vovnet19b_slim_dw", "nf_regnet_b0"])
def test_forward_intermediates_runs_the_input_anchor(name: str) -> None:
    """VoVNet slices its stem and NFNet runs its stem's children one by one in forward_intermediates."""
    torch.manual_seed(0)
    model = equivit.convert(timm.create_model(name)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, _ = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
