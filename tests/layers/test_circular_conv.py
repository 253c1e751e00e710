"""circular_conv2d and CircularConv2d: circular padding in the input's layout, any grid size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from contract import LayerContract
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from equivit.layers import CircularConv2d, circular_conv2d, make_circular, make_conv_circular


def _reference(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The definition: pad by gathering rows and columns modulo the grid, then a valid convolution."""
    (ph, pw), (height, width) = conv.padding, x.shape[-2:]
    rows = torch.arange(-ph, height + ph) % height
    cols = torch.arange(-pw, width + pw) % width
    padded = x[..., rows, :][..., cols]
    return F.conv2d(padded, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


class TestCircularDepthwiseConv(LayerContract):
    """A ConvNeXt-style 7 x 7 depthwise convolution, stride 1, made circular: every shift commutes."""

    stride, max_blocks, gradient_blocks = 1, 9, (3, 4)
    energy_in_repr = False
    bad_inputs = ((lambda: torch.randn(1, 3, 6, 6), "expected input.* to have 4 channels"),)
    error_type = RuntimeError

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        return make_circular(self.make_stock().to(dtype))

    def make_stock(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Conv2d(4, 4, 7, padding=3, groups=4).eval()


def test_smoke_matches_torch_circular_padding() -> None:
    torch.manual_seed(0)
    torch_conv = nn.Conv2d(4, 6, 3, padding=1, padding_mode="circular")
    ours = make_circular(nn.Conv2d(4, 6, 3, padding=1))
    ours.load_state_dict(torch_conv.state_dict())
    assert isinstance(ours, CircularConv2d)
    assert list(ours.state_dict()) == ["weight", "bias"]
    x = torch.randn(2, 4, 9, 7)
    with torch.no_grad():
        assert torch.allclose(ours(x), torch_conv(x), atol=1e-6)


def test_errors() -> None:
    with pytest.raises(TypeError, match=r"expected an nn\.Conv2d"):
        make_circular(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="explicit padding"):
        make_circular(nn.Conv2d(2, 2, 3, padding="same"))

    class Other(nn.Conv2d):
        pass

    with pytest.raises(TypeError, match="Other is a subclass"):
        make_circular(Other(2, 2, 3, padding=1))
    with pytest.raises(ValueError, match="stride-1"):
        make_conv_circular(nn.Conv2d(2, 2, 3, stride=2, padding=1))


@given(
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    kernel=st.sampled_from([1, 3, 5, 7]),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    depthwise=st.booleans(),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_equals_the_definition_for_any_size(
    size: tuple[int, int], kernel: int, stride: int, dilation: int, depthwise: bool, channels_last: bool, seed: int
) -> None:
    """Grids smaller than the padding (ConvNeXt's 7 x 7 on a 2 x 3 grid wraps more than once) to 40 (border strips)."""
    torch.manual_seed(seed)
    channels = 4
    conv = make_circular(
        nn.Conv2d(
            channels, channels, kernel, stride, padding=dilation * (kernel - 1) // 2, dilation=dilation,
            groups=channels if depthwise else 1,
        )
    )  # fmt: skip
    x = torch.randn(2, channels, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(conv(x), _reference(x, conv), rtol=0, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize(("kernel", "dilation"), [(3, 1), (5, 1), (3, 2), (7, 1)])
def test_border_strips_of_large_depthwise_grids_equal_the_definition(
    kernel: int, dilation: int, stride: int, channels_last: bool
) -> None:
    """Grids of at least 32 x the padding: zero-padded interior, border rows and columns from strips."""
    torch.manual_seed(0)
    pad = dilation * (kernel - 1) // 2
    conv = make_circular(nn.Conv2d(4, 4, kernel, stride, padding=pad, dilation=dilation, groups=4))
    x = torch.randn(2, 4, 32 * pad + 1, 32 * pad + 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(conv(x), _reference(x, conv), rtol=0, atol=1e-5)
        if stride == 1:  # the strips are computed by the same convolution as the interior: bit for bit
            shift = (5, -7)
            assert torch.equal(conv(torch.roll(x, shift, dims=(2, 3))), torch.roll(conv(x), shift, dims=(2, 3)))


@given(
    shift=st.tuples(st.integers(-20, 20), st.integers(-20, 20)), size=st.tuples(st.integers(1, 9), st.integers(1, 9))
)
def test_stride_one_commutes_with_circular_shifts(shift: tuple[int, int], size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    conv = make_conv_circular(nn.Conv2d(3, 3, 7, padding=3, groups=3))
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        shifted, reference = conv(torch.roll(x, shift, dims=(2, 3))), conv(x)
    assert torch.allclose(shifted, torch.roll(reference, shift, dims=(2, 3)), atol=1e-5)


def test_gradients() -> None:
    conv = make_circular(nn.Conv2d(2, 3, 3, stride=2, padding=1)).double()
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (x,))
    assert torch.autograd.gradgradcheck(conv, (x,))
    weight = conv.weight
    assert torch.autograd.gradcheck(lambda w: circular_conv2d(x, w, None, (1, 1), (1, 1), (1, 1), 1), (weight,))
