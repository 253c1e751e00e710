"""equivit.testing.adversarial: worst-case consistency over every shift within a radius."""

from __future__ import annotations

import functools
import math

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import equivit
from equivit.testing import calibrate_batch_norms_, load_photos, perturb_weights_
from equivit.testing.adversarial import shifts_within, translate, worst_case_consistency


@functools.cache
def resnet_pair() -> tuple[nn.Module, nn.Module]:
    """A small ResNet with trained-looking weights whose top-1 varies across the photos."""
    stock = perturb_weights_(timm.create_model("resnet18", pretrained=False, num_classes=10), seed=0).eval()
    calibrate_batch_norms_(stock, load_photos(32))
    return stock, equivit.convert(stock).eval()


class DotRow(nn.Module):
    """A classifier with a known worst case: class 1 when the brightest pixel sits in row 8 or below."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        row = x.sum(dim=1).flatten(1).argmax(dim=1) // x.shape[-1]
        low = (row >= 8).float()
        return torch.stack((1 - low, low), dim=1)


class MeanColour(nn.Module):
    """Global average pooling then a linear map: invariant to circular and to bilinear circular translations."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize(("radius", "step", "fractional", "count"), [(0, 1.0, False, 0), (1, 1.0, False, 8),
    (8, 1.0, False, 288), (1, 0.5, True, 16), (8, 0.5, True, 33**2 - 17**2)])  # fmt: skip
def test_shifts_within_counts_and_order(radius: int, step: float, fractional: bool, count: int) -> None:
    shifts = shifts_within(radius, step=step, fractional_only=fractional)
    assert shifts.shape == (count, 2)
    reach = shifts.abs().amax(dim=1)
    assert bool((reach > 0).all())
    assert bool((reach <= radius).all())
    assert torch.equal(reach, reach.sort().values)  # nearest first
    if fractional:
        assert bool((shifts != shifts.round()).any(dim=1).all())


def test_shifts_within_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        shifts_within(-1)
    with pytest.raises(ValueError, match="1 / n"):
        shifts_within(2, step=0.3)


@settings(max_examples=20, deadline=None)
@given(dy=st.integers(-20, 20), dx=st.integers(-20, 20), seed=st.integers(0, 2**16))
def test_translate_by_whole_pixels_is_a_roll(dy: int, dx: int, seed: int) -> None:
    images = torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(seed))
    shifts = torch.tensor([[dy, dx], [dx, dy]], dtype=torch.float64)
    moved = translate(images, shifts)
    assert torch.equal(moved[0], torch.roll(images[0], (dy, dx), (1, 2)))
    assert torch.equal(moved[1], torch.roll(images[1], (dx, dy), (1, 2)))


def test_translate_by_half_a_pixel_averages_neighbours() -> None:
    images = torch.randn(1, 3, 6, 8, dtype=torch.float64)
    moved = translate(images, torch.tensor([[0.5, 0.0]]))
    expected = 0.5 * (images + torch.roll(images, 1, 2))
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-15)
    constant = torch.full((1, 3, 6, 8), 0.7, dtype=torch.float64)
    torch.testing.assert_close(translate(constant, torch.tensor([[1.25, -2.5]])), constant, rtol=0, atol=1e-15)


def test_translate_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match="shifts"):
        translate(torch.randn(2, 3, 8, 8), torch.zeros(3, 2))


@pytest.mark.parametrize("kind", ["circular", "crop", "fractional"])
def test_known_worst_case(kind: str) -> None:
    # One bright dot in row 5 of a 16 x 16 input: the class changes first when the dot reaches row 8,
    # a shift by 3 rows (a crop window moving up by 3). Fractionally, a shift by 2.5 rows splits the
    # dot between rows 7 and 8 and argmax keeps the first (row 7); 3 rows down and half a column
    # across puts all of it in row 8: radius 3 again.
    margin = 4 if kind == "crop" else 0
    images = torch.zeros(1, 3, 16 + 2 * margin, 16 + 2 * margin)
    images[0, :, 5 + margin, 7 + margin] = 1.0
    result = worst_case_consistency(DotRow(), images, 4, kind=kind, crop_size=(16, 16))
    assert result.failure_radius == (3.0,)
    assert result.robust(2) == 1
    assert result.robust(3) == 0
    assert result.robust_fraction() == 0.0


@pytest.mark.parametrize("kind", ["circular", "fractional"])
def test_invariant_model_is_robust_at_every_radius(kind: str) -> None:
    torch.manual_seed(0)
    result = worst_case_consistency(MeanColour().double(), load_photos(32)[:4].double(), 3, kind=kind)
    assert result.failure_radius == (math.inf,) * 4
    assert result.shifts == (48 if kind == "circular" else 13**2 - 7**2)
    assert "4/4 (100.0 %)" in str(result)


def test_converted_model_holds_every_circular_shift_and_stock_does_not() -> None:
    stock, converted = resnet_pair()
    photos = load_photos(32)[:6]
    ours = worst_case_consistency(converted, photos, 3, batch_size=96)
    theirs = worst_case_consistency(stock, photos, 3, batch_size=96)
    assert ours.robust_fraction() == 1.0
    assert ours.shifts == 48
    assert theirs.robust_fraction() < 1.0  # the problem is real: some shift within 3 px flips stock


def test_batching_does_not_change_the_result() -> None:
    stock, _ = resnet_pair()
    photos = load_photos(32)[:5]
    results = {worst_case_consistency(stock, photos, 2, kind="fractional", batch_size=b) for b in (1, 7, 200)}
    assert len(results) == 1


def test_subset_of_shifts_is_seeded() -> None:
    stock, _ = resnet_pair()
    photos = load_photos(32)[:3]
    first = worst_case_consistency(stock, photos, 4, max_shifts=10, seed=3)
    again = worst_case_consistency(stock, photos, 4, max_shifts=10, seed=3)
    assert first == again
    assert first.shifts == 10


def test_bad_arguments_name_the_problem() -> None:
    model = MeanColour()
    with pytest.raises(ValueError, match="kind must be one of"):
        worst_case_consistency(model, torch.zeros(1, 3, 8, 8), 1, kind="diagonal")
    with pytest.raises(ValueError, match="needs crop_size"):
        worst_case_consistency(model, torch.zeros(1, 3, 8, 8), 1, kind="crop")
    with pytest.raises(ValueError, match="at least 12 x 12"):
        worst_case_consistency(model, torch.zeros(1, 3, 10, 12), 2, kind="crop", crop_size=(8, 8))
    with pytest.raises(ValueError, match="smaller than the images"):
        worst_case_consistency(model, torch.zeros(1, 3, 8, 8), 8)
