"""The anchoring core the layers call: plain positional arguments, TorchScript-compatible.

:func:`equivit.polyphase_anchor` and friends normalise and check their arguments, then call
these. The anchored layers call them directly (the stride already a pair, the energy a ``str``),
which ``torch.jit.script`` compiles. :mod:`equivit.fx` registers them with timm's FX registry,
so a traced model records each call as one node, and a traced graph scripts too.

The paths taken only in eager mode or under ``torch.compile``/``torch.export`` (fused CPU
kernels, slicing on the CPU) sit in blocks under ``if not torch.jit.is_scripting():``, which
TorchScript skips without compiling them.
"""

from __future__ import annotations

import torch

from equivit import fused
from equivit.anchor_checks import check_energy, check_input
from equivit.phase_choice import anchor_phase, best_phase
from equivit.roll import _phase_offsets, _roll, _roll_to_phase

__all__ = ["anchor", "anchor_padded", "choose_offsets", "roll_back"]


def anchor(x: torch.Tensor, sh: int, sw: int, energy: str, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`equivit.polyphase_anchor` for the layers: positional arguments, TorchScript-compatible.

    Args:
        x: Feature maps; ``H`` and ``W`` multiples of ``(sh, sw)``.
        sh: Period along the rows.
        sw: Period along the columns.
        energy: ``"l1"`` or ``"l2"``.
        channels_last: Whether ``x`` is laid out ``(B, H, W, C)``.

    Returns:
        The pair ``(y, offsets)``: ``x`` rolled so that each sample's anchored phase sits at the origin, and
        the int64 phases, as :func:`equivit.polyphase_anchor` returns them.

    Raises:
        ValueError: If ``x`` is not a 4-D floating-point map whose size is a positive multiple
            of the period, or the energy is neither name.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - y: same as ``x``
        - offsets: :math:`(B, 2)`
    """
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips only this exact condition)
        if fused.applies_to_energy(x, channels_last) and fused.applies_to_roll(x, channels_last):
            return _fused_anchor(x, sh, sw, energy, channels_last)
    phase = anchor_phase(x, sh, sw, energy, channels_last)
    return _roll_to_phase(x, phase, (sh, sw), channels_last, (0, 0)), _phase_offsets(phase, sh, sw)


def anchor_padded(
    x: torch.Tensor, sh: int, sw: int, energy: str, channels_last: bool, padding: tuple[int, int]
) -> torch.Tensor:
    """``x`` rolled to its anchor and padded circularly, in one gather, for layers that drop the offsets.

    Args:
        x: Feature maps; ``H`` and ``W`` multiples of ``(sh, sw)``.
        sh: Period along the rows.
        sw: Period along the columns.
        energy: ``"l1"`` or ``"l2"``.
        channels_last: Whether ``x`` is laid out ``(B, H, W, C)``.
        padding: ``(p_h, p_w)``, rows and columns of circular padding on each side (an anchored
            strided convolution or pooling needs them).

    Returns:
        The anchored, padded map.

    Raises:
        ValueError: As :func:`anchor`.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B, C, H + 2 p_h, W + 2 p_w)`, or :math:`(B, H + 2 p_h, W + 2 p_w, C)`
    """
    # With the fused CPU kernels the energies and the roll each run fused inside these two calls.
    return _roll_to_phase(x, anchor_phase(x, sh, sw, energy, channels_last), (sh, sw), channels_last, padding)


def choose_offsets(x: torch.Tensor, sh: int, sw: int, energy: str, channels_last: bool) -> torch.Tensor:
    """:func:`equivit.anchor_offsets` for the layers: the anchored phases, without rolling.

    Args:
        x: Feature maps; ``H`` and ``W`` multiples of ``(sh, sw)``.
        sh: Period along the rows.
        sw: Period along the columns.
        energy: ``"l1"`` or ``"l2"``.
        channels_last: Whether ``x`` is laid out ``(B, H, W, C)``.

    Returns:
        int64 phases ``(i, j)`` with ``0 <= i < sh`` and ``0 <= j < sw``.

    Raises:
        ValueError: As :func:`anchor`.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B, 2)`
    """
    return _phase_offsets(anchor_phase(x, sh, sw, energy, channels_last), sh, sw)


def _fused_anchor(
    x: torch.Tensor, sh: int, sw: int, energy: str, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`anchor` with the fused CPU kernels: energies and roll in one pass per sample.

    Samples whose largest coarse energy is tied are anchored by the tie-break tiers afterwards
    (the same choice :func:`best_phase` makes), and the batch is rolled again.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: same as ``x``, and :math:`(B, 2)`
    """
    check_input(x, (sh, sw), channels_last, "anchor_offsets")
    check_energy(energy)
    l1 = energy == "l1"
    rolled, offsets, coarse, done = fused.anchor(x, sh, sw, l1, channels_last)
    if bool(done.all()):
        return rolled, offsets
    offsets = _phase_offsets(best_phase(x, coarse, l1, channels_last), sh, sw)
    return _roll(x, offsets, channels_last, 1, (0, 0)), offsets


def roll_back(y: torch.Tensor, offsets: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """:func:`equivit.roll_from_anchor` for offsets that :func:`anchor` returned (already in range).

    Args:
        y: Feature maps in the anchored frame.
        offsets: The phases :func:`anchor` returned for the map ``y`` was computed from.
        channels_last: Whether ``y`` is laid out ``(B, H, W, C)``.

    Returns:
        ``y`` rolled back to the frame of the input of :func:`anchor`.

    Shape:
        - y: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - offsets: :math:`(B, 2)`
        - output: same as ``y``
    """
    return _roll(y, offsets, channels_last, -1, (0, 0))
