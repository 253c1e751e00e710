"""Content-based ordering of the cyclic rotations of a small grid.

Anchoring picks one polyphase component out of ``P x Q`` candidates. A circular shift of the
input rotates the grid of candidate statistics cyclically, so any rule that picks a candidate
must be equivariant to those rotations: it may look at the values, never at the index. This
module ranks every rotation of a grid lexicographically, which is such a rule: the rotation
that starts at the chosen candidate is the same grid whatever the shift.
"""

from __future__ import annotations

import torch

from equivit.report import shape_text

__all__ = ["cyclic_rotation_rank", "dense_rank"]


def _windows_per_round(size: int) -> int:
    """How many ranks one key can pack: the most (up to 4) whose product ``size**count`` fits in int64.

    Computed by repeated multiplication with an overflow check, never forming a number above
    int64 (TorchScript's ints are int64).
    """
    fitting = 0
    power = 1
    for count in range(1, 5):
        if power > 9223372036854775807 // size:  # int64's largest (TorchScript reads no global ints)
            break
        power *= size
        fitting = count
    return fitting if fitting >= 2 else 0


def dense_rank(keys: torch.Tensor) -> torch.Tensor:
    """Rank values within each row: equal values share a rank, the next distinct value gets the next.

    The ranks keep both the order and the ties of the input.

    Args:
        keys: Comparable values (integer or floating point, no NaN).

    Returns:
        Ranks in ``[0, N)`` as int64.

    Shape:
        - keys: :math:`(B, N)`
        - output: :math:`(B, N)`
    """
    sorted_keys, order = torch.sort(keys, dim=-1)
    # Out of place throughout: in-place writes inside a torch.cond branch stop torch.export's ONNX path.
    steps = torch.cat((torch.zeros_like(order[:, :1]), (sorted_keys[:, 1:] != sorted_keys[:, :-1]).to(torch.int64)), 1)
    return torch.zeros_like(order).scatter(1, order, torch.cumsum(steps, dim=1))


def cyclic_rotation_rank(grid: torch.Tensor) -> torch.Tensor:
    """Rank every cyclic rotation of each grid in row-major lexicographic order.

    ``rank[b, i, j]`` orders the grid ``grid[b]`` rolled so that ``(i, j)`` sits at the origin,
    compared element by element in row-major order. Two positions get the same rank exactly
    when the two rotated grids are equal. The ranks are computed by prefix doubling (as in
    suffix-array construction): first along rows, then along columns, each in
    ``ceil(log4(n))`` rounds of one sort, so a ``16 x 16`` grid needs four sorts (base 3 or 2
    above about 55,000 cells, where four ranks no longer pack into one int64 key).

    Args:
        grid: Values to compare (no NaN).

    Returns:
        Ranks in ``[0, P * Q)`` as int64.

    Shape:
        - grid: :math:`(B, P, Q)`
        - output: :math:`(B, P, Q)`
    """
    if grid.dim() != 3:
        raise ValueError(f"cyclic_rotation_rank expects a (B, P, Q) grid, got shape {shape_text(list(grid.shape))}")
    batch, rows, cols = grid.shape[0], grid.shape[1], grid.shape[2]
    size = rows * cols
    windows = _windows_per_round(size)
    if windows == 0:
        raise ValueError(
            f"cyclic_rotation_rank supports grids of fewer than 2**31.5 cells (pairs of ranks must fit in "
            f"int64), got {shape_text(list(grid.shape))}"
        )
    rank = dense_rank(grid.reshape(batch, size)).view(batch, rows, cols)
    # Along each row, then down the columns (a 2-D rotation is the sequence of row rotations
    # (i, j), (i + 1, j), ...).
    rank = _rank_rotations(rank, 2, windows)
    return _rank_rotations(rank, 1, windows)


def _rank_rotations(rank: torch.Tensor, dim: int, windows: int) -> torch.Tensor:
    """Prefix doubling along ``dim``: ranks of the cyclic windows of every length up to the axis.

    Each round replaces the rank of a window of length ``span`` by the rank of the window of
    ``windows`` times that length made of consecutive ones (4 while the packed key fits in int64:
    up to about 55,000 cells, 224 x 224 included; then 3, then 2).

    Shape:
        - rank: :math:`(B, P, Q)`, int64 ranks in ``[0, P Q)``
        - output: :math:`(B, P, Q)`
    """
    batch, rows, cols = rank.shape[0], rank.shape[1], rank.shape[2]
    size = rows * cols
    length = rank.shape[dim]
    span = 1
    while span < length:
        key = rank
        for part in range(1, windows):
            key = key * size + torch.roll(rank, shifts=-part * span, dims=dim)
        rank = dense_rank(key.reshape(batch, size)).view(batch, rows, cols)
        span *= windows
    return rank
