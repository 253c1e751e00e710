"""Placeholder."""

from __future__ import annotations

from torch import nn

from equivit.polyphase import Energy
from equivit.report import ConversionReport, UnsupportedModelError


def convert_swin(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    raise UnsupportedModelError(f"{type(model).__name__} is not supported yet")
