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

from typing import Literal

import torch

from equivit import fused
from equivit.canonical import dense_rank
from equivit.device_paths import takes_host_paths
from equivit.report import shape_text
from equivit.roll import _phase_offsets, _roll, _roll_to_phase
from equivit.tie_break import reading_hash_scores

__all__ = [
    "Energy",
    "anchor_offsets",
    "anchor_scores",
    "normalize_stride",
    "polyphase_anchor",
    "polyphase_energy",
    "unresolved_ties",
]

Energy = Literal["l1", "l2"]


# The functions below whose names start with an underscore form a TorchScript-compatible core
# (plain positional arguments, energy as a str, no closures): the anchored layers call it, so
# that ``torch.jit.script`` compiles converted models. The paths taken only in eager mode or
# under ``torch.compile``/``torch.export`` (``torch.cond``, slicing on the CPU) sit in blocks
# under ``if not torch.jit.is_scripting():``, which TorchScript skips without compiling them.


def normalize_stride(stride: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Turn an int or a pair into a pair of positive ints.

    Args:
        stride: One period for both axes, or ``(sh, sw)``.

    Returns:
        ``(sh, sw)``.

    Raises:
        ValueError: If the stride is not a positive int or a pair of them.
    """
    pair = (stride, stride) if isinstance(stride, int) else tuple(stride) if isinstance(stride, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ValueError(f"stride must be a positive int or a pair (sh, sw) of positive ints, got {stride!r}")
    return pair  # type: ignore[return-value]


def _require_tensor(x: object, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")


def _check_energy(energy: str) -> None:
    if energy != "l1" and energy != "l2":
        raise ValueError(f"energy must be 'l1' or 'l2', got '{energy}'")


def _check_input(x: torch.Tensor, stride: tuple[int, int], channels_last: bool, name: str) -> tuple[int, int]:
    """Check that ``x`` is a 4-D floating-point map whose grid is a positive multiple of ``stride``.

    Returns:
        ``(H, W)``.
    """
    layout = "(B, H, W, C)" if channels_last else "(B, C, H, W)"
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 4-D tensor {layout}, got shape {shape_text(list(x.shape))}")
    if x.is_complex() or not x.is_floating_point():
        raise ValueError(f"{name} expects a floating-point tensor, got dtype {x.dtype}")
    height, width = _spatial_size(x, channels_last)
    sh, sw = stride
    if height == 0 or width == 0 or height % sh != 0 or width % sw != 0:
        raise ValueError(
            f"{name}: spatial size H x W = {height} x {width} of input shape {shape_text(list(x.shape))} "
            f"is not a positive multiple of the stride ({sh}, {sw}); resize or crop the input so that "
            f"H is a multiple of {sh} and W a multiple of {sw} "
            f"(zero padding would break shift equivariance)"
        )
    return height, width


def _accumulate_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.device.type == "mps" else torch.float64


def _tracing() -> bool:
    """Whether ``torch.compile`` or ``torch.export`` is tracing (never true in TorchScript)."""
    return torch.compiler.is_compiling()


def _position_norms(x: torch.Tensor, l1: bool, channels_last: bool) -> torch.Tensor:
    """Per-position L1 norm (or squared L2 norm) over the channels, float32 (float64 for float64 input).

    Equal tokens give bit-identical values wherever they sit, which the energies rely on. Where
    the channels of a ``(B, H, W, C)`` token map are contiguous in memory, each token is summed
    as one contiguous row, the same way for every token. Otherwise (every ``(B, C, H, W)`` map,
    however it is held, or tokens viewed from one by a permute) the channels are summed by
    elementwise adds of channel halves, which gives the same values in every memory layout: a
    strided reduction over them on the CPU sums the positions of a vector body and of its tail
    in different orders, and so gives equal tokens different values.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B, H, W)`
    """
    dim = 3 if channels_last else 1
    if x.dtype != torch.float32 and x.dtype != torch.float64:
        x = x.float()
    values = x.abs() if l1 else x.square()  # a new tensor (in the layout of x): the adds may run in place
    if channels_last and values.stride(dim) == 1:
        # Contiguous tokens. A (B, C, H, W) map takes the halves below in every memory layout
        # (held channels-last too), so that the same map gets the same norms however it is held.
        return values.sum(dim=dim)
    while values.shape[dim] > 1:
        half = values.shape[dim] // 2
        odd = values.shape[dim] % 2 == 1
        head = values.narrow(dim, 0, half)
        head.add_(values.narrow(dim, half, half))
        if odd:
            head.narrow(dim, 0, 1).add_(values.narrow(dim, 2 * half, 1))
        values = head
    return values.select(dim, 0)


def _energy_by_positions(x: torch.Tensor, ph: int, pw: int, l1: bool, channels_last: bool) -> torch.Tensor:
    """Energies as float64 sums of :func:`_position_norms`, in cache-sized slices of the batch (CPU, eager).

    One pass over the input, which stays in the cache for the adds; only the per-position norms
    (a channel's worth of data) are converted to float64. The float64 sums are exact within the
    headroom documented above, so their order does not matter.

    Shape:
        - output: :math:`(B, p_h, p_w)`
    """
    per_sample = x.numel() // x.shape[0]
    count = max(1, 1048576 // per_sample)  # 2**20 elements a slice (a literal for TorchScript)
    if count >= x.shape[0]:
        return _slice_energy(x, ph, pw, l1, channels_last)
    return torch.cat([_slice_energy(part, ph, pw, l1, channels_last) for part in x.split(count)])


def _slice_energy(x: torch.Tensor, ph: int, pw: int, l1: bool, channels_last: bool) -> torch.Tensor:
    """The energies of one slice of the batch: its per-position norms summed in float64."""
    norms = _position_norms(x, l1, channels_last).to(torch.float64)
    batch, height, width = norms.shape
    if height == ph and width == pw:
        return norms  # one period covers the grid (a key order): the norms are the energies
    return norms.view(batch, height // ph, ph, width // pw, pw).sum(dim=[1, 3])


def _fast_cpu_path(x: torch.Tensor) -> bool:
    """Whether the eager CPU path (per-position norms in slices) applies: not under ``torch.compile``/export."""
    fast = x.is_cpu and x.shape[0] > 0
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips only this exact condition)
        if _tracing() or not takes_host_paths(x):
            fast = False
    return fast


def _energy(x: torch.Tensor, ph: int, pw: int, l1: bool, channels_last: bool) -> torch.Tensor:
    """:func:`polyphase_energy` without its argument checks (``H``, ``W`` multiples of the period).

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B, p_h, p_w)`
    """
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips only this exact condition)
        if fused.applies_to_energy(x, channels_last):
            return fused.energy(x, ph, pw, l1, channels_last)  # one compiled pass (numba installed)
    if x.requires_grad:
        x = x.detach()
    # Eager (and TorchScript) CPU reductions with a float64 accumulator convert the whole input
    # first and reduce strided axes slowly: summing the channels of each position in float32
    # first, in cache-sized slices, costs about half. Compiled graphs and accelerators fuse
    # the single float64 reduction instead.
    if _fast_cpu_path(x):
        return torch.nan_to_num(_energy_by_positions(x, ph, pw, l1, channels_last), nan=float("inf"))
    # Accelerators, compiled graphs, tracing: per-position norms by one reduction over the channels
    # (the same order for every position), then float64 sums over the cells. Summing all values
    # in float64 at once is one launch fewer but not exact when their magnitudes spread beyond
    # float64's headroom (layer-normed values near 0), and then its order, which a shift changes,
    # shows in the last bits.
    norms = _device_position_norms(x, l1, channels_last)
    batch, height, width = norms.shape
    view = norms.reshape(batch, height // ph, ph, width // pw, pw)
    return torch.nan_to_num(torch.sum(view, dim=[1, 3], dtype=_accumulate_dtype(x)), nan=float("inf"))


def _device_position_norms(x: torch.Tensor, l1: bool, channels_last: bool) -> torch.Tensor:
    """:func:`_position_norms` in one or two launches where the channel reduction has one order everywhere.

    A reduction over contiguous channels (tokens) sums every position alike on any device, and
    so does a strided one on an accelerator; a strided one on the CPU does not (see
    :func:`_position_norms`): CPU tensors on the accelerator paths copy the map to tokens first
    (one launch more than a GPU pays).

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B, H, W)`
    """
    dim = 3 if channels_last else 1
    if x.is_cpu and x.stride(dim) != 1:
        x, dim = x.movedim(dim, -1).contiguous(), 3
    norm_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if l1:
        return torch.linalg.vector_norm(x, ord=1, dim=dim, dtype=norm_dtype)
    return torch.sum(torch.square(x.to(norm_dtype)), dim=dim)


def polyphase_energy(
    x: torch.Tensor,
    period: int | tuple[int, int],
    *,
    energy: Energy = "l1",
    channels_last: bool = False,
) -> torch.Tensor:
    """Energy of every polyphase component of period ``(ph, pw)``, in float64.

    ``out[b, i, j]`` is the L1 norm (or squared L2 norm) of ``x[b, :, i::ph, j::pw]``. In eager
    mode on the CPU it is the float64 sum of float32 per-position norms (relative error about
    ``1e-7``; equal tokens give bit-identical norms wherever they sit, so exact ties stay exact).

    Args:
        x: Feature maps; ``H`` and ``W`` multiples of the period.
        period: ``ph`` and ``pw``.
        energy: ``"l1"`` (sum of absolute values) or ``"l2"`` (sum of squares).
        channels_last: Whether ``x`` is laid out ``(B, H, W, C)``.

    Returns:
        Energies, float64 (float32 on MPS). NaN energies are replaced by ``inf``.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B, p_h, p_w)`
    """
    ph, pw = normalize_stride(period)
    _require_tensor(x, "polyphase_energy")
    _check_input(x, (ph, pw), channels_last, "polyphase_energy")
    _check_energy(energy)
    return _energy(x, ph, pw, energy == "l1", channels_last)


def _spatial_size(x: torch.Tensor, channels_last: bool) -> tuple[int, int]:
    if channels_last:
        return x.shape[1], x.shape[2]
    return x.shape[2], x.shape[3]


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
        return takes_host_paths(x) and not _tracing() and not torch.jit.is_tracing()
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


def _best_phase(x: torch.Tensor, coarse: torch.Tensor, l1: bool, channels_last: bool) -> torch.Tensor:
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
    _require_tensor(x, "anchor_scores")
    _check_input(x, pair, channels_last, "anchor_scores")
    _check_energy(energy)
    coarse = _energy(x, pair[0], pair[1], energy == "l1", channels_last)
    if x.shape[0] == 0:
        return torch.zeros(coarse.shape, dtype=torch.int64, device=x.device)
    hashes = reading_hash_scores(x, pair[0], pair[1], channels_last)
    count = pair[0] * pair[1]
    scores = dense_rank(coarse.flatten(1)) * count + dense_rank(hashes.flatten(1))
    return scores.view(coarse.shape)


def _anchor_phase(x: torch.Tensor, sh: int, sw: int, energy: str, channels_last: bool) -> torch.Tensor:
    """Flat index of each sample's anchor in the ``sh x sw`` period (row-major), after the input checks.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B,)`, int64
    """
    _check_input(x, (sh, sw), channels_last, "anchor_offsets")
    _check_energy(energy)
    coarse = _energy(x, sh, sw, energy == "l1", channels_last)
    return _best_phase(x, coarse, energy == "l1", channels_last)


def _anchor_offsets(x: torch.Tensor, sh: int, sw: int, energy: str, channels_last: bool) -> torch.Tensor:
    """:func:`anchor_offsets` for the layers: positional arguments, TorchScript-compatible.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B, 2)`
    """
    return _phase_offsets(_anchor_phase(x, sh, sw, energy, channels_last), sh, sw)


def _anchored(
    x: torch.Tensor, sh: int, sw: int, energy: str, channels_last: bool, padding: tuple[int, int]
) -> torch.Tensor:
    """``x`` rolled to its anchor and padded circularly by ``padding``, for layers that drop the offsets.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B, C, H + 2 p_h, W + 2 p_w)`, or :math:`(B, H + 2 p_h, W + 2 p_w, C)`
    """
    # With the fused CPU kernels the energies and the roll each run fused inside these two calls.
    return _roll_to_phase(x, _anchor_phase(x, sh, sw, energy, channels_last), (sh, sw), channels_last, padding)


def _polyphase_anchor(
    x: torch.Tensor, sh: int, sw: int, energy: str, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`polyphase_anchor` for the layers: positional arguments, TorchScript-compatible.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: same as ``x``, and :math:`(B, 2)`
    """
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips only this exact condition)
        if fused.applies_to_energy(x, channels_last) and fused.applies_to_roll(x, channels_last):
            return _fused_anchor(x, sh, sw, energy, channels_last)
    phase = _anchor_phase(x, sh, sw, energy, channels_last)
    return _roll_to_phase(x, phase, (sh, sw), channels_last, (0, 0)), _phase_offsets(phase, sh, sw)


