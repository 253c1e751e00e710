"""Choosing the anchored phase: the largest energy, then the content tie-break.

:func:`best_phase` makes the choice the anchored layers use; :func:`anchor_scores` shows the
same choice as a score per candidate, and :func:`unresolved_ties` reports the ties content cannot
break (harmless ones: see :mod:`equivit.polyphase`).
"""

from __future__ import annotations

import torch

from equivit.anchor_checks import check_energy, check_input, normalize_stride, require_tensor
from equivit.canonical import dense_rank
from equivit.device_paths import compiling, takes_host_paths
from equivit.energy import Energy, phase_energies
from equivit.tie_break import reading_hash_scores

__all__ = ["anchor_phase", "anchor_scores", "best_phase", "unresolved_ties"]


def _top_is_unique(scores: torch.Tensor) -> torch.Tensor:
    """Whether every sample's largest score is reached once (a 0-d bool tensor).

    Every sample reaches its largest score at least once, so the count over the whole batch is
    ``B`` exactly when each reaches it once (one reduction fewer than a count per sample).

    Shape:
        - scores: :math:`(B, N)`
    """
    return (scores == scores.amax(dim=1, keepdim=True)).sum() == scores.shape[0]


def _host_reads_free(x: torch.Tensor) -> bool:
    """Whether a data-dependent branch may read ``x``'s values on the host: CPU paths, eager, not traced."""
    if not torch.jit.is_scripting():
        return takes_host_paths(x) and not compiling() and not torch.jit.is_tracing()
    return x.is_cpu


def _tie_broken_choice(x: torch.Tensor, coarse: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Flat index of the phase of largest energy, ties broken by :func:`reading_hash_scores`; no host read.

    Shape:
        - coarse: :math:`(B, s_h, s_w)`
        - output: :math:`(B,)`
    """
    flat = coarse.flatten(1)
    hashes = reading_hash_scores(x, coarse.shape[1], coarse.shape[2], channels_last).flatten(1)
    behind = flat < flat.amax(dim=1, keepdim=True)  # not of the largest energy (NaN: none behind)
    return hashes.masked_fill(behind, float("-inf")).argmax(dim=1)


def best_phase(x: torch.Tensor, coarse: torch.Tensor, l1: bool, channels_last: bool) -> torch.Tensor:
    """Flat index of the anchored phase: largest energy, then the content tie-break.

    On the accelerator paths (and under ``torch.compile``, ``torch.export`` and tracing) the
    tie-break runs for every sample, in a fixed sequence of operations: no host read. On the CPU
    paths one flag is read (free there): when every sample's largest energy is unique the
    tie-break is skipped, and otherwise it runs on the tied samples only. Both choose the same.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - coarse: :math:`(B, s_h, s_w)`
        - output: :math:`(B,)`
    """
    flat = coarse.flatten(1)
    if flat.shape[0] == 0 or flat.shape[1] == 1:
        return flat.argmax(dim=1)
    if not _host_reads_free(x):
        return _tie_broken_choice(x, coarse, channels_last)
    best = flat.argmax(dim=1)
    if bool(_top_is_unique(flat)):
        return best
    tied = ((flat == flat.amax(dim=1, keepdim=True)).sum(dim=1) > 1).nonzero().squeeze(1)
    chosen = _tie_broken_choice(x.index_select(0, tied), coarse.index_select(0, tied), channels_last)
    return best.index_copy(0, tied, chosen)


def anchor_phase(x: torch.Tensor, sh: int, sw: int, energy: str, channels_last: bool) -> torch.Tensor:
    """Flat index of each sample's anchor in the ``sh x sw`` period (row-major), after the input checks.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B,)`, int64
    """
    check_input(x, (sh, sw), channels_last, "anchor_offsets")
    check_energy(energy)
    coarse = phase_energies(x, sh, sw, energy == "l1", channels_last)
    return best_phase(x, coarse, energy == "l1", channels_last)


def anchor_scores(
    x: torch.Tensor,
    stride: int | tuple[int, int],
    *,
    energy: Energy = "l1",
    channels_last: bool = False,
) -> torch.Tensor:
    """Score of every candidate phase; the anchor is the phase of highest score.

    Lexicographic: the candidate's energy first, then its content tie-break
    (:func:`equivit.tie_break.reading_hash_scores`: the best hash of the whole map read from one
    of its lifts). The score depends only on content: shifting the input by ``(a, b)`` rolls
    the score grid by ``(a, b)`` modulo the stride. Equal top scores are ties that content cannot
    break; they are harmless (see :func:`unresolved_ties`).

    Args:
        x: Feature maps; ``H`` and ``W`` multiples of the stride.
        stride: ``sh`` and ``sw``, an int or a pair.
        energy: ``"l1"`` (default) or ``"l2"``.
        channels_last: Whether ``x`` is laid out ``(B, H, W, C)``.

    Returns:
        int64 scores in ``[0, (s_h s_w)^2)``: dense ranks of the (energy, tie-break) pairs.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B, s_h, s_w)`
    """
    pair = normalize_stride(stride)
    require_tensor(x, "anchor_scores")
    check_input(x, pair, channels_last, "anchor_scores")
    check_energy(energy)
    coarse = phase_energies(x, pair[0], pair[1], energy == "l1", channels_last)
    if x.shape[0] == 0:
        return torch.zeros(coarse.shape, dtype=torch.int64, device=x.device)
    hashes = reading_hash_scores(x, pair[0], pair[1], channels_last)
    count = pair[0] * pair[1]
    scores = dense_rank(coarse.flatten(1)) * count + dense_rank(hashes.flatten(1))
    return scores.view(coarse.shape)


def unresolved_ties(
    x: torch.Tensor,
    stride: int | tuple[int, int],
    *,
    energy: Energy = "l1",
    channels_last: bool = False,
) -> torch.Tensor:
    """Which samples have two or more candidate phases that content cannot tell apart.

    Two candidates keep equal scores in :func:`anchor_scores` only when their energies are equal
    and so are the hashes of the whole map read from them: the map read from one is the map read
    from the other (up to a hash collision, probability about ``2**-40``), that is, the map is
    periodic with a period that carries one candidate onto the other (a constant image, stripes,
    a checkerboard, two equal dots exactly half the image apart). Either choice then gives the
    same map up to whole periods, so the tie is harmless for what a strided operator computes
    next (for layers that roll their result back, see "The one limit" in docs/anchoring.md). The
    anchor takes the first tied index.

    Returns:
        Booleans, one per sample.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B,)`
    """
    scores = anchor_scores(x, stride, energy=energy, channels_last=channels_last).flatten(1)
    return (scores == scores.amax(dim=1, keepdim=True)).sum(dim=1) > 1
