"""The fused CPU kernels (numba): same anchors, same rolls, same energies as the plain tensor ops."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import equivit
from equivit import fused
from equivit.device_paths import accelerator_paths
from equivit.energy import phase_energies
from equivit.polyphase import normalize_stride
from equivit.roll import _roll
from equivit.testing import FAMILIES, make_images
from helpers import anchor_consistency

pytest.importorskip("numba", reason="the fused kernels are optional: pip install numba")

T = TypeVar("T")
STRIDES = st.one_of(st.integers(1, 8), st.tuples(st.integers(1, 8), st.integers(1, 8)))
LAYOUTS = st.sampled_from(["planes", "tokens", "planes held channels-last"])


def _in_layout(x: torch.Tensor, layout: str) -> tuple[torch.Tensor, bool]:
    """A (B, C, H, W) map in one of the three layouts the kernels read, and its ``channels_last`` flag."""
    if layout == "tokens":
        return x.permute(0, 2, 3, 1).contiguous(), True
    if layout == "planes held channels-last":
        return x.contiguous(memory_format=torch.channels_last), False
    return x.contiguous(), False


def _plain(function: Callable[..., T], *arguments: object, **keywords: object) -> T:
    with fused.use_fused_kernels(False):
        return function(*arguments, **keywords)


def _grid(data: st.DataObject, stride: tuple[int, int], limit: int = 40) -> tuple[int, int]:
    return stride[0] * data.draw(st.integers(1, limit // stride[0])), stride[1] * data.draw(
        st.integers(1, limit // stride[1])
    )


# --- smoke -----------------------------------------------------------------------------------


def test_fused_kernels_are_used_and_agree_on_a_batch_of_images() -> None:
    x = make_images("random", (64, 3, 224, 224), seed=0)
    assert fused.enabled()
    assert fused.applies_to_energy(x, False)
    assert fused.applies_to_roll(x, False)
    y, offsets = equivit.polyphase_anchor(x, 16)
    y_plain, offsets_plain = _plain(equivit.polyphase_anchor, x, 16)
    assert torch.equal(offsets, offsets_plain)
    assert torch.equal(y, y_plain)


def test_switch_restores_the_previous_state() -> None:
    with fused.use_fused_kernels(False):
        assert not fused.enabled()
        with fused.use_fused_kernels(True):
            assert fused.enabled()
        assert not fused.enabled()
    assert fused.enabled()


# --- when they apply -----------------------------------------------------------------------------


def test_paths_that_keep_the_plain_ops() -> None:
    x = torch.randn(2, 4, 8, 8)
    assert not fused.applies_to_roll(x.requires_grad_(), False)  # the gather's gradient is the inverse roll
    with torch.no_grad():
        assert fused.applies_to_roll(x, False)  # no gradient needed: row copies
    assert fused.applies_to_energy(x, False)  # energies never carry a gradient
    y = torch.randn(2, 4, 8, 8)
    assert not fused.applies_to_energy(y.to(torch.bfloat16), False)
    assert fused.applies_to_roll(y.to(torch.bfloat16), False)
    assert not fused.applies_to_roll(y[:, :, :, ::2], False)  # neither layout is contiguous
    assert not fused.applies_to_energy(y.permute(0, 2, 3, 1), True)  # tokens that are not contiguous
    assert not fused.applies_to_energy(y[:0], False)
    with fused.use_fused_kernels(False):
        assert not fused.applies_to_energy(y, False)
        assert not fused.applies_to_roll(y, False)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_traced_graphs_use_the_plain_ops() -> None:
    x = torch.randn(2, 3, 8, 8)
    traced = torch.jit.trace(lambda t: equivit.polyphase_anchor(t, 4)[0], x)
    assert "gather" in str(traced.graph)  # a fused kernel would be invisible to the trace
    shifted = torch.roll(x, (1, 3), dims=(2, 3))
    expected, _ = equivit.polyphase_anchor(shifted, 4)
    assert torch.equal(traced(shifted), expected)


def test_a_forked_process_after_use_keeps_the_plain_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(2, 3, 8, 8)
    equivit.polyphase_anchor(x, 4)
    monkeypatch.setitem(fused._state, "pid", -1)  # as in a child forked after the kernels ran
    assert not fused.applies_to_energy(x, False)
    assert not fused.applies_to_roll(x, False)
    y, _ = equivit.polyphase_anchor(x, 4)
    assert torch.equal(y, _plain(equivit.polyphase_anchor, x, 4)[0])


# --- exceptions ----------------------------------------------------------------------------------


def test_turning_on_without_numba_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(fused._state, "available", False)
    assert not fused.enabled()
    with pytest.raises(ImportError, match="pip install numba"), fused.use_fused_kernels(True):
        pass


def test_bad_input_raises_the_same_errors() -> None:
    with pytest.raises(ValueError, match="not a positive multiple of the stride"):
        equivit.polyphase_anchor(torch.randn(2, 3, 10, 10), 4)
    with pytest.raises(ValueError, match="energy must be"):
        equivit.polyphase_anchor(torch.randn(2, 3, 8, 8), 4, energy="l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="offsets must have shape"):
        equivit.roll_to_anchor(torch.randn(2, 3, 8, 8), torch.zeros(3, 2, dtype=torch.int64))


# --- the same results as the plain ops ----------------------------------------------------------


@given(
    data=st.data(),
    stride=STRIDES,
    channels=st.integers(1, 70),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    l1=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_plane_energies_are_bit_identical_to_the_plain_ops(
    data: st.DataObject, stride, channels: int, dtype: torch.dtype, l1: bool, seed: int
) -> None:
    """(B, C, H, W) maps: the channels are summed in the plain path's order, so the norms agree bit for bit.

    Per-position norms (the energies of period = the whole grid) of magnitudes spread over many
    octaves, with some NaN and inf, so that any other order of the channel sums shows in the last
    bits: equal bit for bit. Energies over the grid: equal bit for bit where the float64 sums
    are exact (integer-valued maps here; the headroom is in ``equivit.polyphase``), within
    float64 rounding otherwise (both paths add in their own order).
    """
    sh, sw = normalize_stride(stride)
    height, width = _grid(data, (sh, sw))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, channels, height, width, generator=generator, dtype=dtype)
    x = x * torch.exp(4 * torch.randn(3, channels, 1, 1, generator=generator, dtype=dtype))
    if data.draw(st.booleans()):
        x[0, 0, 0, 0] = float("nan")
        x[1, -1, -1, -1] = float("inf")
    norms = phase_energies(x, height, width, l1, False)
    assert torch.equal(norms, _plain(phase_energies, x, height, width, l1, False))
    energies = phase_energies(x, sh, sw, l1, False)
    torch.testing.assert_close(energies, _plain(phase_energies, x, sh, sw, l1, False), rtol=1e-12, atol=0)
    integers = torch.randint(-255, 256, x.shape, generator=generator).to(dtype)
    assert torch.equal(phase_energies(integers, sh, sw, l1, False), _plain(phase_energies, integers, sh, sw, l1, False))


@given(data=st.data(), stride=STRIDES, channels=st.integers(1, 70), l1=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_token_energies_are_the_norms_within_rounding(
    data: st.DataObject, stride, channels: int, l1: bool, seed: int
) -> None:
    """Token maps: eight lanes then halves, within float32 rounding of the exact float64 energies."""
    sh, sw = normalize_stride(stride)
    height, width = _grid(data, (sh, sw))
    x = torch.randn(2, height, width, channels, generator=torch.Generator().manual_seed(seed))
    values = x.double().abs() if l1 else x.double().square()
    exact = values.sum(-1).view(2, height // sh, sh, width // sw, sw).sum(dim=(1, 3))
    torch.testing.assert_close(phase_energies(x, sh, sw, l1, True), exact, rtol=1e-6, atol=0)


@given(
    data=st.data(),
    layout=LAYOUTS,
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64, torch.int64, torch.bool]),
    padding=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    sign=st.sampled_from([1, -1]),
    seed=st.integers(0, 2**31 - 1),
)
def test_rolls_are_bit_identical_to_the_gather(
    data: st.DataObject, layout: str, dtype: torch.dtype, padding: tuple[int, int], sign: int, seed: int
) -> None:
    """Any offsets (negative, beyond the grid), circular padding, both signs, any element type."""
    height, width = data.draw(st.integers(1, 20)), data.draw(st.integers(1, 20))
    padding = (min(padding[0], height), min(padding[1], width))
    generator = torch.Generator().manual_seed(seed)
    x, channels_last = _in_layout((torch.randn(3, 5, height, width, generator=generator) * 4).to(dtype), layout)
    offsets = torch.randint(-50, 50, (3, 2), generator=generator)
    rolled = _roll(x, offsets, channels_last, sign, padding)
    expected = _plain(_roll, x, offsets, channels_last, sign, padding)
    assert torch.equal(rolled, expected)
    assert rolled.is_contiguous(memory_format=torch.channels_last) == expected.is_contiguous(
        memory_format=torch.channels_last
    )


@pytest.mark.parametrize("path", ["fused", "plain", "accelerator"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["tokens", "planes"])
@given(data=st.data(), stride=STRIDES, channels=st.integers(1, 70), l1=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_energies_move_with_a_shift_bit_for_bit(
    path: str, channels_last: bool, data: st.DataObject, stride, channels: int, l1: bool, seed: int
) -> None:
    """Continuous layer-normed maps: a shift rolls the phases' energies, bit for bit (no order shows in the sums).

    Each position's norm is rounded to float32 (the same value wherever the position sits), and
    float64 sums of those are exact here, so the order a shift gives the sums cannot matter.
    """
    sh, sw = normalize_stride(stride)
    height, width = _grid(data, (sh, sw), 64)
    tokens = torch.randn(2, height, width, channels, generator=torch.Generator().manual_seed(seed))
    tokens = torch.nn.functional.layer_norm(tokens, (channels,))
    x = tokens if channels_last else tokens.permute(0, 3, 1, 2).contiguous()
    dims = (1, 2) if channels_last else (2, 3)
    shift = data.draw(st.tuples(st.integers(0, height - 1), st.integers(0, width - 1)))
    with fused.use_fused_kernels(path == "fused"), accelerator_paths(path == "accelerator"):
        energies = phase_energies(x, sh, sw, l1, channels_last)
        shifted = phase_energies(torch.roll(x, shift, dims=dims), sh, sw, l1, channels_last)
    assert torch.equal(shifted, torch.roll(energies, shift, dims=(1, 2)))


@given(
    data=st.data(),
    stride=STRIDES,
    layout=LAYOUTS,
    family=st.sampled_from(FAMILIES),
    seed=st.integers(0, 2**31 - 1),
)
def test_anchors_match_the_plain_ops_for_every_family(
    data: st.DataObject, stride, layout: str, family: str, seed: int
) -> None:
    """The one-pass anchor (and its hand-over to the tie-break tiers) picks what the plain path picks.

    Planes exactly (same norms bit for bit). Where the channels are contiguous (tokens, or planes
    held channels-last) the norms differ from the plain path's ``sum`` in the last bits, so there
    the two may pick different phases only if those phases' energies agree within that rounding.
    """
    sh, sw = normalize_stride(stride)
    height, width = _grid(data, (sh, sw), 64)
    x, channels_last = _in_layout(make_images(family, (3, 3, height, width), seed=seed), layout)
    y, offsets = equivit.polyphase_anchor(x, (sh, sw), channels_last=channels_last)
    y_plain, offsets_plain = _plain(equivit.polyphase_anchor, x, (sh, sw), channels_last=channels_last)
    same = (offsets == offsets_plain).all(dim=1)
    if layout == "planes":
        assert bool(same.all()), f"{family} {layout} {x.shape} stride {(sh, sw)}"
    energies = _plain(phase_energies, x, sh, sw, True, channels_last)
    for b in torch.nonzero(~same).flatten().tolist():
        picked, plain = energies[b, offsets[b, 0], offsets[b, 1]], energies[b, offsets_plain[b, 0], offsets_plain[b, 1]]
        assert abs(float(picked - plain)) <= 1e-6 * float(plain), f"{family} {x.shape}: {picked} vs {plain}"
    assert torch.equal(y[same], y_plain[same])


# --- equivariance ---------------------------------------------------------------------------------


@pytest.mark.parametrize("on", [True, False], ids=["fused", "plain"])
@given(
    data=st.data(),
    stride=STRIDES,
    layout=LAYOUTS,
    family=st.sampled_from(FAMILIES),
    channels=st.sampled_from([1, 3, 16, 40]),
    seed=st.integers(0, 2**31 - 1),
)
def test_anchor_is_shift_consistent_with_and_without_the_kernels(
    on: bool, data: st.DataObject, stride, layout: str, family: str, channels: int, seed: int
) -> None:
    """Both paths are exactly shift-consistent, in every layout (the suite's other tests run fused)."""
    sh, sw = normalize_stride(stride)
    height, width = _grid(data, (sh, sw), 64)
    images = make_images(family, (2, channels, height, width), seed=seed)
    x, channels_last = _in_layout(images, layout)
    shift = data.draw(st.tuples(st.integers(0, height - 1), st.integers(0, width - 1)))
    with fused.use_fused_kernels(on):
        consistent = anchor_consistency(x, (sh, sw), shift, channels_last=channels_last)
    assert bool(consistent.all()), f"{family} {layout} {x.shape} stride {(sh, sw)} shift {shift}"


def _layout_disagreements() -> int:
    """Samples whose anchors differ between a map held contiguous and the same map held channels-last."""
    differ = 0
    for channels in (3, 16, 40):
        for seed in range(40):
            x = make_images("channel_permutations", (2, channels, 2, 2), seed=seed)
            held_last = x.contiguous(memory_format=torch.channels_last)
            differ += int((equivit.anchor_offsets(x, 2) != equivit.anchor_offsets(held_last, 2)).any(1).sum())
    return differ


def test_plain_anchor_does_not_depend_on_the_memory_layout() -> None:
    """The same map held contiguous and channels-last gets the same anchors, ties in exact arithmetic included."""
    with fused.use_fused_kernels(False):
        assert _layout_disagreements() == 0


def test_fused_anchor_does_not_depend_on_the_memory_layout() -> None:
    with fused.use_fused_kernels(True):
        assert _layout_disagreements() == 0


@pytest.mark.parametrize("threads", [1, 2])
def test_large_maps_on_several_threads_are_consistent(threads: int) -> None:
    """Maps above the one-thread limit are shared among threads; the result does not depend on it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for family in ("random", "binary", "stripes"):
            x = make_images(family, (6, 32, 64, 96), seed=3)
            assert x.numel() >= fused._PARALLEL_MIN_ELEMENTS
            assert bool(anchor_consistency(x, (8, 8), (5, 13)).all())
            assert torch.equal(equivit.polyphase_anchor(x, 8)[0], _plain(equivit.polyphase_anchor, x, 8)[0])
    finally:
        torch.set_num_threads(previous)


# --- gradients and inference mode -----------------------------------------------------------------


def test_gradient_still_flows_as_the_inverse_roll() -> None:
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    y, offsets = equivit.polyphase_anchor(x, 4)
    (y * torch.arange(y.numel(), dtype=torch.float64).view_as(y)).sum().backward()
    expected = equivit.roll_from_anchor(torch.arange(y.numel(), dtype=torch.float64).view_as(y), offsets)
    assert torch.equal(x.grad, expected)


def test_inference_mode_tensors() -> None:
    with torch.inference_mode():
        x = torch.randn(2, 8, 8, 16)
        y, _ = equivit.polyphase_anchor(x, 4, channels_last=True)
    assert torch.equal(y, _plain(equivit.polyphase_anchor, x, 4, channels_last=True)[0])
