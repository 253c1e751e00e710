"""features_only and forward_intermediates on converted models: every feature map is shift-equivariant."""

from __future__ import annotations

import functools

import pytest
import timm
import torch
from torch import nn

import equivit
from equivit.testing import assert_shift_equivariant, load_photos, perturb_weights_
from helpers import FeatureMap

# (timm name, image size, extra timm arguments): small sizes that are multiples of every period.
CONFIGS = [
    ("vit_tiny_patch16_224", (64, 96), {"img_size": (64, 96), "depth": 4}),
    ("twins_pcpvt_small", (64, 96), {}),
    ("twins_svt_small", (224, 224), {}),
    ("swin_tiny_patch4_window7_224", (128, 256), {"img_size": (128, 256), "window_size": 4}),
    ("swinv2_tiny_window8_256", (128, 256), {"img_size": (128, 256), "window_size": 4}),
    ("pvt_v2_b0", (64, 96), {}),
    ("resnet18", (64, 96), {}),
    ("convnext_atto", (64, 96), {}),
]

# Bit for bit wherever every attention sees its keys in an order chosen from content. ViT's
# blocks attend over all patch tokens in grid order, which a shift rotates: their sums round
# differently, by about 1e-7.
ROUNDING = {"vit_tiny_patch16_224": 1e-5}


def _tolerance(name: str) -> dict[str, float]:
    atol = ROUNDING.get(name, 0.0)
    return {"atol": atol, "rtol": 0.0 if atol == 0.0 else 1e-5}


@functools.cache
def photos(size: tuple[int, int]) -> torch.Tensor:
    return load_photos(size)[:4]


def _features_only(name: str, kwargs: dict[str, object]) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, features_only=True, **kwargs)
    return equivit.convert(perturb_weights_(model, seed=0)).eval()


@pytest.mark.parametrize(("name", "size", "kwargs"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_features_only_maps_move_with_the_image(name: str, size: tuple[int, int], kwargs: dict[str, object]) -> None:
    model = _features_only(name, kwargs)
    images = photos(size)
    info = model.feature_info
    for index, (channels, reduction) in enumerate(zip(info.channels(), info.reduction(), strict=True)):
        feature = FeatureMap(model, index, channels, intermediates=False)
        # A shift by a multiple of the map's stride moves it by exactly shift / stride ...
        assert_shift_equivariant(feature, images, output_stride=reduction, **_tolerance(name))
        # ... and any shift moves it by some roll.
        assert_shift_equivariant(feature, images, **_tolerance(name))


@pytest.mark.parametrize(("name", "size", "kwargs"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_forward_intermediates_move_with_the_image(name: str, size: tuple[int, int], kwargs: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = equivit.convert(perturb_weights_(timm.create_model(name, pretrained=False, **kwargs), seed=0)).eval()
    images = photos(size)
    with torch.no_grad():
        maps = model.forward_intermediates(images[:1], intermediates_only=True)
    reductions = [info["reduction"] for info in model.feature_info][-len(maps) :]
    for index, (reduction, first) in enumerate(zip(reductions, maps, strict=True)):
        feature = FeatureMap(model, index, first.shape[1], intermediates=True)
        assert_shift_equivariant(feature, images, output_stride=reduction, **_tolerance(name))


def test_create_model_features_only() -> None:
    model = equivit.create_model("pvt_v2_b0", features_only=True, out_indices=(1, 3))
    assert equivit.is_converted(model)
    assert [tuple(f.shape) for f in model(torch.randn(1, 3, 64, 64))] == [(1, 64, 8, 8), (1, 256, 2, 2)]
