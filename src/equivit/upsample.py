"""Upsampling that moves with the image: whole-factor circular interpolation, then the anchor undone.

A converted backbone run on an image anchored with period ``P`` (:class:`~equivit.segmentation.AnchoredFeatures`)
gives maps that move by exactly ``k / r`` cells when the anchored image moves by ``k``, a multiple
of ``P`` (``r``, the map's reduction, divides ``P``). Upsampling by a whole factor ``f`` with a
circular boundary maps a shift by ``m`` cells to a shift by ``m * f`` cells, bit for bit (every output
value is the same weighted sum of the same neighbours wherever it sits). A decoder built from such
upsampling, circular convolutions and sums therefore gives, at input resolution, a map that moves by
``k`` pixels. Rolling it back by the image's anchor offsets (:func:`upsample_to_image`) puts every
value back at the pixel its content came from: the output then moves with *any* integer shift of the
image, not only with multiples of ``P``.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from equivit.anchor_checks import normalize_stride, require_tensor
from equivit.roll import roll_from_anchor
from equivit.tables import cached_table

__all__ = ["UPSAMPLE_MODES", "EquivariantUpsample", "circular_upsample", "upsample_to_image"]

UpsampleMode = Literal["bilinear", "nearest"]
UPSAMPLE_MODES: tuple[str, ...] = ("bilinear", "nearest")


def _check_map(x: object, name: str) -> torch.Tensor:
    require_tensor(x, name)
    if x.dim() != 4 or not x.is_floating_point():  # type: ignore[union-attr]
        raise ValueError(
            f"{name} expects a 4-D floating-point map (B, C, H, W), got shape {tuple(x.shape)} of {x.dtype}"  # type: ignore[union-attr]
        )
    return x  # type: ignore[return-value]


def _check_mode(mode: object) -> None:
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"mode must be one of {UPSAMPLE_MODES}, got {mode!r}")


def circular_upsample(
    x: torch.Tensor, factor: int | tuple[int, int], *, mode: UpsampleMode = "bilinear"
) -> torch.Tensor:
    """Upsample by a whole factor with a circular boundary: a shift by ``m`` cells becomes one by ``m * factor``.

    ``"bilinear"`` interpolates as ``F.interpolate(..., align_corners=False)`` does inside the map
    and wraps around at the border (the last row's neighbour is the first row); ``"nearest"``
    repeats each cell ``factor`` times. Both commute exactly with circular shifts by whole cells,
    which plain bilinear interpolation (clamped at the border) does not.

    Args:
        x: Feature maps.
        factor: ``f`` or ``(f_h, f_w)``, positive ints.
        mode: ``"bilinear"`` (default) or ``"nearest"``.

    Returns:
        The upsampled maps, same dtype.

    Raises:
        TypeError: If ``x`` is not a tensor.
        ValueError: If ``x`` is not a 4-D floating-point map, or the factor or mode is invalid.

    Shape:
        - x: :math:`(B, C, H, W)`
        - output: :math:`(B, C, f_h H, f_w W)`

    Examples:
        >>> x = torch.randn(1, 2, 4, 4)
        >>> y = circular_upsample(x, 2)
        >>> torch.equal(circular_upsample(torch.roll(x, 1, 3), 2), torch.roll(y, 2, 3))
        True
    """
    _check_map(x, "circular_upsample")
    fh, fw = normalize_stride(factor, "factor", "(f_h, f_w)")
    _check_mode(mode)
    if fh == 1 and fw == 1:
        return x
    if mode == "nearest":
        return F.interpolate(x, scale_factor=(float(fh), float(fw)), mode="nearest")
    return _bilinear_along(_bilinear_along(x, fh, 2), fw, 3)


def _phase_weights(factor: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Weights of cells ``i - 1``, ``i``, ``i + 1`` for each output phase, built on ``device``.

    Shape:
        - output: :math:`(3, factor)`
    """
    position = (torch.arange(factor, dtype=torch.float64, device=device) + 0.5) / factor - 0.5  # in (-0.5, 0.5)
    previous = (-position).clamp(min=0)
    following = position.clamp(min=0)
    return torch.stack([previous, 1 - previous - following, following]).to(dtype)


def _bilinear_along(x: torch.Tensor, factor: int, dim: int) -> torch.Tensor:
    """Linear interpolation by ``factor`` along ``dim`` (2 or 3), circular, the same arithmetic at every cell.

    Output ``factor * i + p`` samples the input at ``i + (p + 0.5) / factor - 0.5``
    (``align_corners=False``): a weighted sum of cells ``i - 1``, ``i`` and ``i + 1`` whose weights
    depend on the phase ``p`` only. ``F.interpolate`` computes each weight from the absolute
    position instead, which rounds differently from cell to cell (measured 7.6e-7 in float32), so
    its output is not an exact roll of the upsampled map.
    """
    if factor == 1:
        return x
    build = partial(_phase_weights, factor, x.dtype, x.device)
    weights = cached_table(("upsample-weights", factor, str(x.dtype)), x.device, build)
    weights = weights.view([3, factor, 1] if dim == 2 else [3, factor])  # the phase axis sits right after ``dim``
    step = x.unsqueeze(dim + 1)
    up = weights[0] * torch.roll(step, 1, dim) + weights[1] * step + weights[2] * torch.roll(step, -1, dim)
    sizes = list(x.shape)
    sizes[dim] *= factor
    return up.reshape(sizes)


def upsample_to_image(
    x: torch.Tensor, offsets: torch.Tensor, factor: int | tuple[int, int], *, mode: UpsampleMode = "bilinear"
) -> torch.Tensor:
    """Upsample a map of the anchored frame to input resolution and roll it back by the image's anchor.

    ``x`` was computed from the image rolled to its polyphase anchor (``offsets`` as
    :func:`equivit.polyphase_anchor` returned them for the image); ``factor`` is the map's
    reduction. The result sits in the image's frame: when every operation between the anchored
    image and ``x`` moves its output by whole cells with the anchored image (circular padding,
    :func:`circular_upsample`), the result moves with any integer circular shift of the image.

    Args:
        x: Maps in the anchored frame.
        offsets: The image's anchor offsets, int64.
        factor: The map's reduction, ``r`` or ``(r_h, r_w)``.
        mode: ``"bilinear"`` (default) or ``"nearest"``.

    Returns:
        The maps at input resolution, in the image's frame.

    Raises:
        TypeError: If ``x`` is not a tensor.
        ValueError: As :func:`circular_upsample`, or if ``offsets`` is not int64 ``(B, 2)``.

    Shape:
        - x: :math:`(B, C, H / r_h, W / r_w)`
        - offsets: :math:`(B, 2)`
        - output: :math:`(B, C, H, W)`
    """
    return roll_from_anchor(circular_upsample(x, factor, mode=mode), offsets)


class EquivariantUpsample(nn.Module):
    """:func:`upsample_to_image` as a module: the last upsampling of a decoder.

    Args:
        factor: The reduction of the maps it receives, ``r`` or ``(r_h, r_w)``.
        mode: ``"bilinear"`` (default) or ``"nearest"``.

    Raises:
        ValueError: If the factor or mode is invalid.

    Shape:
        - x: :math:`(B, C, H / r_h, W / r_w)`
        - offsets: :math:`(B, 2)`
        - output: :math:`(B, C, H, W)`
    """

    def __init__(self, factor: int | tuple[int, int], mode: UpsampleMode = "bilinear") -> None:
        super().__init__()
        self.factor = normalize_stride(factor, "factor", "(f_h, f_w)")
        _check_mode(mode)
        self.mode = mode

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` by the factor and roll it back by ``offsets``."""
        return upsample_to_image(x, offsets, self.factor, mode=self.mode)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        """The factor and mode, for ``repr``."""
        return f"factor={self.factor}, mode={self.mode!r}"
