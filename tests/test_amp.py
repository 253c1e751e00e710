"""Mixed precision: converted models stay exactly shift-consistent under bf16 and fp16 autocast.

Anchor energies are accumulated in float64 whatever the feature dtype (DESIGN trap 3), so the
anchors see low-precision features without losing their tie-breaks. The logits may then differ
between a shifted and an unshifted image only by rounding at the autocast dtype.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from equivit.testing import load_photos
from helpers import check_consistency
from zoo import ONE_PER_FAMILY, TINY, heavy, per_policy, tiny_pair

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Logit tolerance in units of the dtype's epsilon (times the largest logit, at least 1). A model that
# sums over every token (global attention, state-space mixers) sums a rolled sequence in another
# order: in fp16 that rounds differently by a few units in the last place even for a shift by whole
# periods, where no anchor changes (measured: iFormer 1.5, EfficientViM 3.3 units); bf16's epsilon
# is 8 times fp16's and covers it at one unit.
ULPS = {"bf16": 1.0, "fp16": 4.0}


@functools.cache
def photos(size: tuple[int, int]) -> torch.Tensor:
    return load_photos(size)[:8]


class Autocast(nn.Module):
    """Runs ``model`` under CPU autocast at ``dtype`` and returns float32 logits."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=self.dtype):
            logits = self.model(x)
        assert logits.dtype == self.dtype, "autocast did not reach the classifier"
        return logits.float()


@pytest.mark.parametrize("precision", list(DTYPES))
@pytest.mark.parametrize("family", per_policy(list(TINY)))
def test_autocast_keeps_every_prediction(family: str, precision: str) -> None:
    dtype = DTYPES[precision]
    stock, converted, _ = tiny_pair(family)
    images = photos(TINY[family][2])
    check_consistency(
        Autocast(stock, dtype),
        Autocast(converted, dtype),
        images,
        f"{family} autocast {precision}",
        shifts=2,
        relative_tolerance=ULPS[precision] * torch.finfo(dtype).eps,
    )


@pytest.mark.parametrize("family", heavy(ONE_PER_FAMILY))
def test_bfloat16_weights_keep_every_prediction(family: str) -> None:
    """The whole model in bf16 (no autocast): features and anchors' inputs are bf16 throughout."""
    stock, converted, _ = tiny_pair(family)
    images = photos(TINY[family][2]).bfloat16()
    check_consistency(
        stock.bfloat16(),
        converted.bfloat16(),
        images,
        f"{family} bf16 weights",
        shifts=2,
        relative_tolerance=torch.finfo(torch.bfloat16).eps,
    )
