"""MobileNetV5 (Gemma 3n's vision encoder): the fusion adapter's anchored pooling, the encoder's maps, refusals.

The classifier example runs every per-example test of the package (``tests/zoo.py``); here are
the parts that only this family has: the encoder returns a map (no logits), with TensorFlow
"same" padding, and the fusion adapter pools by a ratio that only the input size fixes.
"""

from __future__ import annotations

import functools

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models import mobilenetv5

import equivit
from equivit.families.mobilenetv5 import EquivariantMultiScaleFusionAdapter
from equivit.testing import assert_shift_equivariant, perturb_weights_

SMALL = {"channel_multiplier": 0.25, "msfa_output_resolution": 4}


@functools.cache
def encoders() -> tuple[torch.nn.Module, torch.nn.Module]:
    stock = perturb_weights_(timm.create_model("mobilenetv5_300m_enc", **SMALL), seed=0).eval()
    return stock, equivit.convert(stock).eval()


def test_encoder_converts_with_its_same_padding() -> None:
    _, model = encoders()
    assert model.equivit_report.input_multiple == (64, 64)  # lcm(total stride 32, 16 x 4)
    assert isinstance(model.msfa, EquivariantMultiScaleFusionAdapter)
    assert not any(type(m).__name__ == "Conv2dSame" for m in model.modules())


@settings(max_examples=4, deadline=None)
@given(height=st.sampled_from([64, 128, 192]), width=st.sampled_from([64, 128, 192]), seed=st.integers(0, 2**16))
def test_encoder_map_moves_with_the_image(height: int, width: int, seed: int) -> None:
    # At 192 the adapter pools its 12-cell side by 3 on a map that the input anchor moves by
    # whole pairs of cells: the pooling's own anchor keeps the grid moving by whole cells.
    _, model = encoders()
    images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed))
    assert_shift_equivariant(model, images, shifts_per_input=2, seed=seed, rtol=2e-5)


def test_stock_encoder_map_does_not_move_with_the_image() -> None:
    stock, _ = encoders()
    with pytest.raises(AssertionError, match="roll"):
        assert_shift_equivariant(stock, torch.randn(2, 3, 128, 192, generator=torch.Generator().manual_seed(1)))


def test_default_grid_needs_multiples_of_256() -> None:
    model = equivit.convert(timm.create_model("mobilenetv5_base", channel_multiplier=0.25, num_features=64).eval())
    assert model.equivit_report.input_multiple == (256, 256)
    with pytest.raises(ValueError, match="multiple of 256 x 256"):
        model(torch.randn(1, 3, 224, 224))


def test_adapter_refuses_a_ratio_that_is_not_whole() -> None:
    _, model = encoders()
    adapter = model.msfa
    with pytest.raises(ValueError, match="multiple of 4 x 4"):
        adapter([torch.randn(1, 160, 6, 6), torch.randn(1, 320, 3, 3)])  # 6 cells do not pool to 4
    with pytest.raises(ValueError, match="whole upsampling factors"):
        adapter([torch.randn(1, 160, 8, 8), torch.randn(1, 320, 3, 3)])  # 3 does not divide 8


def test_bilinear_adapter_is_refused() -> None:
    stock = timm.create_model("mobilenetv5_base", **SMALL, num_features=64)
    assert isinstance(stock.msfa, mobilenetv5.MobileNetV5MultiScaleFusionAdapter)
    stock.msfa.interpolation_mode = "bilinear"
    with pytest.raises(equivit.UnsupportedModelError, match="only 'nearest'"):
        equivit.convert(stock)
