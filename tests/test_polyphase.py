from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import equivit
from equivit.demo import load_photos
from equivit.energy import position_norms
from equivit.polyphase import normalize_stride
from equivit.testing import FAMILIES, make_images
from helpers import anchor_consistency, naive_consistency

STRIDES = st.one_of(st.integers(1, 8), st.tuples(st.integers(1, 8), st.integers(1, 8)))
DTYPES = st.sampled_from([torch.float32, torch.bfloat16])


# --- smoke -----------------------------------------------------------------------------------


def test_anchor_smoke() -> None:
    x = torch.randn(2, 3, 32, 48)
    y, offsets = equivit.polyphase_anchor(x, (8, 16))
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    assert offsets.shape == (2, 2)
    assert offsets.dtype == torch.int64
    assert bool((offsets[:, 0] < 8).all() and (offsets[:, 1] < 16).all() and (offsets >= 0).all())
    for b in range(2):
        expected = torch.roll(x[b], (-int(offsets[b, 0]), -int(offsets[b, 1])), dims=(1, 2))
        assert torch.equal(y[b], expected)


def test_anchor_picks_the_largest_l1_component() -> None:
    x = torch.zeros(1, 2, 8, 8)
    x[0, :, 2::4, 3::4] = 1.0
    _, offsets = equivit.polyphase_anchor(x, 4)
    assert offsets.tolist() == [[2, 3]]


def test_anchor_keeps_dtype_and_uses_float64_energies() -> None:
    x = torch.randn(2, 3, 16, 16).bfloat16()
    y, _ = equivit.polyphase_anchor(x, 4)
    assert y.dtype == torch.bfloat16
    assert equivit.polyphase_energy(x, 4).dtype == torch.float64


def test_stride_one_is_identity() -> None:
    x = torch.randn(2, 3, 5, 7)
    y, offsets = equivit.polyphase_anchor(x, 1)
    assert torch.equal(y, x)
    assert not offsets.any()


def test_empty_batch() -> None:
    y, offsets = equivit.polyphase_anchor(torch.randn(0, 3, 16, 16), 8)
    assert y.shape == (0, 3, 16, 16)
    assert offsets.shape == (0, 2)


def test_channels_last_matches_channels_first() -> None:
    x = torch.randn(3, 5, 24, 40)
    y, offsets = equivit.polyphase_anchor(x, (4, 8))
    y_last, offsets_last = equivit.polyphase_anchor(x.permute(0, 2, 3, 1), (4, 8), channels_last=True)
    assert torch.equal(offsets, offsets_last)
    assert torch.equal(y_last, y.permute(0, 2, 3, 1))


def test_nan_input_is_deterministic_and_consistent() -> None:
    x = torch.randn(3, 2, 16, 16)
    x[0, 1, 5, 6] = float("nan")
    x[1, :, 3, :] = float("inf")
    first, offsets = equivit.polyphase_anchor(x, 4)
    again, offsets_again = equivit.polyphase_anchor(x.clone(), 4)
    assert torch.equal(offsets, offsets_again)
    torch.testing.assert_close(first, again, rtol=0, atol=0, equal_nan=True)
    assert anchor_consistency(x, (4, 4), (3, 9)).all()


def test_l2_energy_option() -> None:
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = 3.0  # one strong value: largest L2 component
    x[0, 0, 0::2, 0::2] = 1.0  # four unit values: largest L1 component
    assert equivit.anchor_offsets(x, 2).tolist() == [[0, 0]]
    assert equivit.anchor_offsets(x, 2, energy="l2").tolist() == [[1, 1]]


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 1, 3, 16, 16), (16,)])
def test_rejects_wrong_rank(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        ValueError, match=r"4-D tensor \(B, C, H, W\).*" + str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")
    ):
        equivit.polyphase_anchor(torch.randn(shape), 4)


