"""Reference checks shared by the tests."""

from __future__ import annotations

import itertools

import torch
from torch import nn

import equivit


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exact equality, NaN equal to NaN."""
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def is_whole_period_roll(
    shifted: torch.Tensor, reference: torch.Tensor, stride: tuple[int, int], hint: tuple[int, int]
) -> bool:
    """Whether ``shifted`` equals ``reference`` rolled by whole periods (exact; tries ``hint`` first).

    Shape:
        - shifted, reference: :math:`(C, H, W)`
    """
    _, height, width = reference.shape
    sh, sw = stride
    if hint[0] % sh == 0 and hint[1] % sw == 0 and _same(torch.roll(reference, hint, dims=(1, 2)), shifted):
        return True
    return any(
        _same(torch.roll(reference, (dy, dx), dims=(1, 2)), shifted)
        for dy, dx in itertools.product(range(0, height, sh), range(0, width, sw))
    )


def anchor_consistency(
    x: torch.Tensor, stride: tuple[int, int], shift: tuple[int, int], *, channels_last: bool = False
) -> torch.Tensor:
    """Per sample: anchoring ``roll(x, shift)`` gives ``anchor(x)`` rolled by whole periods, exactly.

    The shifted map keeps the memory layout of ``x`` (``torch.roll`` returns a contiguous tensor):
    whether anchoring depends on the layout is a property of its own
    (``tests/test_fused.py::test_anchor_does_not_depend_on_the_memory_layout``).

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B,)` booleans
    """
    dims = (1, 2) if channels_last else (2, 3)
    y, offsets = equivit.polyphase_anchor(x, stride, channels_last=channels_last)
    shifted = torch.roll(x, shift, dims=dims)
    if not channels_last and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        shifted = shifted.contiguous(memory_format=torch.channels_last)
    y_shifted, offsets_shifted = equivit.polyphase_anchor(shifted, stride, channels_last=channels_last)
    if channels_last:
        y, y_shifted = y.permute(0, 3, 1, 2), y_shifted.permute(0, 3, 1, 2)
    # y_shifted == roll(y, shift - offsets_shifted + offsets) by construction; checked, not assumed.
    relative = torch.tensor(shift) - offsets_shifted + offsets
    return torch.tensor(
        [
            is_whole_period_roll(y_shifted[b].float(), y[b].float(), stride, (int(relative[b, 0]), int(relative[b, 1])))
            for b in range(x.shape[0])
        ],
        dtype=torch.bool,
    )


def naive_l2_anchor(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """The anchor of the original A-PA code: plain argmax of float32 L2 energies (first max wins)."""
    batch, channels, height, width = x.shape
    sh, sw = stride
    energy = x.reshape(batch, channels, height // sh, sh, width // sw, sw).square().sum(dim=(1, 2, 4))
    best = energy.flatten(1).argmax(dim=1)
    rolled = [torch.roll(x[b], (-(int(best[b]) // sw), -(int(best[b]) % sw)), dims=(1, 2)) for b in range(batch)]
    return torch.stack(rolled)


def sign_free_anchor(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """An anchor whose ties are broken by statistics that drop the sign: L1 energies, then the L1-norm map.

    Candidates are ranked by their float64 L1 energy, then by the best lexicographic rank of the
    per-pixel L1-norm map read from one of their lifts (``equivit.cyclic_rotation_rank``), first
    maximum taken: the statistics equivit used before its bit-pattern tie-break. Content that
    differs only in sign (or in channel order) looks the same to it.
    """
    batch, channels, height, width = x.shape
    sh, sw = stride
    x64 = x.double()
    energy = x64.abs().reshape(batch, channels, height // sh, sh, width // sw, sw).sum(dim=(1, 2, 4)).flatten(1)
    norms = x64.abs().sum(dim=1)
    ranks = equivit.cyclic_rotation_rank(norms).view(batch, height // sh, sh, width // sw, sw).amax(dim=(1, 3))
    leading = energy == energy.amax(dim=1, keepdim=True)
    best = torch.where(leading, ranks.flatten(1), -1).argmax(dim=1)
    rolled = [torch.roll(x[b], (-(int(best[b]) // sw), -(int(best[b]) % sw)), dims=(1, 2)) for b in range(batch)]
    return torch.stack(rolled)


def sign_free_consistency(x: torch.Tensor, stride: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """Per sample consistency of :func:`sign_free_anchor` (a negative control for signed content)."""
    y = sign_free_anchor(x, stride)
    y_shifted = sign_free_anchor(torch.roll(x, shift, dims=(2, 3)), stride)
    return torch.tensor([is_whole_period_roll(y_shifted[b], y[b], stride, (0, 0)) for b in range(x.shape[0])])


def naive_consistency(x: torch.Tensor, stride: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """Per sample consistency of :func:`naive_l2_anchor` (the negative control)."""
    y = naive_l2_anchor(x, stride)
    y_shifted = naive_l2_anchor(torch.roll(x, shift, dims=(2, 3)), stride)
    return torch.tensor([is_whole_period_roll(y_shifted[b], y[b], stride, (0, 0)) for b in range(x.shape[0])])


def is_some_roll(candidate: torch.Tensor, reference: torch.Tensor, dims: tuple[int, int], atol: float = 0.0) -> bool:
    """Whether ``candidate`` equals ``reference`` circularly rolled along ``dims`` by some amount.

    Exact when ``atol`` is 0, else within ``atol``. Tries every roll, so keep the grids small.
    """
    height, width = reference.shape[dims[0]], reference.shape[dims[1]]
    for dy, dx in itertools.product(range(height), range(width)):
        rolled = torch.roll(reference, (dy, dx), dims=dims)
        close = _same(rolled, candidate) if atol == 0 else torch.allclose(rolled, candidate, rtol=0, atol=atol)
        if close:
            return True
    return False


def roll_each(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Roll sample ``b`` of ``x`` (B, C, H, W) by ``shifts[b]`` with ``torch.roll`` (the reference)."""
    return torch.stack([torch.roll(x[b], (int(s[0]), int(s[1])), dims=(1, 2)) for b, s in enumerate(shifts)])


CONSISTENCY_ROWS: list[str] = []  # filled by the model tests, printed by conftest at the end

# Logits of the converted models may differ between a shifted and an unshifted image only by
# rounding (sums over tokens in another order): about 1e-6 of the logit scale is measured.
RELATIVE_TOLERANCE = 2e-5


def check_consistency(
    stock: torch.nn.Module,
    converted: torch.nn.Module,
    images: torch.Tensor,
    label: str,
    shifts: int,
    *,
    stock_must_move: bool = False,
    relative_tolerance: float = RELATIVE_TOLERANCE,
) -> None:
    """Converted: top-1 kept for every image and shift, logits within rounding. Records a table row.

    The logits may move by ``relative_tolerance`` times their scale (at least 1). With
    ``stock_must_move``, the stock model's logits must also move by far more than that.
    """
    from equivit.testing import shift_consistency

    stock_result = shift_consistency(stock, images, shifts_per_image=shifts, seed=1)
    result = shift_consistency(converted, images, shifts_per_image=shifts, seed=1)
    size = f"{images.shape[-2]}x{images.shape[-1]}"
    CONSISTENCY_ROWS.append(f"{label:<54} {size:<9} {stock_result!s:<38} {result}")
    with torch.no_grad():
        tolerance = relative_tolerance * max(1.0, float(converted(images).abs().max()))  # same shape: no recompile
    assert result.fraction == 1.0, result
    assert result.max_logit_change <= tolerance, result
    if stock_must_move:
        assert stock_result.max_logit_change > 100 * tolerance, stock_result  # the stock model is not invariant


class FeatureMap(nn.Module):
    """Feature map ``index`` of a model returning a list of maps, as ``(B, C, H, W)``."""

    def __init__(self, model: nn.Module, index: int, channels: int, intermediates: bool) -> None:
        super().__init__()
        self.model, self.index, self.channels, self.intermediates = model, index, channels, intermediates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.model.forward_intermediates(x, intermediates_only=True) if self.intermediates else self.model(x)
        out = maps[self.index]
        return out if out.shape[1] == self.channels else out.permute(0, 3, 1, 2)


def roll_tokens(x: torch.Tensor, size: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """Roll row-major tokens ``(B, H * W, C)`` of an ``H x W`` grid circularly by ``shift`` (the reference)."""
    grid = x.reshape(x.shape[0], *size, x.shape[-1])
    return torch.roll(grid, shift, dims=(1, 2)).reshape(x.shape)


def check_stage_gradients(stage: nn.Module, x: torch.Tensor) -> None:
    """gradcheck and gradgradcheck of a float64 stage, and the same input gradient with checkpointing.

    The blocks' fused attention is switched off: its double backward is not on every build.
    """
    for block in stage.blocks:  # type: ignore[attr-defined]
        block.attn.fused_attn = False
    assert torch.autograd.gradcheck(stage, (x,))
    assert torch.autograd.gradgradcheck(stage, (x,))
    plain = torch.autograd.grad(stage(x).sum(), x)[0]
    stage.grad_checkpointing = True  # type: ignore[assignment]
    stage.train()
    checkpointed = torch.autograd.grad(stage(x).sum(), x)[0]
    assert torch.allclose(plain, checkpointed)


def rounding_tolerance(model: torch.nn.Module, images: torch.Tensor, floor: float = 1e-5) -> float:
    """How far two float32 evaluations of ``model`` may fairly differ: measured, not guessed.

    ``floor`` times the logit scale (at least 1), or four times the distance between the float32
    logits and a float64 evaluation of the same model, whichever is larger. Deep CNNs with
    trained-looking weights round to about 1e-5 of their scale in float32, so a compiled or exported
    graph, whose kernels round differently, can only be asked to agree with eager to that level.
    """
    import copy

    with torch.no_grad():
        single = model(images)
        double = copy.deepcopy(model).double()(images.double())
    scale = max(1.0, float(double.abs().max()))
    return max(floor * scale, 4 * float((single.double() - double).abs().max()))


def circular_symmetries(image: torch.Tensor) -> list[tuple[int, int]]:
    """Every nonzero circular roll ``(dy, dx)`` that leaves ``image`` ``(C, H, W)`` unchanged."""
    height, width = image.shape[-2:]
    return [
        (dy, dx)
        for dy in range(height)
        for dx in range(width)
        if (dy, dx) != (0, 0) and torch.equal(torch.roll(image, (dy, dx), (-2, -1)), image)
    ]


def assert_moves_with_shift(
    shifted: torch.Tensor, reference: torch.Tensor, shift: tuple[int, int], images: torch.Tensor, atol: float = 0.0
) -> None:
    """Each full-resolution output of a shifted image is the unshifted output rolled by the shift.

    For an image with a circular symmetry (a roll ``g`` that leaves it unchanged) the shift is only
    defined up to ``g``: the image shifted by ``s`` *is* the image shifted by ``s + g``, so the
    output may be the reference rolled by ``s + g`` for such a ``g``. Only then, and only with a
    symmetry of that very image, is another roll accepted.
    """
    for index in range(shifted.shape[0]):
        expected = torch.roll(reference[index], shift, (-2, -1))
        if torch.allclose(shifted[index], expected, rtol=0, atol=atol):
            continue
        symmetries = circular_symmetries(images[index])
        assert any(
            torch.allclose(shifted[index], torch.roll(expected, g, (-2, -1)), rtol=0, atol=atol) for g in symmetries
        ), (
            f"sample {index}, shift {shift}: output differs from the shifted output by up to "
            f"{float((shifted[index] - expected).abs().max()):.3g} (image symmetries: {symmetries[:4]})"
        )
