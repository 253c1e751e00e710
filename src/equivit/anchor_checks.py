"""Argument checks shared by the anchoring functions: stride, energy, and the input map.

Only shapes, dtypes and Python values are read: no host sync and no graph break. TorchScript
compiles the checks that run in a forward pass (all but :func:`normalize_stride`, which layers
call when they are built).
"""

from __future__ import annotations

import torch

from equivit.report import shape_text

__all__ = ["check_energy", "check_input", "normalize_stride", "require_tensor", "spatial_size"]


def normalize_stride(
    stride: int | tuple[int, int] | list[int], name: str = "stride", axes: str = "(sh, sw)"
) -> tuple[int, int]:
    """Turn an int or a pair into a pair of positive ints.

    Args:
        stride: One period for both axes, or ``(sh, sw)``.
        name: What the value is called in the error message (``"factor"`` for upsampling).
        axes: How the error message writes the pair.

    Returns:
        ``(sh, sw)``.

    Raises:
        ValueError: If the stride is not a positive int or a pair of them.
    """
    pair = (stride, stride) if isinstance(stride, int) else tuple(stride) if isinstance(stride, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ValueError(f"{name} must be a positive int or a pair {axes} of positive ints, got {stride!r}")
    return pair  # type: ignore[return-value]


def require_tensor(x: object, name: str) -> None:
    """Raise a ``TypeError`` naming the function ``name`` unless ``x`` is a tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")


def check_energy(energy: str) -> None:
    """Raise a ``ValueError`` unless ``energy`` is ``"l1"`` or ``"l2"``."""
    if energy != "l1" and energy != "l2":
        raise ValueError(f"energy must be 'l1' or 'l2', got '{energy}'")


def spatial_size(x: torch.Tensor, channels_last: bool) -> tuple[int, int]:
    """``(H, W)`` of a ``(B, C, H, W)`` map, or of a ``(B, H, W, C)`` one with ``channels_last=True``."""
    if channels_last:
        return x.shape[1], x.shape[2]
    return x.shape[2], x.shape[3]


def check_input(x: torch.Tensor, stride: tuple[int, int], channels_last: bool, name: str) -> tuple[int, int]:
    """Check that ``x`` is a 4-D floating-point map whose grid is a positive multiple of ``stride``.

    Returns:
        ``(H, W)``.
    """
    layout = "(B, H, W, C)" if channels_last else "(B, C, H, W)"
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 4-D tensor {layout}, got shape {shape_text(list(x.shape))}")
    if x.is_complex() or not x.is_floating_point():
        raise ValueError(f"{name} expects a floating-point tensor, got dtype {x.dtype}")
    height, width = spatial_size(x, channels_last)
    sh, sw = stride
    if height == 0 or width == 0 or height % sh != 0 or width % sw != 0:
        raise ValueError(
            f"{name}: spatial size H x W = {height} x {width} of input shape {shape_text(list(x.shape))} "
            f"is not a positive multiple of the stride ({sh}, {sw}); resize or crop the input so that "
            f"H is a multiple of {sh} and W a multiple of {sw} "
            f"(zero padding would break shift equivariance)"
        )
    return height, width
