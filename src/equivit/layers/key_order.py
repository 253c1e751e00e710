"""Content-chosen order of a token set: attention sums its keys in the same order whatever the shift."""

from __future__ import annotations

import torch

from equivit.anchor_core import anchor

__all__ = ["canonical_token_order"]


def canonical_token_order(tokens: torch.Tensor, size: list[int], energy: str) -> torch.Tensor:
    r"""The tokens of a grid, rotated cyclically so that the grid starts at a token chosen from content.

    Attention is invariant to the order of its keys, but its sums are rounded in that order. Keys
    reduced from an anchored grid arrive rotated by whole periods after a shift of the input, so
    their sums, and the attended tokens, would differ in the last bits. Anchoring the reduced grid
    with a period of the whole grid (:func:`equivit.polyphase_anchor`, ties broken by content)
    gives the same order for every shift, and the attention output moves bit for bit with the input.

    Args:
        tokens: Tokens of an ``H x W`` grid, row-major.
        size: The grid ``(H, W)``.
        energy: Energy that picks the first token, ``"l1"`` or ``"l2"``.

    Returns:
        The same tokens, rotated as a grid.

    Raises:
        ValueError: If ``tokens`` does not hold ``H * W`` tokens.

    Shape:
        - tokens: :math:`(B, H \cdot W, C)`
        - output: :math:`(B, H \cdot W, C)`
    """
    batch, count, channels = tokens.shape
    height, width = size[0], size[1]
    if count != height * width:
        raise ValueError(f"tokens hold {count} tokens, but the grid {height} x {width} needs {height * width}")
    grid = tokens.reshape(batch, height, width, channels)
    rotated, _ = anchor(grid, height, width, energy, True)
    return rotated.reshape(batch, count, channels)
