"""equivit.testing: the assertions and metrics users put in their own tests, on real modules."""

from __future__ import annotations

import functools

import pytest
import timm
import torch
from hypothesis import given, settings
from torch import nn

import equivit
from equivit.layers import AnchoredConv2d
from equivit.testing import (
    assert_shift_equivariant,
    assert_shift_invariant,
    crop_consistency,
    find_rolls,
    load_photos,
    perturb_weights_,
)
from equivit.testing import strategies as eqst


@functools.cache
def vit_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    stock = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=64).eval()
    perturb_weights_(stock, seed=0)
    converted = equivit.convert(stock).eval()
    perturb_weights_(converted, seed=0, only=converted.equivit_report.new_parameters)
    return stock, converted


def test_assert_shift_invariant_passes_for_converted_and_fails_for_stock() -> None:
    stock, converted = vit_pair()
    images = load_photos(64)[:8]
    result = assert_shift_invariant(converted, images, shifts_per_image=3)
    assert (result.consistent, result.total) == (24, 24)
    with pytest.raises(AssertionError, match=r"not shift-invariant: .*\n  image \d+, shift \(-?\d+, -?\d+\): top-1"):
        assert_shift_invariant(stock, images)


def test_assert_shift_equivariant_strided_convolution() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 4, stride=4)
    images = load_photos(64)[:4]
    rolls = assert_shift_equivariant(AnchoredConv2d.from_conv(conv), images)  # any shift: some roll
    assert rolls.shape == (4, 2)
    assert_shift_equivariant(conv, images, output_stride=4)  # whole strides: a plain convolution is fine
    with pytest.raises(AssertionError, match=r"not shift-equivariant .*\n  input \d+, shift"):
        assert_shift_equivariant(conv, images)  # other shifts: it is not


@settings(max_examples=20)
@given(images=eqst.images(period=4, max_blocks=6))
def test_anchored_convolution_on_every_family(images: torch.Tensor) -> None:
    """The hypothesis strategies and the assertion together, as a user would write it."""
    conv = AnchoredConv2d(images.shape[1], 5, 4, stride=4)
    assert_shift_equivariant(conv, images.float())


def test_channels_last_maps() -> None:
    tokens = torch.randn(2, 12, 12, 6)
    assert_shift_equivariant(lambda t: t * 2, tokens, channels_last=True)  # type: ignore[arg-type]


def test_find_rolls_recovers_the_roll() -> None:
    reference = torch.randn(3, 4, 7, 9)
    shifts = torch.tensor([[0, 0], [3, 5], [6, 8]])
    shifted = torch.stack([torch.roll(reference[b], tuple(s.tolist()), (1, 2)) for b, s in enumerate(shifts)])
    assert torch.equal(find_rolls(shifted, reference), shifts)


def test_errors() -> None:
    with pytest.raises(ValueError, match="4-D feature map"):
        assert_shift_equivariant(lambda t: t.flatten(1), torch.randn(2, 3, 8, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a multiple of output_stride"):
        assert_shift_equivariant(nn.Identity(), torch.randn(2, 3, 10, 8), output_stride=4)
    with pytest.raises(ValueError, match="same shape"):
        find_rolls(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 5))
    with pytest.raises(ValueError, match="fit inside the images"):
        crop_consistency(nn.Identity(), torch.randn(2, 3, 16, 16), (32, 16))


def test_crop_consistency_counts_pairs() -> None:
    _, converted = vit_pair()
    photos = load_photos(96)[:8]
    result = crop_consistency(converted, photos, (64, 64), crops_per_image=2, seed=3)
    assert result.total == 16
    assert 0 <= result.consistent <= 16
    assert result.max_logit_change > 0  # crops bring new content: not exactly invariant
