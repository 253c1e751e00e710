"""The content tie-break (equivit.tie_break) and the two anchor paths (CPU and accelerator) built on it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import equivit
from equivit.device_paths import accelerator_paths
from equivit.polyphase import normalize_stride
from equivit.testing import make_images
from equivit.testing.launches import count_kernel_ops
from equivit.tie_break import reading_hash_scores, tie_break_modulus
from helpers import anchor_consistency, naive_consistency, sign_free_consistency

SIGNED = ("signed_stripes", "signed_checkerboard", "mirrored", "channel_permutations")
STRIDES = st.one_of(st.integers(1, 8), st.tuples(st.integers(1, 8), st.integers(1, 8)))
PATHS = st.sampled_from(["cpu", "accelerator"])


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))


def _anchor_consistency_on(path: str, *args: object, **kwargs: object) -> torch.Tensor:
    with accelerator_paths(path == "accelerator"):
        return anchor_consistency(*args, **kwargs)  # type: ignore[arg-type]


# --- smoke and errors -------------------------------------------------------------------------


def test_scores_smoke() -> None:
    scores = reading_hash_scores(torch.randn(2, 3, 16, 24), 4, 8, False)
    assert scores.shape == (2, 4, 8)
    assert scores.dtype == torch.float64
    assert bool((scores == scores.round()).all())  # exact integers


@pytest.mark.parametrize("size", [1, 2, 7, 14, 56, 224, 256, 257, 1024, 4096, 2**16, 2**20, 2**23])
def test_modulus_is_a_prime_within_float64_exactness(size: int) -> None:
    q = tie_break_modulus(size)
    assert _is_prime(q)
    assert 2 * size * q * q <= 2**52
    assert q > 2**13


@pytest.mark.parametrize("start", [0, 2 * 1000003, 5 * 1000003])
def test_table_streams_in_python_integers_match_the_tensor_ones(start: int) -> None:
    """Tables built outside TorchScript (Python integers) and inside it (tensors) hold the same numbers."""
    from equivit.tie_break import _mix, _mix_ints

    values = torch.arange(start, start + 300, dtype=torch.int64)
    for seed in (1, 7):
        assert _mix_ints(range(start, start + 300), seed) == _mix(values, seed).tolist()


def test_modulus_error_names_the_limit() -> None:
    with pytest.raises(ValueError, match=r"2\*\*24"):
        tie_break_modulus(2**24 + 1)


def test_integer_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        equivit.polyphase_anchor(torch.zeros(1, 1, 4, 4, dtype=torch.int32), 2)


# --- properties -------------------------------------------------------------------------------


@given(
    family=st.sampled_from(equivit.testing.FAMILIES),
    stride=STRIDES,
    channels_last=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_scores_move_with_the_content(family: str, stride, channels_last: bool, dtype, seed: int, data) -> None:
    """Shifting the map by ``s`` rolls the scores by ``s`` modulo the period, bit for bit."""
    sh, sw = normalize_stride(stride)
    height, width = sh * data.draw(st.integers(1, 40 // sh)), sw * data.draw(st.integers(1, 40 // sw))
    x = make_images(family, (2, data.draw(st.integers(1, 5)), height, width), seed=seed, dtype=dtype)
    shift = data.draw(st.tuples(st.integers(0, height - 1), st.integers(0, width - 1)))
    shifted = torch.roll(x, shift, dims=(2, 3))
    if channels_last:
        x, shifted = x.permute(0, 2, 3, 1), shifted.permute(0, 2, 3, 1)
    scores = reading_hash_scores(x, sh, sw, channels_last)
    moved = reading_hash_scores(shifted, sh, sw, channels_last)
    assert torch.equal(moved, torch.roll(scores, (shift[0] % sh, shift[1] % sw), dims=(1, 2)))


@given(
    family=st.sampled_from(SIGNED),
    stride=STRIDES,
    path=PATHS,
    channels=st.integers(1, 6),
    large=st.booleans(),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_signed_content_is_anchored_exactly(
    family: str, stride, path: str, channels: int, large: bool, channels_last: bool, seed: int, data
) -> None:
    """Content that differs only in sign or channel order: consistent on small and large maps, both paths."""
    sh, sw = normalize_stride(stride)
    limit = 160 if large else 32
    height, width = sh * data.draw(st.integers(1, limit // sh)), sw * data.draw(st.integers(1, limit // sw))
    x = make_images(family, (2, channels, height, width), seed=seed, channels_last=channels_last)
    shift = data.draw(st.tuples(st.integers(0, height - 1), st.integers(0, width - 1)))
    assert bool(_anchor_consistency_on(path, x, (sh, sw), shift, channels_last=channels_last).all())


@given(
    family=st.sampled_from(equivit.testing.FAMILIES),
    stride=STRIDES,
    channels_last=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_cpu_and_accelerator_paths_choose_alike(family: str, stride, channels_last: bool, seed: int, data) -> None:
    """The CPU path (tie-break only where a flag read says so) and the accelerator path agree.

    They agree on every sample whose energies the two paths compute alike: the CPU sums each
    position's channels in float32 first, the accelerator path sums everything in float64, so
    phases whose energies differ by rounding only may be ordered differently (each path is exact).
    """
    sh, sw = normalize_stride(stride)
    height, width = sh * data.draw(st.integers(1, 48 // sh)), sw * data.draw(st.integers(1, 48 // sw))
    x = make_images(family, (3, 3, height, width), seed=seed, channels_last=channels_last)
    with equivit.fused.use_fused_kernels(False):
        y, offsets = equivit.polyphase_anchor(x, (sh, sw), channels_last=channels_last)
        energies = equivit.polyphase_energy(x, (sh, sw), channels_last=channels_last)
    with accelerator_paths():
        y_acc, offsets_acc = equivit.polyphase_anchor(x, (sh, sw), channels_last=channels_last)
        energies_acc = equivit.polyphase_energy(x, (sh, sw), channels_last=channels_last)
    alike = (energies == energies_acc).flatten(1).all(dim=1)
    if family == "binary":
        assert bool(alike.all())  # sums of zeros and ones are exact on both paths
    assert torch.equal(offsets[alike], offsets_acc[alike])
    assert torch.equal(y[alike], y_acc[alike])


@pytest.mark.parametrize("family", ["signed_checkerboard", "signed_stripes", "channel_permutations", "binary"])
def test_value_keys_of_torchscript_and_onnx_are_exact_too(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys TorchScript and ONNX export use (values modulo q, no bit casts) anchor exactly as well."""
    import equivit.tie_break

    monkeypatch.setattr(equivit.tie_break, "_bit_keys", equivit.tie_break._value_keys)
    x = make_images(family, (4, 3, 24, 36), seed=5)
    for shift in ((1, 2), (5, 7), (0, 3)):
        assert bool(anchor_consistency(x, (4, 6), shift).all()), (family, shift)


