from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from equivit.canonical import cyclic_rotation_rank, dense_rank


def brute_force_rank(grid: torch.Tensor) -> torch.Tensor:
    """Rank rotations by sorting their flattened tuples in Python."""
    rows, cols = grid.shape
    rotations = {
        (i, j): tuple(torch.roll(grid, (-i, -j), dims=(0, 1)).flatten().tolist())
        for i, j in itertools.product(range(rows), range(cols))
    }
    distinct = sorted(set(rotations.values()))
    return torch.tensor([[distinct.index(rotations[i, j]) for j in range(cols)] for i in range(rows)])


def test_dense_rank_smoke() -> None:
    keys = torch.tensor([[3.0, 1.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    assert dense_rank(keys).tolist() == [[2, 0, 2, 1], [0, 0, 0, 0]]


@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    levels=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_rotation_rank_orders_like_brute_force(rows: int, cols: int, levels: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    grid = torch.randint(0, levels, (2, rows, cols), generator=generator).double()
    ranks = cyclic_rotation_rank(grid)
    for b in range(2):
        expected = brute_force_rank(grid[b])
        # Same order and same ties as the brute force (dense ranks of the same total preorder).
        assert torch.equal(dense_rank(ranks[b].flatten()[None]).view(rows, cols), expected)


@given(rows=st.integers(1, 8), cols=st.integers(1, 8), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_rotation_rank_is_rotation_equivariant(rows: int, cols: int, seed: int, data: st.DataObject) -> None:
    grid = torch.randint(0, 2, (1, rows, cols), generator=torch.Generator().manual_seed(seed)).double()
    shift = data.draw(st.tuples(st.integers(0, rows - 1), st.integers(0, cols - 1)))
    rolled = cyclic_rotation_rank(torch.roll(grid, shift, dims=(1, 2)))
    assert torch.equal(rolled, torch.roll(cyclic_rotation_rank(grid), shift, dims=(1, 2)))


def test_rotation_rank_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(B, P, Q\)"):
        cyclic_rotation_rank(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="fewer than"):
        cyclic_rotation_rank(torch.zeros(1, 2**16, 2**16, device="meta"))


@pytest.mark.parametrize(("rows", "cols"), [(224, 224), (200, 300)])
def test_rotation_rank_on_full_resolution_grids(rows: int, cols: int) -> None:
    """Grids as large as an image: four ranks per key at 224 x 224, three at 60,000 cells."""
    generator = torch.Generator().manual_seed(rows)
    grid = torch.randint(0, 2, (1, rows, cols), generator=generator)
    grid[0, : rows // 2] = grid[0, rows // 2 :]  # periodic: pairs of equal rotations
    ranks = cyclic_rotation_rank(grid)
    assert torch.equal(cyclic_rotation_rank(torch.roll(grid, (7, 11), dims=(1, 2))), torch.roll(ranks, (7, 11), (1, 2)))
    assert torch.equal(ranks[0, : rows // 2], ranks[0, rows // 2 :])  # equal rotations share a rank
    assert ranks.unique().numel() == rows * cols // 2  # and only those
    order = ranks.flatten().argsort()[-3:]
    rotated = [torch.roll(grid[0], (-(int(k) // cols), -(int(k) % cols)), (0, 1)).flatten().tolist() for k in order]
    assert rotated[-1] > rotated[-3]  # the larger rank is the larger rotation
