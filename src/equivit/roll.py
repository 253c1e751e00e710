"""Per-sample circular rolls by anchor offsets, as one gather (one row copy per token when channels-last).

Every sample of a batch has its own anchor, so the roll differs per sample. A Python loop over the
batch (or ``.item()``) would be slow and would break ``torch.compile``; a gather with modular
indices is one pass over the data, differentiable (its gradient is the inverse roll) and traceable.
"""

from __future__ import annotations

from functools import partial

import torch

from equivit import fused
from equivit.device_paths import takes_host_paths
from equivit.report import dtype_name, shape_text
from equivit.tables import cached_table

__all__ = ["roll_from_anchor", "roll_to_anchor"]


def _source_lines(offsets: torch.Tensor, column: int, size: int, sign: int, pad: int) -> torch.Tensor:
    r"""Source row (``column=0``) or column (``column=1``) of each output line, for every sample.

    Shape:
        - offsets: :math:`(B, 2)`
        - output: :math:`(B, size + 2 \cdot pad)`
    """
    shift = offsets.narrow(1, column, 1)
    lines = torch.arange(-pad, size + pad, device=offsets.device).unsqueeze(0)
    moved = torch.add(lines, shift) if sign == 1 else torch.sub(lines, shift)
    return torch.remainder(moved, size)


def _flat_index(
    offsets: torch.Tensor, height: int, width: int, sign: int, padding: tuple[int, int] = (0, 0), batched: bool = False
) -> torch.Tensor:
    r"""Flat source index of each output position for a per-sample roll by ``sign * offsets``.

    With ``padding``, the output is also padded circularly: ``H + 2 ph`` rows, ``W + 2 pw`` columns.
    With ``batched``, the index is into the whole batch flattened (sample ``b`` starts at ``b H W``).
    Few, plain tensor calls: this runs for every anchor, and on small maps its call overhead is
    most of the anchor's cost.

    Shape:
        - offsets: :math:`(B, 2)`
        - output: :math:`(B, (H + 2 p_h) \cdot (W + 2 p_w))`
    """
    rows = _source_lines(offsets, 0, height, sign, padding[0])
    cols = _source_lines(offsets, 1, width, sign, padding[1])
    if batched:
        rows = torch.add(rows, torch.arange(offsets.shape[0], device=offsets.device).unsqueeze(1), alpha=height)
    index = torch.add(cols.unsqueeze(1), rows.unsqueeze(2), alpha=width)
    return index.view(offsets.shape[0], rows.shape[1] * cols.shape[1])


def _check(x: torch.Tensor, offsets: torch.Tensor, channels_last: bool) -> None:
    layout = "(B, H, W, C)" if channels_last else "(B, C, H, W)"
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D tensor {layout}, got shape {shape_text(list(x.shape))}")
    if offsets.dim() != 2 or offsets.shape[1] != 2 or offsets.shape[0] != x.shape[0]:
        raise ValueError(
            f"offsets must have shape (B, 2) = ({x.shape[0]}, 2) for an input of shape "
            f"{shape_text(list(x.shape))}, got {shape_text(list(offsets.shape))}"
        )
    if offsets.dtype != torch.int64:
        raise ValueError(f"offsets must be int64 (as polyphase_anchor returns them), got {dtype_name(offsets.dtype)}")


def _roll_tokens(x: torch.Tensor, offsets: torch.Tensor, sign: int, padding: tuple[int, int]) -> torch.Tensor:
    """Roll (and pad) a ``(B, H, W, C)`` map whose tokens are contiguous: one row copy per token (index_select)."""
    ph, pw = padding
    batch, height, width, channels = x.shape
    index = _flat_index(offsets, height, width, sign, padding, True).view(-1)
    rows = x.reshape(batch * height * width, channels).index_select(0, index)
    return rows.view(batch, height + 2 * ph, width + 2 * pw, channels)


def _line_table(size: int, sign: int, pad: int, scale: int, device: torch.device) -> torch.Tensor:
    r"""Source line of every output line for every roll: ``T[o, k] = ((k - pad + sign * o) mod size) * scale``.

    Shape:
        - output: :math:`(size, size + 2 \cdot pad)`, int64
    """
    lines = torch.arange(-pad, size + pad, device=device)
    shifts = torch.arange(size, device=device).unsqueeze(1) * sign
    return torch.remainder(lines.unsqueeze(0) + shifts, size) * scale


