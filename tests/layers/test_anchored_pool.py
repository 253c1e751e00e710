"""AnchoredMaxPool2d: the anchored, circularly padded stem pooling of ResNet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from contract import LayerContract
from hypothesis import given
from hypothesis import strategies as st
from timm.layers.pool2d_same import MaxPool2dSame
from torch import nn

import equivit
from equivit.cnn_policy import anchored_same_max_pool
from equivit.layers import AnchoredMaxPool2d
from equivit.layers.anchored_pool import keeps_grid, separable_max_pool2d
from equivit.testing.strategies import images, shifts
from helpers import is_some_roll


class TestStemMaxPool(LayerContract):
    """ResNet's stem pooling: 3 x 3, stride 2, padding 1 made circular (max pooling does not round)."""

    rtol = 0.0

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return AnchoredMaxPool2d.from_pool(self.make_stock())

    def make_stock(self) -> nn.Module:
        return nn.MaxPool2d(3, 2, 1)


class TestCeilModeMaxPool(LayerContract):
    """VoVNet's pooling: 3 x 3, stride 2, no padding, ceil mode (the last window wraps)."""

    rtol = 0.0

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return AnchoredMaxPool2d.from_pool(self.make_stock())

    def make_stock(self) -> nn.Module:
        return nn.MaxPool2d(3, 2, 0, ceil_mode=True)


def test_smoke_shape_and_reference() -> None:
    pool = AnchoredMaxPool2d.from_pool(nn.MaxPool2d(3, 2, 1))
    x = torch.randn(2, 4, 8, 12)
    out = pool(x)
    assert out.shape == (2, 4, 4, 6)
    assert "padding_mode=circular" in repr(pool)
    assert "energy=l1" in repr(pool)
    anchored, _ = equivit.polyphase_anchor(x, 2)
    reference = F.max_pool2d(F.pad(anchored, (1, 1, 1, 1), mode="circular"), 3, 2)
    assert torch.equal(out, reference)
    assert AnchoredMaxPool2d(2)(x).shape == (2, 4, 4, 6)  # stride defaults to the kernel
    assert AnchoredMaxPool2d(3, 2, 1)(torch.randn(1, 1, 2, 2)).shape == (1, 1, 1, 1)


@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_plain_pooling_with_the_input_layout(channels_last: bool) -> None:
    # The CPU path pools a channels-last copy: same maxima (NaN and infinities included), and the
    # output keeps the layout that nn.MaxPool2d would give.
    torch.manual_seed(0)
    x = torch.randn(3, 16, 12, 20)
    x[0, 2, 3, 4], x[1, 5, 6, 7], x[2, 0, 0, 0] = float("nan"), float("inf"), float("-inf")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pool = AnchoredMaxPool2d(3, 2, 1)
    out = pool(x)
    anchored = equivit.roll_to_anchor(x, equivit.anchor_offsets(x, 2))
    reference = nn.MaxPool2d(3, 2, 0)(F.pad(anchored, (1, 1, 1, 1), mode="circular"))
    assert torch.equal(out.isnan(), reference.isnan())
    assert torch.equal(out.nan_to_num(), reference.nan_to_num())
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@given(
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    size=st.tuples(st.integers(8, 19), st.integers(8, 19)),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_separable_max_pool_equals_max_pool(
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    size: tuple[int, int],
    dtype: torch.dtype,
    channels_last: bool,
    seed: int,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    # Few distinct values (many equal maxima), and NaN and infinities at random places.
    x = torch.randint(-3, 4, (2, 3, *size), generator=generator).to(dtype)
    special = torch.rand(x.shape, generator=generator)
    x[special < 0.02] = float("nan")
    x[(special >= 0.02) & (special < 0.04)] = float("inf")
    x[(special >= 0.04) & (special < 0.06)] = float("-inf")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = F.max_pool2d(x, kernel, stride, 0, dilation)
    out = separable_max_pool2d(x, kernel, stride, dilation)
    assert out.shape == expected.shape
    assert out.dtype == dtype
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out.nan_to_num(), expected.nan_to_num())
    assert out.data_ptr() != x.data_ptr()


def test_separable_max_pool_errors() -> None:
    with pytest.raises(ValueError, match=r"3x3 window .* does not fit the 2 x 5 input of shape \(1, 1, 2, 5\)"):
        separable_max_pool2d(torch.zeros(1, 1, 2, 5), (3, 3), (2, 2))


def test_separable_max_pool_gradient_and_compile() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64, requires_grad=True)  # no equal maxima
    assert torch.autograd.gradcheck(lambda t: separable_max_pool2d(t, (3, 3), (2, 2)), (x,))
    compiled = torch.compile(separable_max_pool2d, fullgraph=True, backend="aot_eager")
    assert torch.equal(
        compiled(x.detach(), (3, 2), (2, 3), (1, 2)), separable_max_pool2d(x.detach(), (3, 2), (2, 3), (1, 2))
    )


def test_gradient_is_that_of_max_pool() -> None:
    # With a gradient the layer pools with F.max_pool2d: equal maxima (zeros after a ReLU) send
    # the whole gradient to the first one, as the stock pooling does.
    x = torch.randn(2, 3, 8, 8).relu().requires_grad_()
    pool = AnchoredMaxPool2d(3, 2, 1)
    (grad,) = torch.autograd.grad(pool(x).sum(), x)
    offsets = equivit.anchor_offsets(x.detach(), 2)
    plain = x.detach().clone().requires_grad_()
    padded = F.pad(equivit.roll_to_anchor(plain, offsets), (1, 1, 1, 1), mode="circular")
    (expected,) = torch.autograd.grad(F.max_pool2d(padded, 3, 2).sum(), plain)
    assert torch.equal(grad, expected)
    assert torch.equal(pool(x.detach()), pool(x).detach())


