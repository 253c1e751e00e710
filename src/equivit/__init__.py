"""equivit: exactly shift-equivariant Vision Transformers for timm."""

from __future__ import annotations

from equivit.canonical import cyclic_rotation_rank
from equivit.polyphase import (
    anchor_offsets,
    anchor_scores,
    polyphase_anchor,
    polyphase_energy,
    unresolved_ties,
)
from equivit.roll import roll_from_anchor, roll_to_anchor

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "anchor_offsets",
    "anchor_scores",
    "cyclic_rotation_rank",
    "polyphase_anchor",
    "polyphase_energy",
    "roll_from_anchor",
    "roll_to_anchor",
    "unresolved_ties",
]
