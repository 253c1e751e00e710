"""TorchScript: converted models of every family script, match eager mode exactly and stay shift-consistent."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import equivit
import equivit.tie_break
from equivit.anchor_core import choose_offsets
from equivit.device_paths import accelerator_paths
from equivit.fused import use_fused_kernels
from equivit.layers import AnchoredConv2d, AnchoredMaxPool2d, circular_conv2d
from equivit.polyphase import anchor_offsets, normalize_stride, polyphase_energy
from equivit.testing import load_photos
from equivit.testing.families import FAMILIES as IMAGE_FAMILIES
from equivit.testing.families import make_images
from helpers import RELATIVE_TOLERANCE, check_consistency, rounding_tolerance
from zoo import TINY, heavy, tiny_pair

# Stock timm models that TorchScript cannot compile (HRNet and SelecSLS pass lists of maps, BEiT's
# shared relative bias changes a variable's type, Hiera's unroll builds a list TorchScript cannot
# size, NaFlexViT expands a dict into keyword arguments, Gemma 4 annotates with `dict`); the stock
# test checks that this still holds, the tests of converted models leave them out.
STOCK_DOES_NOT_SCRIPT = {
    "hrnet",
    "selecsls",
    "beit_shared_abs",
    "hiera",
    "hiera_abswin",
    "naflexvit",
    "naflexvit_parfac",
    "naflexvit_rope",
    "gemma4_vit",
}
FAMILIES = heavy([family for family in TINY if family not in STOCK_DOES_NOT_SCRIPT])
# Shifts that are not multiples of any stride or window, one of them negative.
SHIFTS = [(3, 5), (13, -7)]


def _script(module: nn.Module | object) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in favour of torch.export
        return torch.jit.script(module)


@functools.cache
def _models(family: str) -> tuple[nn.Module, nn.Module, torch.jit.ScriptModule, torch.Tensor]:
    stock, converted, images = tiny_pair(family)
    return stock, converted, _script(converted), images


@pytest.mark.parametrize("family", heavy(sorted(STOCK_DOES_NOT_SCRIPT)))
def test_stock_model_does_not_script(family: str) -> None:
    stock, _, _ = tiny_pair(family)
    with pytest.raises((RuntimeError, ValueError, torch.jit.frontend.NotSupportedError)):
        _script(stock)


@pytest.mark.parametrize("family", FAMILIES)
def test_stock_model_scripts(family: str) -> None:
    stock, _, _, images = _models(family)
    scripted = _script(stock)
    with torch.no_grad():
        torch.testing.assert_close(scripted(images), stock(images), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_converted_model_scripts_and_equals_eager(family: str) -> None:
    _, converted, scripted, images = _models(family)
    assert isinstance(scripted, torch.jit.ScriptModule)
    with torch.no_grad():
        expected = converted(images)
        assert torch.equal(scripted(images), expected)  # bit for bit: the same operations in the same order
        assert torch.equal(scripted(images[:1]), converted(images[:1]))


@pytest.mark.parametrize("family", FAMILIES)
def test_scripted_model_is_shift_consistent_on_photos(family: str) -> None:
    stock, converted, scripted, _ = _models(family)
    photos = load_photos(TINY[family][2])[:8]
    # float32 rounding: 2e-5 of the logit scale, or four times the model's own float32-to-float64
    # distance where larger (deep CNNs with trained-looking weights, TResNet).
    tolerance = rounding_tolerance(converted, photos, RELATIVE_TOLERANCE)
    with torch.no_grad():
        reference = scripted(photos)
        scale = max(1.0, float(reference.abs().max()))
        label = f"{TINY[family][0]} tiny, TorchScript"
        check_consistency(stock, scripted, photos, label, shifts=1, relative_tolerance=tolerance / scale)
        assert torch.equal(reference, converted(photos))
        for shift in SHIFTS:
            logits = scripted(torch.roll(photos, shift, dims=(2, 3)))
            assert torch.equal(logits.argmax(dim=1), reference.argmax(dim=1)), shift
            torch.testing.assert_close(logits, reference, rtol=0, atol=tolerance)


@pytest.mark.parametrize("family", ["resnet", "convnext", "twins_svt", "swin", "pvt_v2"])
def test_features_only_model_scripts(family: str) -> None:
    name, kwargs, size = TINY[family]
    torch.manual_seed(0)
    model = equivit.create_model(name, features_only=True, **kwargs).eval()
    scripted = _script(model)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, maps = model(x), scripted(x)
    assert len(maps) == len(expected)
    for got, want in zip(maps, expected, strict=True):
        assert torch.equal(got, want)


def _bad_inputs(height: int, width: int) -> list[torch.Tensor]:
    return [
        torch.randn(3, height, width),  # no batch dimension
        torch.randn(2, 1, height, width),  # wrong channel count
        torch.randn(1, 3, height + 1, width),  # not a multiple of the period
        torch.zeros(1, 3, height, width, dtype=torch.uint8),  # integer images
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_scripted_model_rejects_bad_input_with_the_eager_message(family: str) -> None:
    _, converted, scripted, images = _models(family)
    # An empty batch is an error where the eager model says so, else an empty output in both.
    empty = torch.randn(0, 3, images.shape[2], images.shape[3])
    bad_inputs = _bad_inputs(images.shape[2], images.shape[3])
    try:
        with torch.no_grad():
            expected = converted(empty)
    except ValueError:
        bad_inputs.append(empty)
    else:
        with torch.no_grad():
            assert scripted(empty).shape == expected.shape == (0, 10)
    for bad in bad_inputs:
        with pytest.raises(ValueError) as eager, torch.no_grad():  # noqa: PT011 - the message is compared below
            converted(bad)
        # TorchScript raises its own exception type, whose text ends with the Python exception.
        with pytest.raises(torch.jit.Error) as script, torch.no_grad():
            scripted(bad)
        assert str(script.value).rstrip().endswith(f"builtins.ValueError: {eager.value}")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride", [(2, 2), (4, 4), (3, 2)])
def test_scripted_anchor_matches_eager_on_ties(
    stride: tuple[int, int], channels_last: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Binary, constant, striped, dotted and signed images tie the energies: the content tie-break runs.
    # TorchScript has no bit casts: it keys tokens by their values (as ONNX export does), and so
    # does the eager reference here. TorchScript runs the plain tensor ops; the eager reference
    # does too. (The fused CPU kernels
    # sum a token's channels in another float32 order: channel_permutations tie to the last bit
    # only in exact arithmetic, so there the two may differ, as documented in equivit.fused.)
    scripted = _script(choose_offsets)
    monkeypatch.setattr(equivit.tie_break, "_bit_keys", equivit.tie_break._value_keys)
    tied = 0
    for index, family in enumerate(IMAGE_FAMILIES):
        x = make_images(family, (4, 3, 72, 96), seed=index, channels_last=channels_last)
        coarse = polyphase_energy(x, stride, channels_last=channels_last).flatten(1)
        tied += int(((coarse == coarse.amax(dim=1, keepdim=True)).sum(dim=1) > 1).sum())
        with use_fused_kernels(False), accelerator_paths(False):
            expected = anchor_offsets(x, stride, channels_last=channels_last)
            expected_l2 = anchor_offsets(x, stride, energy="l2", channels_last=channels_last)
        assert torch.equal(scripted(x, stride[0], stride[1], "l1", channels_last), expected), family
        expected = expected_l2
        assert torch.equal(scripted(x, stride[0], stride[1], "l2", channels_last), expected), family
    assert tied > 0


@pytest.mark.parametrize(
    ("groups", "stride", "padding", "size"),
    [
        (8, (1, 1), (1, 1), (12, 10)),
        (8, (2, 2), (3, 3), (16, 12)),
        (1, (1, 1), (1, 1), (6, 6)),
        (8, (1, 1), (3, 3), (2, 3)),
    ],
)
def test_scripted_circular_conv2d_matches_eager(
    groups: int, stride: tuple[int, int], padding: tuple[int, int], size: tuple[int, int]
) -> None:
    scripted = _script(circular_conv2d)
    kernel = 2 * padding[0] + 1
    weight = torch.randn(8, 8 // groups, kernel, kernel, generator=torch.Generator().manual_seed(0))
    bias = torch.randn(8, generator=torch.Generator().manual_seed(1))
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 8, *size, generator=torch.Generator().manual_seed(2)).contiguous(memory_format=memory_format)
        expected = circular_conv2d(x, weight, bias, stride, padding, (1, 1), groups)
        assert torch.equal(scripted(x, weight, bias, stride, padding, (1, 1), groups), expected)


@pytest.mark.parametrize(
    "layer",
    [
        lambda: AnchoredConv2d(3, 8, 4, stride=4),
        lambda: AnchoredConv2d(3, 8, 3, stride=2, padding=1, padding_mode="circular"),
        lambda: AnchoredMaxPool2d(3, stride=2, padding=1),
    ],
    ids=["conv", "conv_circular", "max_pool"],
)
def test_single_layers_script(layer: object, monkeypatch: pytest.MonkeyPatch) -> None:
    module = layer().eval()  # type: ignore[operator]
    scripted = _script(module)
    x = make_images("binary", (2, 3, 16, 16), seed=0)  # tied energies: TorchScript keys tokens by value
    with torch.no_grad():
        shifted = torch.roll(x, (1, 3), dims=(2, 3))
        moved = scripted(shifted)
        period = normalize_stride(module.stride)[0]
        # Exact under the shift: a roll of the output, by whole cells, when shifts are whole periods...
        whole = torch.roll(x, (period, 2 * period), dims=(2, 3))
        assert torch.equal(scripted(whole), torch.roll(scripted(x), (1, 2), dims=(2, 3)))
        # ... and the eager module's output wherever its tokens are keyed alike.
        monkeypatch.setattr(equivit.tie_break, "_bit_keys", equivit.tie_break._value_keys)
        assert torch.equal(scripted(x), module(x))
        assert torch.equal(moved, module(shifted))
    with pytest.raises(torch.jit.Error, match="not a positive multiple"):
        scripted(torch.randn(1, 3, 15, 16))


def test_scripted_model_saves_and_loads(tmp_path: Path) -> None:
    _, converted, scripted, images = _models("vit")
    path = f"{tmp_path}/model.pt"
    scripted.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(images), converted(images))