def test_tokens_with_equal_statistics_are_told_apart() -> None:
    """Two different tokens with the same L1 norm and the same channel sum, on a small map: no tie is left."""
    first = torch.tensor([1.0, -2.0, 3.0])
    second = torch.tensor([2.0, 3.0, -1.0])  # L1 norm 6 and sum 2, like ``first``
    grid = torch.zeros(14, 14, 3)
    grid[3, 5] = first
    grid[9, 2] = second
    x = grid.permute(2, 0, 1)[None]
    for path in ("cpu", "accelerator"):
        with accelerator_paths(path == "accelerator"):
            assert not equivit.unresolved_ties(x, 2).any()
            for shift in ((1, 0), (0, 1), (5, 3), (13, 13)):
                assert bool(anchor_consistency(x, (2, 2), shift).all())


def test_periodic_maps_keep_their_harmless_ties() -> None:
    """A +-1 checkerboard of 1-pixel cells at stride 2: the diagonal phases read the same map, the others do not."""
    rows, cols = torch.arange(8)[:, None], torch.arange(8)[None, :]
    x = torch.where((rows + cols) % 2 == 0, 1.0, -1.0)[None, None]
    scores = equivit.anchor_scores(x, 2)[0]
    assert scores[0, 0] == scores[1, 1]  # (0, 0) and (1, 1): the same map, read from either
    assert scores[0, 1] == scores[1, 0]
    assert scores[0, 0] != scores[0, 1]  # + and - at the origin: different maps, told apart
    assert bool(equivit.unresolved_ties(x, 2).all())


@pytest.mark.parametrize("family", SIGNED)
def test_negative_control_sign_free_statistics_break(family: str) -> None:
    """Statistics that drop the sign (L1 energies, then the L1-norm map) are not shift-consistent here.

    equivit's anchor is consistent on the same inputs; plain argmax fails too.
    """
    sign_free_failures = naive_failures = 0
    for seed in range(12):
        x = make_images(family, (4, 3, 20, 20), seed=seed)  # half the height is not a whole period
        for shift in ((1, 3), (5, 2)):
            sign_free_failures += int((~sign_free_consistency(x, (4, 4), shift)).sum())
            naive_failures += int((~naive_consistency(x, (4, 4), shift)).sum())
            assert bool(anchor_consistency(x, (4, 4), shift).all())
    assert naive_failures > 0
    if family != "channel_permutations":  # channel permutations keep each pixel's L1 norm: not a sign case
        assert sign_free_failures > 0


# --- cost on an accelerator -------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("family", ["random", "signed_checkerboard", "constant"])
def test_accelerator_anchor_has_no_host_read_and_a_fixed_cost(family: str, channels_last: bool) -> None:
    """On the accelerator path an anchor reads nothing back and launches the same operators, tied or not."""
    x = make_images(family, (4, 3, 32, 48), seed=3, channels_last=channels_last)
    with accelerator_paths():
        equivit.polyphase_anchor(x, (4, 8), channels_last=channels_last)  # builds the tables of this shape
        count = count_kernel_ops(equivit.polyphase_anchor, x, (4, 8), channels_last=channels_last)
    assert count.host_reads == 0, count.by_op
    # Energy 3 (channel norms, float64 cell sums, NaN to inf), token keys 4 (wrapping products,
    # channel sums, modulo q, to float64), reading hashes 6, choice 4, roll 2 (a lookup in the table
    # of every phase's source positions, a gather), offsets 1. A (B, C, H, W) map on CPU tensors is
    # copied to tokens before its channels are summed (the CPU's strided reduction rounds
    # positions differently; an accelerator's does not): one operator more than a GPU launches.
    assert count.ops <= 20 + (0 if channels_last else 1), count.by_op


def test_cpu_path_reads_one_flag() -> None:
    x = make_images("random", (4, 3, 32, 48), seed=3)
    with equivit.fused.use_fused_kernels(False), accelerator_paths(False):
        count = count_kernel_ops(equivit.polyphase_anchor, x, (4, 8))
    assert count.host_reads == 1, count.by_op
