"""Hypothesis strategies for shift-equivariance tests: valid shapes, shifts, image batches.

Examples:
    >>> from hypothesis import given
    >>> from equivit.testing import strategies as eqst
    >>> @given(eqst.images(period=16))
    ... def test_my_model(images): ...
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from equivit.polyphase import normalize_stride
from equivit.testing.families import FAMILIES, make_images

__all__ = ["images", "shapes", "shifts"]


@st.composite
def shapes(
    draw: st.DrawFn,
    period: int | tuple[int, int],
    *,
    max_blocks: int = 4,
    batch: tuple[int, int] = (1, 3),
    channels: tuple[int, int] = (1, 4),
) -> tuple[int, int, int, int]:
    """``(B, C, H, W)`` with ``H`` and ``W`` multiples of the period (non-square included).

    Args:
        draw: Supplied by hypothesis.
        period: ``(ph, pw)`` or one int for both.
        max_blocks: Largest number of periods along each axis.
        batch: Inclusive range of ``B``.
        channels: Inclusive range of ``C``.
    """
    ph, pw = normalize_stride(period)
    return (
        draw(st.integers(*batch)),
        draw(st.integers(*channels)),
        ph * draw(st.integers(1, max_blocks)),
        pw * draw(st.integers(1, max_blocks)),
    )


def shifts(height: int, width: int) -> st.SearchStrategy[tuple[int, int]]:
    """Circular shifts ``(dy, dx)`` with ``0 <= dy < H`` and ``0 <= dx < W``."""
    return st.tuples(st.integers(0, height - 1), st.integers(0, width - 1))


@st.composite
def images(
    draw: st.DrawFn,
    period: int | tuple[int, int] | None = None,
    *,
    shape: tuple[int, int, int, int] | None = None,
    families: tuple[str, ...] = FAMILIES,
    dtypes: tuple[torch.dtype, ...] = (torch.float32,),
    max_blocks: int = 4,
) -> torch.Tensor:
    """A batch of images from one of the families, of a given shape or a valid shape for a period.

    Args:
        draw: Supplied by hypothesis.
        period: Draw a shape whose ``H``, ``W`` are multiples of it (when ``shape`` is None).
        shape: Use this ``(B, C, H, W)``.
        families: Families to draw from (see :data:`equivit.testing.FAMILIES`).
        dtypes: Floating-point dtypes to draw from.
        max_blocks: Largest number of periods per axis for a drawn shape.
    """
    if shape is None:
        if period is None:
            raise ValueError("images() needs a period or a shape")
        shape = draw(shapes(period, max_blocks=max_blocks))
    family = draw(st.sampled_from(families))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**31 - 1))
    return make_images(family, shape, seed=seed, dtype=dtype)