def _roll_by_tables(
    x: torch.Tensor, offsets: torch.Tensor, channels_last: bool, sign: int, padding: tuple[int, int]
) -> torch.Tensor:
    """The roll for accelerators and compiled graphs: two table lookups, an add and one gather.

    The tables of source rows and columns (one row per possible offset) are built once per shape
    and device, so a roll launches four kernels whatever the batch. ``offsets`` must lie in
    ``[0, H) x [0, W)`` (the public functions reduce them first).
    """
    if not channels_last and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return _roll_by_tables(x.permute(0, 2, 3, 1), offsets, True, sign, padding).permute(0, 3, 1, 2)
    batch = x.shape[0]
    height, width = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    ph, pw = padding
    row_table = cached_table(("roll-lines", height, sign, ph, width), x.device,
                             partial(_line_table, height, sign, ph, width, x.device))  # fmt: skip
    col_table = cached_table(("roll-lines", width, sign, pw, 1), x.device,
                             partial(_line_table, width, sign, pw, 1, x.device))  # fmt: skip
    rows = row_table.index_select(0, offsets[:, 0])  # (B, H'), already times W
    cols = col_table.index_select(0, offsets[:, 1])  # (B, W')
    index = (rows.unsqueeze(2) + cols.unsqueeze(1)).view(batch, rows.shape[1] * cols.shape[1])
    return _gather_positions(x, index, channels_last, height + 2 * ph, width + 2 * pw)


def _gather_positions(
    x: torch.Tensor, index: torch.Tensor, channels_last: bool, out_h: int, out_w: int
) -> torch.Tensor:
    """Output position ``k`` of sample ``b`` takes the token at flat position ``index[b, k]`` (one gather).

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - index: :math:`(B, H' W')`, int64
        - output: :math:`(B, C, H', W')`, or :math:`(B, H', W', C)`
    """
    batch = x.shape[0]
    if channels_last:
        channels = x.shape[3]
        source = x.reshape(batch, x.shape[1] * x.shape[2], channels)
        rolled = torch.gather(source, 1, index.unsqueeze(2).expand(batch, out_h * out_w, channels))
        return rolled.view(batch, out_h, out_w, channels)
    channels = x.shape[1]
    source = x.reshape(batch, channels, x.shape[2] * x.shape[3])
    rolled = torch.gather(source, 2, index.unsqueeze(1).expand(batch, channels, out_h * out_w))
    return rolled.view(batch, channels, out_h, out_w)


def _phase_grid(sh: int, sw: int, device: torch.device) -> torch.Tensor:
    """``(row, column)`` of every flat phase index of an ``sh x sw`` grid.

    Shape:
        - output: :math:`(s_h s_w, 2)`, int64
    """
    index = torch.arange(sh * sw, device=device)
    return torch.stack((torch.div(index, sw, rounding_mode="floor"), torch.remainder(index, sw)), dim=1)