def test_keeps_grid() -> None:
    assert keeps_grid(3, 2, 1)
    assert keeps_grid(7, 2, 3)
    assert keeps_grid(1, 2, 0)
    assert keeps_grid(4, 4, 0)
    assert keeps_grid((3, 1), (2, 2), (1, 0))
    assert not keeps_grid(3, 2, 0)
    assert not keeps_grid(3, 2, 2)
    assert not keeps_grid(3, 1, 0)


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"would not map H x W to H/2 x W/2"):
        AnchoredMaxPool2d(3, 2, 0)
    with pytest.raises(ValueError, match="energy"):
        AnchoredMaxPool2d(3, 2, 1, energy="l3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"nn\.MaxPool2d"):
        AnchoredMaxPool2d.from_pool(nn.AvgPool2d(2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ceil_mode=True would not map"):  # torch adds a window: H/2 + 1
        AnchoredMaxPool2d.from_pool(nn.MaxPool2d(3, 2, 1, ceil_mode=True))
    with pytest.raises(ValueError, match="return_indices"):
        AnchoredMaxPool2d.from_pool(nn.MaxPool2d(3, 2, 1, return_indices=True))
    with pytest.raises(
        ValueError, match=r"17 x 16 .* \(1, 3, 17, 16\) is not a positive multiple of the stride \(2, 2\)"
    ):
        AnchoredMaxPool2d(3, 2, 1)(torch.randn(1, 3, 17, 16))
    with pytest.raises(ValueError, match="4-D"):
        AnchoredMaxPool2d(3, 2, 1)(torch.randn(3, 16, 16))


@given(
    data=st.data(),
    config=st.sampled_from([(3, 2, 1, False), (2, 2, 0, False), (3, 3, 1, False), (5, 4, 2, False), (3, 2, 0, True)]),
)
def test_output_of_shifted_input_is_a_roll(data: st.DataObject, config: tuple[int, int, int, bool]) -> None:
    kernel, stride, padding, ceil_mode = config
    x = data.draw(images(stride, max_blocks=4))
    shift = data.draw(shifts(x.shape[2], x.shape[3]))
    pool = AnchoredMaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)
    reference, shifted = pool(x), pool(torch.roll(x, shift, dims=(2, 3)))
    for b in range(x.shape[0]):  # max pooling does not round: exact
        assert is_some_roll(shifted[b], reference[b], dims=(1, 2)), f"sample {b}"


@given(data=st.data())
def test_shift_by_whole_strides_rolls_by_the_shift_over_the_stride(data: st.DataObject) -> None:
    x = data.draw(images(2, max_blocks=4))
    blocks = data.draw(shifts(x.shape[2] // 2, x.shape[3] // 2))
    pool = AnchoredMaxPool2d(3, 2, 1)
    shifted = pool(torch.roll(x, (2 * blocks[0], 2 * blocks[1]), dims=(2, 3)))
    assert torch.equal(shifted, torch.roll(pool(x), blocks, dims=(2, 3)))


def test_ceil_mode_wraps_the_last_window() -> None:
    """VoVNet's 3 x 3, stride 2 pooling without padding in ceil mode: the window that overhangs the end wraps."""
    x = torch.randn(2, 3, 8, 12)
    stock = nn.MaxPool2d(3, 2, 0, ceil_mode=True)
    pool = AnchoredMaxPool2d.from_pool(stock)
    anchored, _ = equivit.polyphase_anchor(x, 2)
    assert pool(x).shape == stock(x).shape == (2, 3, 4, 6)
    expected = nn.functional.max_pool2d(nn.functional.pad(anchored, (0, 1, 0, 1), mode="circular"), 3, 2)
    assert torch.equal(pool(x), expected)


class TestSameMaxPool(LayerContract):
    """The ResNetV2 'same' stem's pooling (ViT hybrids): TensorFlow-same 3 x 3, stride 2, padded at the end."""

    rtol = 0.0

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return anchored_same_max_pool(self.make_stock(), "pool", "l1")

    def make_stock(self) -> nn.Module:
        return MaxPool2dSame(3, 2)


@pytest.mark.parametrize(("kernel", "stride"), [(3, 2), (2, 2), (5, 2), (3, 1), (4, 4)])
def test_same_max_pool_keeps_tensorflow_padding_split_made_circular(kernel: int, stride: int) -> None:
    """The uneven 'same' split (the odd row and column at the end) is kept; the padding wraps around."""
    x = torch.randn(2, 3, 8, 12)
    stock = MaxPool2dSame(kernel, stride)
    pool = anchored_same_max_pool(stock, "pool", "l1")
    total = kernel - stride
    before, after = total // 2, total - total // 2
    anchored, _ = equivit.polyphase_anchor(x, stride)
    expected = F.max_pool2d(F.pad(anchored, (before, after, before, after), mode="circular"), kernel, stride)
    assert pool(x).shape == stock(x).shape
    assert torch.equal(pool(x), expected)


def test_same_max_pool_errors() -> None:
    with pytest.raises(equivit.UnsupportedModelError, match="MaxPool2dSame"):
        anchored_same_max_pool(MaxPool2dSame(1, 2), "stem.pool", "l1")  # a window shorter than the stride
