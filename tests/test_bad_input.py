"""Bad input to converted models: every family answers with a message that names the problem and the fix."""

from __future__ import annotations

import copy
import functools
import re

import pytest
import torch
from torch import nn

from equivit.testing import load_photos
from zoo import EMPTY_BATCH_OK, TINY, heavy, tiny_pair

FAMILIES = heavy(list(TINY))
NUM_CLASSES = 10  # of the zoo's models
# Families that map an empty batch to an empty output; the others raise (as their stock models fail).
EMPTY_OK = EMPTY_BATCH_OK


@functools.cache
def _models(family: str) -> tuple[nn.Module, nn.Module, tuple[int, int]]:
    stock, converted, _ = tiny_pair(family)
    return stock, converted, TINY[family][2]


def _raises(model: nn.Module, x: torch.Tensor, pattern: str) -> str:
    with pytest.raises(ValueError, match=pattern) as info, torch.no_grad():
        model(x)
    return str(info.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_number_of_dimensions(family: str) -> None:
    stock, model, (height, width) = _models(family)
    name = re.escape(type(stock).__name__)
    single = torch.randn(3, height, width)
    _raises(
        model,
        single,
        rf"converted {name} expects images as a 4-D tensor \(B, 3, H, W\), got a 3-D tensor of shape "
        rf"\(3, {height}, {width}\); for a single image, add the batch dimension: x\.unsqueeze\(0\)",
    )
    _raises(model, torch.randn(2, 2, 3, height, width), r"got a 5-D tensor of shape \(2, 2, 3, .*reshape the input")
    _raises(model, torch.randn(height), rf"got a 1-D tensor of shape \({height},\)")


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_channel_count(family: str) -> None:
    _, model, (height, width) = _models(family)
    assert model.equivit_report.in_channels == 3
    _raises(
        model,
        torch.randn(2, 1, height, width),
        rf"expects 3 image channels \(B, 3, H, W\), got 1 in shape \(2, 1, {height}, {width}\); give images with 3 "
        r"channels \(for example x\.expand\(-1, 3, -1, -1\) for single-channel images\), or create the model with "
        r"in_chans=1",
    )
    _raises(model, torch.randn(2, 4, height, width), "got 4 in shape")


@pytest.mark.parametrize("family", FAMILIES)
def test_size_not_a_multiple(family: str) -> None:
    _, model, (height, width) = _models(family)
    mh, mw = model.equivit_report.input_multiple
    message = _raises(
        model,
        torch.randn(1, 3, height + 1, width),
        rf"input size H x W = {height + 1} x {width} is not a multiple of {mh} x {mw}.*got shape "
        rf"\(1, 3, {height + 1}, {width}\)\); resize or crop",
    )
    assert "padding would break shift equivariance" in message
    _raises(model, torch.randn(1, 3, 0, width), rf"H x W = 0 x {width}")


@pytest.mark.parametrize("family", FAMILIES)
def test_integer_images(family: str) -> None:
    _, model, (height, width) = _models(family)
    _raises(
        model,
        torch.zeros(1, 3, height, width, dtype=torch.uint8),
        r"expects floating-point images, got dtype torch\.uint8 .*x\.float\(\) / 255",
    )


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


# Stock models whose samples are not independent within a batch: CSATv2's SpatialTransformerBlock
# computes q @ k^T with q, k of shape (B, N), attending across the batch. The converted model keeps
# timm's blocks (each sample's anchored map is shift-invariant, so its logits still are), but a bad
# image reaches the others as it does in the stock model; the test below checks that this holds.
STOCK_MIXES_SAMPLES = {"csatv2"}


@pytest.mark.parametrize("family", heavy(sorted(STOCK_MIXES_SAMPLES)))
def test_stock_model_mixes_the_samples_of_a_batch(family: str) -> None:
    stock, _, (height, width) = _models(family)
    x = load_photos((height, width))[:2].clone()
    x[0] = float("nan")
    with torch.no_grad():
        assert stock(x)[1].isnan().any()


@pytest.mark.parametrize("family", [f for f in FAMILIES if getattr(f, "values", (f,))[0] not in STOCK_MIXES_SAMPLES])
def test_nan_and_inf_give_a_deterministic_result(family: str) -> None:
    _, model, (height, width) = _models(family)
    x = load_photos((height, width))[:4].clone().double()  # float64: leakage, not rounding, would show
    model = copy.deepcopy(model).double()
    x[0, 1, 3, 5] = float("nan")
    x[1] = float("nan")
    x[2, 0, 7, 2] = float("inf")
    with torch.no_grad():
        first, second = model(x), model(x)
        clean = model(x[:1].nan_to_num(0.0))
        alone = model(x[3:])
    assert first.shape == (4, NUM_CLASSES)
    assert _same(first, second)
    assert first[1].isnan().all()  # an all-NaN image: NaN logits, no crash
    assert clean.isfinite().all()
    # Anchoring is per sample: the bad images do not leak into a clean one in the same batch.
    assert torch.allclose(first[3:], alone, rtol=0, atol=1e-10 * max(1.0, float(alone.abs().max())))


@pytest.mark.parametrize("family", heavy(EMPTY_OK))
def test_empty_batch_gives_an_empty_output(family: str) -> None:
    stock, model, (height, width) = _models(family)
    x = torch.randn(0, 3, height, width)
    if not model.equivit_report.empty_batch_ok and model.equivit_report.empty_batch_ok is not None:
        # A model of the family that cannot run an empty batch (ResNeSt): the stock model fails, the
        # converted one says so.
        with pytest.raises(RuntimeError), torch.no_grad():
            stock(x)
        _raises(model, x, r"cannot run on an empty batch")
        return
    with torch.no_grad():
        out = model(x)
        expected = stock(x)
    assert out.shape == expected.shape == (0, NUM_CLASSES)
    assert out.dtype == expected.dtype


@pytest.mark.parametrize("family", heavy([f for f in TINY if f not in EMPTY_OK]))
def test_empty_batch_is_a_clear_error_for_token_models(family: str) -> None:
    _, model, (height, width) = _models(family)
    _raises(
        model,
        torch.randn(0, 3, height, width),
        rf"cannot run on an empty batch \(shape \(0, 3, {height}, {width}\)\).*skip the call when x\.shape\[0\] == 0",
    )


def test_bad_input_keeps_compile_free_of_graph_breaks() -> None:
    _, model, (height, width) = _models("vit")
    x = torch.randn(2, 3, height, width)
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(torch.compile(model, fullgraph=True, backend="eager")(x), expected)
        # A bad input raises the same error from a compiled model (where the error graph-breaks: only bad input).
        compiled = torch.compile(model, backend="eager")
        with pytest.raises(ValueError, match="expects 3 image channels"):
            compiled(torch.randn(2, 1, height, width))
