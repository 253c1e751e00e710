"""Every example of every registered family: exact on real photos, feature maps that move, strict state dicts.

The cheap checks that every family must pass in the default run; the slower ones (compiled graphs,
autocast, TorchScript, ONNX) run on the quick examples here and on all of them in the slow set.
"""

from __future__ import annotations

import pytest
import timm
import torch

import equivit
from equivit.registry import family_named
from equivit.testing import (
    assert_shift_equivariant,
    assert_shift_invariant,
    calibrate_batch_norms_,
    load_photos,
    perturb_weights_,
)
from helpers import RELATIVE_TOLERANCE, check_consistency, rounding_tolerance
from zoo import FAMILY_OF, TINY, float64_rtol, tiny_pair

EXAMPLES = list(TINY)
# Transformers' features are tested in test_features.py, at sizes that fit their windows and depths.
FEATURE_EXAMPLES = [example for example in EXAMPLES if FAMILY_OF[example] not in ("vit", "swin")]


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_keeps_every_prediction_on_real_photos(example: str) -> None:
    stock, converted, _ = tiny_pair(example)
    images = load_photos(TINY[example][2])[:4]
    # Logits may move by float32 rounding: 2e-5 of their scale, or four times this model's own
    # float32-to-float64 distance where that is larger (deep CNNs with trained-looking weights).
    with torch.no_grad():
        scale = max(1.0, float(converted(images).abs().max()))
    relative = max(RELATIVE_TOLERANCE, rounding_tolerance(converted, images, RELATIVE_TOLERANCE) / scale)
    check_consistency(stock, converted, images, f"{example} example", shifts=2, relative_tolerance=relative)


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_is_invariant_in_float64(example: str) -> None:
    """In float64 the logits of any circular shift agree to 1e-10 of their scale: no rounding hides a defect."""
    _, converted, _ = tiny_pair(example)
    images = load_photos(TINY[example][2])[:2].double()
    assert_shift_invariant(converted.double(), images, shifts_per_image=3, rtol=float64_rtol(example), atol=0.0)


def _channels_first(maps: list[torch.Tensor], model: torch.nn.Module) -> list[torch.Tensor]:
    """The maps as (B, C, H, W), whatever timm's ``output_fmt`` of the wrapper."""
    nhwc = str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC")
    return [m.permute(0, 3, 1, 2) if nhwc else m for m in maps]


class _Map(torch.nn.Module):
    """Feature map ``index`` of a features_only model, as (B, C, H, W)."""

    def __init__(self, model: torch.nn.Module, index: int) -> None:
        super().__init__()
        self.model, self.index = model, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _channels_first(self.model(x), self.model)[self.index]


@pytest.mark.parametrize("example", FEATURE_EXAMPLES)
def test_example_features_move_with_the_image(example: str) -> None:
    """features_only: each map moves by shift / reduction for shifts by its reduction, by some roll for any shift."""
    name, kwargs, size = TINY[example]
    torch.manual_seed(0)
    stock = timm.create_model(name, pretrained=False, features_only=True, **kwargs)
    images = load_photos(size)[:2]
    calibrate_batch_norms_(perturb_weights_(stock, seed=0), load_photos(size)[:8])
    model = equivit.convert(stock).double().eval()
    assert model.equivit_report.family == FAMILY_OF[example]
    info = model.feature_info
    # A network anchored at its input moves each map by shift / reduction for shifts by its period.
    period = model.equivit_report.input_period
    images = images.double()
    rtol = float64_rtol(example)
    with torch.no_grad():
        maps = _channels_first(model(images), model)
        for shift in ((1, 2), (3, 1)) if period else ():
            moved = _channels_first(
                model(torch.roll(images, (period * shift[0], period * shift[1]), dims=(2, 3))), model
            )
            for reduction, before, after in zip(info.reduction(), maps, moved, strict=True):
                rolled = torch.roll(before, (period * shift[0] // reduction, period * shift[1] // reduction), (2, 3))
                assert torch.allclose(after, rolled, rtol=0, atol=rtol * float(before.abs().max())), reduction
    for index, reduction in enumerate(info.reduction()):
        feature = _Map(model, index)
        if not period:
            assert_shift_equivariant(feature, images, output_stride=reduction, rtol=rtol, atol=0.0)
        assert_shift_equivariant(feature, images, rtol=rtol, atol=0.0)


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_loads_the_stock_state_dict(example: str) -> None:
    """Strictly where the family adds no parameter, else through its mapping."""
    stock, converted, _ = tiny_pair(example)
    state = stock.state_dict()
    if family_named(FAMILY_OF[example]).map_state_dict is not None:
        state = equivit.convert_state_dict(state, converted)
    converted.load_state_dict(state, strict=True)