@pytest.mark.parametrize(("size", "stride"), [((18, 16), 4), ((16, 18), (4, 4)), ((16, 16), (3, 4)), ((0, 16), 4)])
def test_rejects_sizes_not_multiple_of_stride(size: tuple[int, int], stride) -> None:
    with pytest.raises(ValueError, match=rf"H x W = {size[0]} x {size[1]}.*not a positive multiple of the stride"):
        equivit.polyphase_anchor(torch.randn(2, 3, *size), stride)


@pytest.mark.parametrize("stride", [0, -2, (2,), (2, 0), 2.0, True, (2, 2, 2)])
def test_rejects_bad_stride(stride) -> None:
    with pytest.raises(ValueError, match="stride must be a positive int"):
        equivit.polyphase_anchor(torch.randn(1, 1, 8, 8), stride)


def test_rejects_bad_energy_and_dtype() -> None:
    with pytest.raises(ValueError, match="energy must be 'l1' or 'l2'"):
        equivit.polyphase_anchor(torch.randn(1, 1, 8, 8), 2, energy="linf")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"floating-point tensor, got dtype torch\.int64"):
        equivit.polyphase_anchor(torch.ones(1, 1, 8, 8, dtype=torch.int64), 2)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        equivit.polyphase_anchor([[1.0]], 2)  # type: ignore[arg-type]


def test_channels_last_error_names_layout() -> None:
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        equivit.polyphase_anchor(torch.randn(8, 8, 3), 2, channels_last=True)


# --- equivariance properties ------------------------------------------------------------------


