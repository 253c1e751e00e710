"""equivit.upsample: whole-factor circular upsampling, and the image's anchor undone at input resolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import equivit
from equivit.testing import FAMILIES, make_images
from equivit.upsample import EquivariantUpsample, circular_upsample, upsample_to_image
from helpers import assert_moves_with_shift

DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def test_smoke_shapes_nearest_and_bilinear() -> None:
    x = torch.randn(2, 3, 5, 7)
    assert circular_upsample(x, (2, 3)).shape == (2, 3, 10, 21)
    assert circular_upsample(x, 1) is x
    nearest = circular_upsample(x, 2, mode="nearest")
    assert torch.equal(nearest, x.repeat_interleave(2, 2).repeat_interleave(2, 3))
    # Bilinear agrees with F.interpolate on the circularly padded map (weights rounded once, here per phase).
    padded = F.interpolate(F.pad(x, (1, 1, 1, 1), mode="circular"), scale_factor=(2.0, 3.0), mode="bilinear")
    reference = padded[:, :, 2:-2, 3:-3]
    assert torch.allclose(circular_upsample(x, (2, 3)), reference, rtol=0, atol=2e-6)
    # ... whose border differs from plain (clamped) bilinear interpolation.
    plain = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    assert not torch.allclose(circular_upsample(x, 2)[:, :, 0], plain[:, :, 0])
    assert circular_upsample(x.to(torch.bfloat16), 2).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: circular_upsample([[1.0]], 2), TypeError, "torch.Tensor, got list"),
        (lambda: circular_upsample(torch.randn(3, 4, 4), 2), ValueError, "4-D floating-point"),
        (lambda: circular_upsample(torch.ones(1, 1, 4, 4, dtype=torch.int64), 2), ValueError, "torch.int64"),
        (lambda: circular_upsample(torch.randn(1, 1, 4, 4), 0), ValueError, "factor must be a positive int"),
        (lambda: circular_upsample(torch.randn(1, 1, 4, 4), 1.5), ValueError, "got 1.5"),
        (lambda: circular_upsample(torch.randn(1, 1, 4, 4), (2,)), ValueError, r"got \(2,\)"),
        (lambda: circular_upsample(torch.randn(1, 1, 4, 4), True), ValueError, "got True"),
        (lambda: circular_upsample(torch.randn(1, 1, 4, 4), 2, mode="bicubic"), ValueError, "'bicubic'"),
        (lambda: EquivariantUpsample(2, mode="area"), ValueError, "'area'"),
        (lambda: EquivariantUpsample(-1), ValueError, "got -1"),
        (
            lambda: upsample_to_image(torch.randn(2, 1, 4, 4), torch.zeros(3, 2, dtype=torch.int64), 2),
            ValueError,
            "offsets",
        ),
    ],
)
def test_bad_arguments_name_the_problem(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]


@settings(max_examples=40)
@given(
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    factor=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    mode=st.sampled_from(["bilinear", "nearest"]),
    dtype=st.sampled_from(DTYPES),
    shift=st.tuples(st.integers(-7, 7), st.integers(-7, 7)),
    seed=st.integers(0, 2**16),
)
def test_a_whole_cell_shift_becomes_a_shift_by_the_factor_bit_for_bit(
    height: int,
    width: int,
    factor: tuple[int, int],
    mode: str,
    dtype: torch.dtype,
    shift: tuple[int, int],
    seed: int,
) -> None:
    x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed)).to(dtype)
    expected = torch.roll(circular_upsample(x, factor, mode=mode), (shift[0] * factor[0], shift[1] * factor[1]), (2, 3))
    assert torch.equal(circular_upsample(torch.roll(x, shift, (2, 3)), factor, mode=mode), expected)


def test_plain_bilinear_interpolation_is_not_equivariant() -> None:
    """The negative control: F.interpolate clamps at the border and rounds its weights per position."""
    x = torch.randn(1, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    up = F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False)
    shifted = F.interpolate(torch.roll(x, (1, 2), (2, 3)), scale_factor=4.0, mode="bilinear", align_corners=False)
    assert (shifted - torch.roll(up, (4, 8), (2, 3))).abs().max() > 0.1


def _pooled_then_restored(images: torch.Tensor, period: int, reduction: int, roll_back: bool) -> torch.Tensor:
    """A stand-in decoder: anchor the image, pool by ``reduction``, upsample back (and undo the anchor)."""
    anchored, offsets = equivit.polyphase_anchor(images, period)
    coarse = F.avg_pool2d(anchored, reduction)
    if roll_back:
        return upsample_to_image(coarse, offsets, reduction)
    return circular_upsample(coarse, reduction)


@settings(max_examples=30)
@given(
    cells=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    reduction=st.sampled_from([2, 4]),
    periods=st.integers(1, 2),
    shift=st.tuples(st.integers(0, 47), st.integers(0, 47)),
    family=st.sampled_from(FAMILIES),
    seed=st.integers(0, 2**16),
)
def test_undoing_the_image_anchor_makes_full_resolution_maps_move_with_any_shift(
    cells: tuple[int, int], reduction: int, periods: int, shift: tuple[int, int], family: str, seed: int
) -> None:
    period = reduction * periods
    size = (cells[0] * period * 2, cells[1] * period * 2)
    images = make_images(family, (2, 3, *size), seed=seed)
    out = _pooled_then_restored(images, period, reduction, roll_back=True)
    shifted = _pooled_then_restored(torch.roll(images, shift, (2, 3)), period, reduction, roll_back=True)
    assert_moves_with_shift(shifted, out, shift, images)


def test_without_the_roll_back_only_multiples_of_the_period_move_exactly() -> None:
    """The negative control: the same maps, the anchor not undone."""
    images = make_images("random", (2, 3, 16, 16), seed=0)
    out = _pooled_then_restored(images, 4, 4, roll_back=False)
    by_period = _pooled_then_restored(torch.roll(images, (4, 8), (2, 3)), 4, 4, roll_back=False)
    assert torch.equal(by_period, torch.roll(out, (4, 8), (2, 3)))
    by_one = _pooled_then_restored(torch.roll(images, (1, 0), (2, 3)), 4, 4, roll_back=False)
    assert not torch.allclose(by_one, torch.roll(out, (1, 0), (2, 3)))


def test_gradients() -> None:
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    offsets = torch.tensor([[1, 2], [0, 3]])
    assert torch.autograd.gradcheck(lambda t: circular_upsample(t, (2, 3)), (x,))
    assert torch.autograd.gradcheck(lambda t: upsample_to_image(t, offsets, 2, mode="nearest"), (x,))
    assert torch.autograd.gradcheck(lambda t: EquivariantUpsample(2)(t, offsets), (x,))


def test_compiles_to_one_graph_with_the_eager_output() -> None:
    torch._dynamo.reset()
    module = EquivariantUpsample((2, 4))
    x, offsets = torch.randn(2, 3, 4, 4), torch.tensor([[1, 5], [7, 0]])
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager", dynamic=False)
    assert torch.equal(compiled(x, offsets), module(x, offsets))
    assert "factor=(2, 4), mode='bilinear'" in repr(module)
