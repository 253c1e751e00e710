"""equivit: exactly shift-equivariant Vision Transformers for timm."""

from __future__ import annotations

from equivit import fused, fx, layers, segmentation, upsample  # fx: registers equivit's layers as FX leaves
from equivit.canonical import cyclic_rotation_rank
from equivit.checkpoint import load_stock_checkpoint
from equivit.convert import SUPPORTED, convert, convert_state_dict, create_model, is_converted
from equivit.polyphase import (
    anchor_offsets,
    anchor_scores,
    polyphase_anchor,
    polyphase_energy,
    unresolved_ties,
)
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.roll import roll_from_anchor, roll_to_anchor
from equivit.segmentation import create_segmenter

__version__ = "0.1.0"

__all__ = [
    "SUPPORTED",
    "ConversionReport",
    "UnsupportedModelError",
    "__version__",
    "anchor_offsets",
    "anchor_scores",
    "convert",
    "convert_state_dict",
    "create_model",
    "create_segmenter",
    "cyclic_rotation_rank",
    "fused",
    "fx",
    "is_converted",
    "layers",
    "load_stock_checkpoint",
    "polyphase_anchor",
    "polyphase_energy",
    "roll_from_anchor",
    "roll_to_anchor",
    "segmentation",
    "unresolved_ties",
    "upsample",
]