@given(data=st.data(), stride=STRIDES, dtype=DTYPES, family=st.sampled_from(FAMILIES), seed=st.integers(0, 2**31 - 1))
def test_anchor_is_shift_consistent(data: st.DataObject, stride, dtype: torch.dtype, family: str, seed: int) -> None:
    """Anchoring a shifted input gives the anchored input rolled by whole periods, exactly.

    Any shape (up to 160 pixels, so that all three tiers of the choice are exercised), stride,
    shift, dtype and family, every sample, no exception. Whether a sample has harmless ties left
    (``unresolved_ties``) must not depend on the shift either.
    """
    sh, sw = normalize_stride(stride)
    shape = (
        data.draw(st.integers(1, 3)),
        data.draw(st.integers(1, 4)),
        sh * data.draw(st.integers(1, 160 // sh)),
        sw * data.draw(st.integers(1, 160 // sw)),
    )
    x = make_images(family, shape, seed=seed, dtype=dtype)
    shift = data.draw(st.tuples(st.integers(0, shape[2] - 1), st.integers(0, shape[3] - 1)))
    tied = equivit.unresolved_ties(x, (sh, sw))
    assert torch.equal(tied, equivit.unresolved_ties(torch.roll(x, shift, dims=(2, 3)), (sh, sw)))
    assert bool(anchor_consistency(x, (sh, sw), shift).all()), (
        f"inconsistent anchors for {family} {dtype} {shape} stride {(sh, sw)} shift {shift}"
    )


@given(
    channels=st.integers(1, 70),
    size=st.tuples(st.integers(1, 9), st.integers(1, 40)),
    channels_last=st.booleans(),
    other_memory=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
    l1=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_equal_tokens_get_identical_position_norms(
    channels: int,
    size: tuple[int, int],
    channels_last: bool,
    other_memory: bool,
    dtype: torch.dtype,
    l1: bool,
    seed: int,
) -> None:
    """The per-position norms behind the CPU energies are bit-identical for equal tokens, wherever they sit.

    Continuous tokens of widely spread magnitudes, so that any difference in summation order
    between positions shows in the last bits (a strided float32 ``sum`` over the channels of a
    ``(B, C, H, W)`` map fails this for most channel counts above four). With ``other_memory``
    the memory layout is the other one: tokens viewed from a ``(B, C, H, W)`` tensor by a
    permute, or a ``(B, C, H, W)`` map held channels-last.
    """
    generator = torch.Generator().manual_seed(seed)
    palette = torch.randn(3, channels, generator=generator) * torch.exp(
        3 * torch.randn(3, channels, generator=generator)
    )
    choice = torch.randint(0, 3, (2, *size), generator=generator)
    tokens = palette.to(dtype)[choice]  # (2, H, W, C)
    if channels_last:
        x = tokens.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1) if other_memory else tokens
    else:
        x = tokens.permute(0, 3, 1, 2)
        x = x.contiguous(memory_format=torch.channels_last) if other_memory else x.contiguous()
    norms = position_norms(x, l1, channels_last)
    assert norms.shape == (2, *size)
    assert norms.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for k in range(3):
        values = norms[choice == k]
        assert values.numel() == 0 or bool((values == values[0]).all()), f"token {k}: {values.unique()}"
    exact = tokens.double().abs().sum(-1) if l1 else tokens.double().square().sum(-1)
    torch.testing.assert_close(norms.double(), exact, rtol=1e-5, atol=0)


@given(
    channels=st.integers(5, 40),
    stride=STRIDES,
    cells=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_many_channel_continuous_patterns_are_shift_consistent(
    channels: int, stride, cells: tuple[int, int], seed: int, data: st.DataObject
) -> None:
    """Checkerboards of continuous random tokens with many channels: ties everywhere, decided exactly.

    Every polyphase component holds the same multiset of tokens in several phases, so the
    anchor rests on bit-identical energies; any position-dependent rounding would break it.
    """
    sh, sw = normalize_stride(stride)
    height, width = sh * data.draw(st.integers(1, 48 // sh)), sw * data.draw(st.integers(1, 48 // sw))
    generator = torch.Generator().manual_seed(seed)
    palette = torch.randn(2, channels, generator=generator) * torch.exp(
        2 * torch.randn(2, channels, generator=generator)
    )
    rows = torch.arange(height)[:, None] // cells[0]
    cols = torch.arange(width)[None, :] // cells[1]
    x = palette[(rows + cols) % 2].permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    x[1] = x[1].flip(0)  # a second sample with the channels reversed
    shift = data.draw(st.tuples(st.integers(0, height - 1), st.integers(0, width - 1)))
    assert bool(anchor_consistency(x, (sh, sw), shift).all())
    tokens = x.permute(0, 2, 3, 1).contiguous()
    assert bool(anchor_consistency(tokens, (sh, sw), shift, channels_last=True).all())


def test_cpu_energy_is_the_l1_norm_within_rounding() -> None:
    x = torch.randn(3, 17, 24, 40) * torch.exp(2 * torch.randn(3, 17, 1, 1))
    exact = x.double().abs().reshape(3, 17, 6, 4, 5, 8).sum(dim=(1, 2, 4))
    torch.testing.assert_close(equivit.polyphase_energy(x, (4, 8)), exact, rtol=1e-6, atol=0)
    tokens = x.permute(0, 2, 3, 1)
    torch.testing.assert_close(equivit.polyphase_energy(tokens, (4, 8), channels_last=True), exact, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("family", "stride", "shape", "seed", "shift"),
    [
        ("stripes", 3, (4, 1, 90, 60), 2, (79, 51)),
        ("stripes", 16, (4, 2, 96, 160), 5, (66, 66)),
        ("checkerboard", 2, (4, 3, 34, 82), 34, (21, 20)),
        ("checkerboard", 2, (4, 2, 66, 36), 40, (53, 20)),
        ("stripes", 4, (4, 3, 128, 44), 46, (126, 41)),
    ],
)
def test_structure_beyond_the_fine_grid_is_consistent(family: str, stride: int, shape, seed: int, shift) -> None:
    """Cases whose coarse and fine grids tie harmfully: only the full-resolution tier gets them right."""
    x = make_images(family, shape, seed=seed)
    assert bool(anchor_consistency(x, (stride, stride), shift).all())


def stripes_and_checkerboards(size: int, cell: int) -> torch.Tensor:
    """Vertical, horizontal and diagonal binary stripes and a checkerboard, with a given cell width."""
    rows, cols = torch.arange(size)[:, None], torch.arange(size)[None, :]
    patterns = [
        (rows // cell % 2).expand(size, size),
        (cols // cell % 2).expand(size, size),
        (rows + cols) // cell % 2,
        (rows // cell + cols // cell) % 2,
    ]
    return torch.stack(patterns)[:, None].float().expand(4, 3, size, size)


@pytest.mark.parametrize("stride", [2, 4, 8, 16])
@pytest.mark.parametrize("cell", [1, 2, 3, 8, 12, 16, 24, 28, 56])
def test_stripes_and_checkerboards_at_224_are_consistent(stride: int, cell: int) -> None:
    """Stripes and checkerboard cells of any width, inside the 32-pixel fine grid or far beyond it.

    Widths whose period does not divide 32 (3, 12, 24, 28, 56) reach the full-resolution tier.
    (Stripes stay tied along their own direction, harmlessly: the image is invariant along it.)
    """
    x = stripes_and_checkerboards(224, cell)
    for shift in ((5, 11), (1, 0), (0, 3), (17, 29)):
        assert bool(anchor_consistency(x, (stride, stride), shift).all())


@pytest.mark.parametrize("stride", [7, 16, 32])
def test_equal_dots_far_apart_are_consistent(stride: int) -> None:
    """Two or three equal dots, tens of pixels apart: the coarse and fine energies tie, the pixel tier decides.

    The third case puts two dots exactly half the image apart: the image is then periodic and the
    tie is left, harmlessly (reported by ``unresolved_ties``), where half the image is not a
    whole number of periods.
    """
    x = torch.zeros(3, 2, 224, 224)
    x[0, :, 10, 20] = x[0, :, 150, 77] = 1.0
    x[1, :, 3, 3] = x[1, :, 3, 100] = x[1, :, 190, 50] = 2.0
    x[2, :, 40, 40] = x[2, :, 152, 152] = 1.0
    assert equivit.unresolved_ties(x, stride).tolist() == [False, False, 112 % stride != 0]
    for shift in ((5, 11), (13, 2), (100, 37)):
        assert bool(anchor_consistency(x, (stride, stride), shift).all())


@pytest.mark.parametrize("family", ["binary", "quantised", "random"])
@pytest.mark.parametrize("stride", [2, 7, 16])
def test_unstructured_families_at_224_leave_no_tie(family: str, stride: int) -> None:
    x = make_images(family, (4, 3, 224, 224), seed=stride)
    assert not equivit.unresolved_ties(x, stride).any()
    assert bool(anchor_consistency(x, (stride, stride), (5, 11)).all())


def test_negative_control_plain_l2_argmax_breaks() -> None:
    """The original anchor (float32 L2 energies, first maximum) is not shift-consistent on these."""
    failures = 0
    for family in ("stripes", "checkerboard", "binary", "sparse_dots"):
        for seed in range(10):
            x = make_images(family, (4, 3, 16, 16), seed=seed)
            failures += int((~naive_consistency(x, (4, 4), (1, 3))).sum())
            assert bool(anchor_consistency(x, (4, 4), (1, 3)).all())
    assert failures > 0


def test_real_photos_have_no_unresolved_ties() -> None:
    """On real photographs (scikit-image) exact energy ties do not occur; anchoring is exact."""
    batch = load_photos(224)
    for stride in (2, 4, 7, 8, 14, 16):
        assert not equivit.unresolved_ties(batch, stride).any()
        for shift in ((3, 5), (13, 1), (100, 37)):
            assert bool(anchor_consistency(batch, (stride, stride), shift).all())


# --- autograd and compile ---------------------------------------------------------------------


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_gradient_is_inverse_roll(memory_format: torch.memory_format) -> None:
    x = torch.randn(3, 2, 8, 12, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_()
    y, offsets = equivit.polyphase_anchor(x, (4, 6))
    upstream = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, upstream)
    assert torch.equal(grad, equivit.roll_from_anchor(upstream, offsets))
    assert torch.autograd.gradcheck(lambda t: equivit.polyphase_anchor(t, (4, 6))[0], (x,))
    assert torch.autograd.gradgradcheck(lambda t: equivit.polyphase_anchor(t, (4, 6))[0], (x,))


def test_compiles_without_graph_breaks() -> None:
    x = torch.randn(4, 3, 32, 32)
    explanation = torch._dynamo.explain(equivit.polyphase_anchor)(x, 8)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(equivit.polyphase_anchor, fullgraph=True, backend="aot_eager")
    y, offsets = compiled(x, 8)
    y_eager, offsets_eager = equivit.polyphase_anchor(x, 8)
    assert torch.equal(offsets, offsets_eager)
    assert torch.equal(y, y_eager)


def test_compiles_through_every_tier() -> None:
    """The tie-break tiers are nested ``torch.cond``s: a tied input goes through all of them, no break."""
    x = make_images("stripes", (4, 2, 128, 44), seed=46)  # needs the pixel tier (see above)
    explanation = torch._dynamo.explain(equivit.polyphase_anchor)(x, 4)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(equivit.polyphase_anchor, fullgraph=True, backend="aot_eager")
    for images in (x, torch.roll(x, (126, 41), dims=(2, 3))):
        y, offsets = compiled(images, 4)
        y_eager, offsets_eager = equivit.polyphase_anchor(images, 4)
        assert torch.equal(offsets, offsets_eager)
        assert torch.equal(y, y_eager)


@pytest.mark.slow
def test_compiles_with_inductor() -> None:
    x = torch.randn(4, 3, 32, 48, requires_grad=True)
    compiled = torch.compile(lambda t: equivit.polyphase_anchor(t, (8, 16)), fullgraph=True)
    y, offsets = compiled(x)
    y_eager, offsets_eager = equivit.polyphase_anchor(x, (8, 16))
    assert torch.equal(offsets, offsets_eager)
    assert torch.equal(y, y_eager)
    y.sum().backward()


@given(
    size=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    padding=st.tuples(st.integers(0, 9), st.integers(0, 9)),
    layout=st.sampled_from(["contiguous", "channels-last memory", "tokens"]),
    seed=st.integers(0, 2**16),
)
def test_roll_to_anchor_pads_circularly_in_the_same_gather(
    size: tuple[int, int], padding: tuple[int, int], layout: str, seed: int
) -> None:
    """Padding larger than the map wraps around as often as needed; a channels-last map stays channels-last."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 2, *size, generator=generator)
    offsets = torch.stack([torch.randint(-9, 9, (3,), generator=generator) for _ in range(2)], dim=1)
    ph, pw = padding
    rows = torch.arange(-ph, size[0] + ph) % size[0]
    cols = torch.arange(-pw, size[1] + pw) % size[1]
    expected = torch.stack(
        [torch.roll(x[b], (-int(o[0]), -int(o[1])), dims=(1, 2))[:, rows][:, :, cols] for b, o in enumerate(offsets)]
    )
    if layout == "tokens":
        got = equivit.roll_to_anchor(x.permute(0, 2, 3, 1), offsets, channels_last=True, padding=padding)
        assert torch.equal(got.permute(0, 3, 1, 2), expected)
        return
    memory_format = torch.channels_last if layout == "channels-last memory" else torch.contiguous_format
    x = x.contiguous(memory_format=memory_format)
    # A 1 x 1 map, or one channel, is both layouts at once: then either result layout is right.
    either = x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    got = equivit.roll_to_anchor(x, offsets, padding=padding)
    assert torch.equal(got, expected)
    assert either or got.is_contiguous(memory_format=memory_format)
    back = equivit.roll_from_anchor(equivit.roll_to_anchor(x, offsets), offsets)
    assert torch.equal(back, x)
    assert either or back.is_contiguous(memory_format=memory_format)
