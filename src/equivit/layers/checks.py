"""The input check of anchored layers: a 4-D map whose size is a positive multiple of the period."""

from __future__ import annotations

import torch

from equivit.report import shape_text

__all__ = ["check_map"]


def check_map(x: torch.Tensor, stride: int, name: str, what: str = "block stride") -> None:
    """Raise a clear error unless ``x`` is a 4-D map whose size is a positive multiple of ``stride``.

    Only shapes are read (no host sync, no graph break; TorchScript compiles it).

    Args:
        x: The layer's input.
        stride: The anchoring period.
        name: The layer's name, for the message.
        what: What the period is called in the message.

    Raises:
        ValueError: Naming the shape received and the multiple needed.

    Shape:
        - x: :math:`(B, C, H, W)`
    """
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 4-D tensor (B, C, H, W), got shape {shape_text(list(x.shape))}")
    height, width = x.shape[2], x.shape[3]
    if height == 0 or width == 0 or height % stride != 0 or width % stride != 0:
        raise ValueError(
            f"{name}: spatial size H x W = {height} x {width} of input shape {shape_text(list(x.shape))} is not a "
            f"positive multiple of the {what} {stride}; the image must be a multiple of the product of all "
            "strides up to this layer"
        )
