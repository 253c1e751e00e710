"""Adaptive polyphase anchoring: roll each sample so that its strongest polyphase component leads.

A strided or windowed operator with period ``(sh, sw)`` sees only one of the ``sh * sw``
polyphase components ``x[..., i::sh, j::sw]`` at its grid points. Circularly shifting the input
changes which component that is, and so changes the output. Anchoring picks the component from
its content (the one of largest energy) and rolls the input so that it sits at ``(0, 0)``. A shift
of the input moves the chosen component with it, so after anchoring the operator sees the same
content up to a roll by whole periods: its output is exactly a circular shift of the unshifted
output. Ding et al., "Reviving Shift Equivariance in Vision Transformers" (2023).

Choosing the component:

1. **Energy.** The L1 norm of each component (default; L2 is available). After a LayerNorm
   every token has nearly the same L2 norm and L2 energies tie, so L1 is the default. Energies
   are accumulated in float64 whatever the input dtype (float32 on MPS, which has no float64).
   In eager mode on the CPU, each position's channels are summed in float32 first (in an order
   that is the same for every position) and those per-position norms are summed in float64.
2. **Ties, from content only.** Equal energies are common on synthetic images (binary, constant,
   stripes, checkerboards, dots, a map beside its negative). ``argmax`` would take the first
   index, which is not shift-consistent. Among the phases of largest energy, the one whose lifts
   hold the largest hash of the whole map read from them wins (:mod:`equivit.tie_break`): exact
   integer arithmetic on the tokens' bit patterns, so sign, channel order and arrangement all
   count, and a shift of the input cannot change the choice.
3. **What remains.** Two candidates tie only when the map read from one equals the map read
   from the other (up to a hash collision of probability about ``2**-40``): the map is periodic
   with a period that carries one onto the other, so both give the same map up to whole periods
   and the tie is harmless; the first index is taken. :func:`unresolved_ties` reports them.

Where it runs: on the accelerator paths (CUDA tensors, ``torch.compile``, ``torch.export``,
tracing, :func:`equivit.device_paths.accelerator_paths`) the tie-break runs on every anchor, with
no host read. On the CPU it runs only when one flag read (free there) says an energy is tied.

Exactness: a tie between candidates is only seen as a tie if their energies are summed without
rounding, since the summation order follows the position in the image. Float64 accumulation is
exact when, within a candidate, ``log2(count) + log2(largest / smallest nonzero value)`` stays
below about 29 bits for float32 values (45 for bfloat16 or float16), the values being ``|x|`` or,
on the eager CPU path, the float32 per-position norms: quantised, binary and image data stay far
inside this; continuous features only tie by accident of symmetry. The per-position norms are
rounded, but identically for equal tokens, so equal multisets of tokens still give equal energies.
"""

from __future__ import annotations

import torch

from equivit.anchor_checks import normalize_stride, require_tensor
from equivit.anchor_core import anchor, choose_offsets
from equivit.energy import Energy, polyphase_energy
from equivit.phase_choice import anchor_scores, unresolved_ties

__all__ = [
    "Energy",
    "anchor_offsets",
    "anchor_scores",
    "normalize_stride",
    "polyphase_anchor",
    "polyphase_energy",
    "unresolved_ties",
]


def anchor_offsets(
    x: torch.Tensor,
    stride: int | tuple[int, int],
    *,
    energy: Energy = "l1",
    channels_last: bool = False,
) -> torch.Tensor:
    """Per-sample anchored phase ``(i, j)``, with ``0 <= i < sh`` and ``0 <= j < sw``.

    Args:
        x: Feature maps; ``H`` and ``W`` multiples of the stride.
        stride: ``sh`` and ``sw``, an int or a pair.
        energy: ``"l1"`` (default) or ``"l2"``.
        channels_last: Whether ``x`` is laid out ``(B, H, W, C)``.

    Returns:
        int64 offsets, on the device of ``x``; no gradient flows through them.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B, 2)`
    """
    pair = normalize_stride(stride)
    require_tensor(x, "anchor_offsets")
    return choose_offsets(x, pair[0], pair[1], energy, channels_last)


def polyphase_anchor(
    x: torch.Tensor,
    stride: int | tuple[int, int],
    *,
    energy: Energy = "l1",
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll each sample so that its anchored polyphase component sits at ``(0, 0)``.

    For any circular shift ``s``, ``polyphase_anchor(roll(x, s), stride)[0]`` equals
    ``polyphase_anchor(x, stride)[0]`` rolled by whole periods (a multiple of the stride on
    each axis), so a strided or windowed operator applied next sees the same content and its
    output is an exact circular shift. The roll is a permutation: its gradient is the inverse
    roll, and it runs as a single gather, vectorised over the batch, without host syncs.

    Args:
        x: Feature maps; ``H`` and ``W`` multiples of the stride.
        stride: ``sh`` and ``sw``, an int or a pair.
        energy: ``"l1"`` (default; robust after LayerNorm) or ``"l2"``.
        channels_last: Whether ``x`` is laid out ``(B, H, W, C)`` (token maps).

    Returns:
        The pair ``(y, offsets)``. ``y`` has the shape and dtype of ``x`` with
        ``y[b] == torch.roll(x[b], (-offsets[b, 0], -offsets[b, 1]), dims=(H, W))``;
        ``offsets`` is int64 ``(B, 2)``, the anchored phase of each sample.

    Raises:
        ValueError: If ``x`` is not a 4-D floating-point tensor, ``H`` or ``W`` is not a
            positive multiple of the stride, or the stride or energy is invalid.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - y: same as ``x``
        - offsets: :math:`(B, 2)`

    Examples:
        >>> x = torch.randn(2, 3, 32, 32)
        >>> y, offsets = polyphase_anchor(x, 16)
        >>> y.shape, offsets.shape
        (torch.Size([2, 3, 32, 32]), torch.Size([2, 2]))
    """
    pair = normalize_stride(stride)
    require_tensor(x, "polyphase_anchor")
    return anchor(x, pair[0], pair[1], energy, channels_last)