def _fused_anchor(
    x: torch.Tensor, sh: int, sw: int, energy: str, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_polyphase_anchor` with the fused CPU kernels: energies and roll in one pass per sample.

    Samples whose largest coarse energy is tied are anchored by the tie-break tiers afterwards
    (the same choice :func:`_best_phase` makes), and the batch is rolled again.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: same as ``x``, and :math:`(B, 2)`
    """
    _check_input(x, (sh, sw), channels_last, "anchor_offsets")
    _check_energy(energy)
    l1 = energy == "l1"
    rolled, offsets, coarse, done = fused.anchor(x, sh, sw, l1, channels_last)
    if bool(done.all()):
        return rolled, offsets
    offsets = _phase_offsets(_best_phase(x, coarse, l1, channels_last), sh, sw)
    return _roll(x, offsets, channels_last, 1, (0, 0)), offsets


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
    _require_tensor(x, "anchor_offsets")
    return _anchor_offsets(x, pair[0], pair[1], energy, channels_last)


def unresolved_ties(
    x: torch.Tensor,
    stride: int | tuple[int, int],
    *,
    energy: Energy = "l1",
    channels_last: bool = False,
) -> torch.Tensor:
    """Which samples have two or more candidate phases that content cannot tell apart.

    After all three tiers of :func:`anchor_scores`, two candidates are tied only when the map of
    per-pixel statistics (L1 norm over channels, channel mix) read from one is the same map read
    from the other: the map is periodic with a period that carries one candidate onto the other
    (a constant image, stripes, a checkerboard, two equal dots exactly half the image apart).
    Either choice then gives the same map up to whole periods, so the tie is harmless; it can
    only do harm if two different pixel values share both statistics in exactly such a pattern.
    The anchor takes the first tied index.

    Returns:
        Booleans, one per sample.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B,)`
    """
    scores = anchor_scores(x, stride, energy=energy, channels_last=channels_last).flatten(1)
    return (scores == scores.amax(dim=1, keepdim=True)).sum(dim=1) > 1


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
        ``(y, offsets)``: ``y`` has the shape and dtype of ``x`` with
        ``y[b] == torch.roll(x[b], (-offsets[b, 0], -offsets[b, 1]), dims=(H, W))``;
        ``offsets`` is int64 ``(B, 2)``, the anchored phase of each sample.

    Raises:
        ValueError: If ``x`` is not a 4-D floating-point tensor, ``H`` or ``W`` is not a
            positive multiple of the stride, or the stride or energy is invalid.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - y: same as ``x``
        - offsets: :math:`(B, 2)`

    Example:
        >>> x = torch.randn(2, 3, 32, 32)
        >>> y, offsets = polyphase_anchor(x, 16)
        >>> y.shape, offsets.shape
        (torch.Size([2, 3, 32, 32]), torch.Size([2, 2]))
    """
    pair = normalize_stride(stride)
    _require_tensor(x, "polyphase_anchor")
    return _polyphase_anchor(x, pair[0], pair[1], energy, channels_last)
