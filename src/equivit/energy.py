"""Energies of the polyphase components: the first key of the anchor's choice.

The energy of phase ``(i, j)`` of period ``(ph, pw)`` is the L1 norm (or squared L2 norm) of
``x[..., i::ph, j::pw]``, accumulated in float64 (float32 on MPS). Equal tokens must give
bit-identical contributions wherever they sit, so that a tie between two phases holding the same
multiset of tokens stays an exact tie under a shift; each function below says how it keeps that.
Exactness of the float64 sums is discussed in :mod:`equivit.polyphase`.
"""

from __future__ import annotations

from typing import Literal

import torch

from equivit import fused
from equivit.anchor_checks import check_energy, check_input, normalize_stride, require_tensor
from equivit.device_paths import compiling, takes_host_paths

__all__ = ["Energy", "phase_energies", "polyphase_energy", "position_norms"]

Energy = Literal["l1", "l2"]


def _accumulate_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.device.type == "mps" else torch.float64


def position_norms(x: torch.Tensor, l1: bool, channels_last: bool) -> torch.Tensor:
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
    """Energies as float64 sums of :func:`position_norms`, in cache-sized slices of the batch (CPU, eager).

    One pass over the input, which stays in the cache for the adds; only the per-position norms
    (a channel's worth of data) are converted to float64. The float64 sums are exact within the
    headroom documented in :mod:`equivit.polyphase`, so their order does not matter.

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
    norms = position_norms(x, l1, channels_last).to(torch.float64)
    batch, height, width = norms.shape
    if height == ph and width == pw:
        return norms  # one period covers the grid (a key order): the norms are the energies
    return norms.view(batch, height // ph, ph, width // pw, pw).sum(dim=[1, 3])


def _fast_cpu_path(x: torch.Tensor) -> bool:
    """Whether the eager CPU path (per-position norms in slices) applies: not under ``torch.compile``/export."""
    fast = x.is_cpu and x.shape[0] > 0
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips only this exact condition)
        if compiling() or not takes_host_paths(x):
            fast = False
    return fast


def phase_energies(x: torch.Tensor, ph: int, pw: int, l1: bool, channels_last: bool) -> torch.Tensor:
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
    """:func:`position_norms` in one or two launches where the channel reduction has one order everywhere.

    A reduction over contiguous channels (tokens) sums every position alike on any device, and
    so does a strided one on an accelerator; a strided one on the CPU does not (see
    :func:`position_norms`): CPU tensors on the accelerator paths copy the map to tokens first
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
    require_tensor(x, "polyphase_energy")
    check_input(x, (ph, pw), channels_last, "polyphase_energy")
    check_energy(energy)
    return phase_energies(x, ph, pw, energy == "l1", channels_last)