def _phase_offsets(best: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    """``(row, column)`` of each sample's flat phase index in an ``sh x sw`` grid (one table lookup).

    Shape:
        - best: :math:`(B,)`
        - output: :math:`(B, 2)`
    """
    if not torch.jit.is_scripting():
        table = cached_table(("phases", sh, sw), best.device, partial(_phase_grid, sh, sw, best.device))
        return table.index_select(0, best)
    return torch.stack((torch.div(best, sw, rounding_mode="floor"), torch.remainder(best, sw)), dim=1)


def _by_tables(x: torch.Tensor) -> bool:
    """Whether rolls index cached tables: accelerator paths and compiled graphs, not ``torch.jit.trace``."""
    return (not takes_host_paths(x) or torch.compiler.is_compiling()) and not torch.jit.is_tracing()


def _phase_table(
    height: int, width: int, period: tuple[int, int], padding: tuple[int, int], device: torch.device
) -> torch.Tensor:
    r"""Flat source position of every output position, for the roll to every phase of the period.

    Row ``p`` is the roll by ``(p // s_w, p % s_w)`` with circular padding ``padding``.

    Shape:
        - output: :math:`(s_h s_w, (H + 2 p_h)(W + 2 p_w))`, int64
    """
    offsets = _phase_grid(period[0], period[1], device)
    return _flat_index(offsets, height, width, 1, padding)


# Largest phase table (entries) kept per shape: 16 MiB of int64. Larger periods (an image anchored
# with a period of 16) roll by the per-axis tables instead.
_PHASE_TABLE_ENTRIES = 2097152


def _roll_to_phase(
    x: torch.Tensor, phase: torch.Tensor, period: tuple[int, int], channels_last: bool, padding: tuple[int, int]
) -> torch.Tensor:
    """Roll (and pad circularly) each sample to its anchor, given as a flat phase index of the period.

    On the accelerator paths, one lookup in a table of all the phases' source positions (built
    once per shape) and one gather: two kernels. Elsewhere, or when that table would be large,
    the offsets and :func:`_roll`.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - phase: :math:`(B,)`, int64 in :math:`[0, s_h s_w)`
        - output: :math:`(B, C, H + 2 p_h, W + 2 p_w)`, or :math:`(B, H + 2 p_h, W + 2 p_w, C)`
    """
    if not torch.jit.is_scripting():
        held_last = not channels_last and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        height, width = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
        out_h, out_w = height + 2 * padding[0], width + 2 * padding[1]
        small = period[0] * period[1] * out_h * out_w <= _PHASE_TABLE_ENTRIES
        if small and _by_tables(x) and x.dim() == 4:
            build = partial(_phase_table, height, width, period, padding, x.device)
            table = cached_table(("roll-phases", height, width, period, padding), x.device, build)
            index = table.index_select(0, phase)
            if held_last:
                return _gather_positions(x.permute(0, 2, 3, 1), index, True, out_h, out_w).permute(0, 3, 1, 2)
            return _gather_positions(x, index, channels_last, out_h, out_w)
    return _roll(x, _phase_offsets(phase, period[0], period[1]), channels_last, 1, padding)


def _roll(
    x: torch.Tensor, offsets: torch.Tensor, channels_last: bool, sign: int, padding: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    _check(x, offsets, channels_last)
    if not torch.jit.is_scripting():
        if fused.applies_to_roll(x, channels_last) and offsets.is_cpu:
            return fused.roll(x, offsets.contiguous(), channels_last, sign, padding)  # row copies (numba installed)
        if _by_tables(x):
            return _roll_by_tables(x, offsets, channels_last, sign, padding)
    ph, pw = padding
    if channels_last:
        # Whole tokens move: one row copy per token (index_select), not one index per element.
        return _roll_tokens(x, offsets, sign, padding)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        # (B, C, H, W) held channels-last (ConvNeXt's maps): the tokens are contiguous,
        # so move them whole, and the result keeps the layout.
        return _roll_tokens(x.permute(0, 2, 3, 1), offsets, sign, padding).permute(0, 3, 1, 2)
    batch, channels, height, width = x.shape
    index = _flat_index(offsets, height, width, sign, padding)
    index = index.unsqueeze(1).expand(batch, channels, index.shape[1])
    rolled = torch.gather(x.reshape(batch, channels, height * width), 2, index)
    return rolled.view(batch, channels, height + 2 * ph, width + 2 * pw)


def _reduced(x: torch.Tensor, offsets: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``offsets`` modulo the grid ``(H, W)`` of ``x``: any integers become valid table rows."""
    size = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    if not torch.jit.is_scripting():
        # A tensor built from Python numbers in every call would be a copy from the host, which
        # waits for the device: the grid size is a cached table instead.
        build = partial(torch.tensor, size, device=offsets.device)
        return torch.remainder(offsets, cached_table(("grid-size", size[0], size[1]), offsets.device, build))
    return torch.remainder(offsets, torch.tensor(size, device=offsets.device))


def roll_to_anchor(
    x: torch.Tensor, offsets: torch.Tensor, *, channels_last: bool = False, padding: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Roll each sample so that its anchored phase sits at the origin.

    ``y[b] == torch.roll(x[b], shifts=(-offsets[b, 0], -offsets[b, 1]), dims=(H, W))``, for all
    samples at once. Use it to apply the anchor found on one tensor to another of the same
    spatial size (a shortcut branch, a mask, a second stream). With ``padding`` the rolled map
    also comes out padded circularly, in the same single gather (an anchored strided convolution
    or pooling with circular padding needs no second copy).

    Args:
        x: Feature maps.
        offsets: Per-sample ``(row, column)`` offsets, int64, as returned by
            :func:`equivit.polyphase_anchor` or :func:`equivit.anchor_offsets`. Any integers
            are accepted; they are taken modulo ``H`` and ``W``.
        channels_last: Whether ``x`` is laid out ``(B, H, W, C)`` (token maps of Swin, PVT,
            Twins) instead of ``(B, C, H, W)``.
        padding: ``(ph, pw)``: rows and columns of circular padding added on each side.

    Returns:
        The rolled tensor, same dtype as ``x``, padded if asked. A ``(B, C, H, W)`` map held
        channels-last (``torch.channels_last``) comes out channels-last; others contiguous.

    Raises:
        ValueError: If ``x`` is not 4-D or ``offsets`` is not int64 of shape ``(B, 2)``.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - offsets: :math:`(B, 2)`
        - output: same as ``x``, with :math:`H + 2 p_h` and :math:`W + 2 p_w` when padded
    """
    _check(x, offsets, channels_last)
    return _roll(x, _reduced(x, offsets, channels_last), channels_last, sign=1, padding=padding)


def roll_from_anchor(y: torch.Tensor, offsets: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
    """Undo :func:`roll_to_anchor`: roll each sample back by its offsets.

    ``roll_from_anchor(roll_to_anchor(x, offsets), offsets)`` equals ``x`` exactly. Layers that
    anchor, transform and must return a map aligned with their input (window attention) use it.

    Args:
        y: Feature maps in the anchored frame.
        offsets: The per-sample offsets the anchored frame was made with, int64.
        channels_last: Whether ``y`` is laid out ``(B, H, W, C)``.

    Returns:
        The tensor in the original frame, same shape and dtype as ``y``.

    Raises:
        ValueError: If ``y`` is not 4-D or ``offsets`` is not int64 of shape ``(B, 2)``.

    Shape:
        - y: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - offsets: :math:`(B, 2)`
        - output: same as ``y``
    """
    _check(y, offsets, channels_last)
    return _roll(y, _reduced(y, offsets, channels_last), channels_last, sign=-1)
