"""Worst-case shift consistency: does a prediction hold for every shift within a radius?

The protocol of adversarial shift robustness (Michaeli and Soudry, "Alias-Free ViT", 2025): an
image counts as robust at radius ``r`` only if its top-1 class is the same for every shift
``(dy, dx)`` with ``max(|dy|, |dx|) <= r`` as for the unshifted image. Random shifts
(:func:`~equivit.testing.shift_consistency`) sample this set and so understate how often some
shift changes the prediction. Three kinds of shift:

- ``"circular"``: ``torch.roll`` by whole pixels. Exact for equivit at every radius.
- ``"crop"``: a window of the model's input size moving over a larger image, from its centre; new
  content enters at the border, so no model is exactly invariant to it.
- ``"fractional"``: a circular bilinear translation by a multiple of ``step`` pixels (half a pixel by
  default) that is not a whole-pixel shift on both axes: every pixel becomes a weighted mean of
  its neighbours, which no anchor undoes.

The shifts are tried in order of their radius, each image's until one changes its prediction, so
one pass gives the robust share at every radius up to the largest (:meth:`WorstCase.robust_fraction`).
Images and shifts are batched together (``batch_size`` forward inputs at a time).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

__all__ = ["SHIFT_KINDS", "WorstCase", "shifts_within", "translate", "worst_case_consistency"]

SHIFT_KINDS: tuple[str, ...] = ("circular", "crop", "fractional")
"""The kinds of shift :func:`worst_case_consistency` takes."""


@dataclasses.dataclass(frozen=True)
class WorstCase:
    """Result of :func:`worst_case_consistency`.

    Attributes:
        kind: ``"circular"``, ``"crop"`` or ``"fractional"``.
        radius: The largest shift tried per axis, in pixels.
        failure_radius: Per image, the radius ``max(|dy|, |dx|)`` of the smallest shift that changed
            its top-1 class, or ``math.inf`` if none within ``radius`` did.
        shifts: How many shifts were tried for an image that held for all of them.
    """

    kind: str
    radius: int
    failure_radius: tuple[float, ...]
    shifts: int

    @property
    def total(self) -> int:
        """The number of images."""
        return len(self.failure_radius)

    def robust(self, radius: float | None = None) -> int:
        """The number of images whose top-1 class held for every shift within ``radius`` (default: all tried)."""
        limit = self.radius if radius is None else radius
        return sum(failure > limit for failure in self.failure_radius)

    def robust_fraction(self, radius: float | None = None) -> float:
        """The share of images robust at ``radius`` (default: the largest tried); 1.0 for no images."""
        return self.robust(radius) / self.total if self.total else 1.0

    def __str__(self) -> str:
        """For example ``8/8 (100.0 %) robust to every circular shift within 8 px (288 shifts)``."""
        return (
            f"{self.robust()}/{self.total} ({100 * self.robust_fraction():.1f} %) robust to every {self.kind} "
            f"shift within {self.radius} px ({self.shifts} shifts)"
        )


def shifts_within(radius: int, *, step: float = 1.0, fractional_only: bool = False) -> torch.Tensor:
    """Every shift ``(dy, dx)`` on a grid of ``step`` with ``0 < max(|dy|, |dx|) <= radius``, nearest first.

    Args:
        radius: The largest shift per axis, in pixels (non-negative).
        step: The grid of the shifts: 1 for whole pixels, 0.5 for half pixels (``1 / step`` must
            be a whole number).
        fractional_only: Leave out the shifts that are whole pixels on both axes.

    Returns:
        float64 shifts, ordered by ``max(|dy|, |dx|)``, then by ``dy`` and ``dx``.

    Raises:
        ValueError: For a negative radius or a step that does not divide one pixel.

    Shape:
        - output: :math:`(N, 2)`
    """
    if radius < 0:
        raise ValueError(f"radius must be non-negative, got {radius}")
    per_pixel = 1.0 / step if step > 0 else 0.0
    if step <= 0 or step > 1 or abs(per_pixel - round(per_pixel)) > 1e-9:
        raise ValueError(f"step must be 1 / n for a whole n (1, 0.5, 0.25, ...), got {step}")
    count = round(radius * per_pixel)
    axis = torch.arange(-count, count + 1, dtype=torch.float64) / round(per_pixel)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    reach = grid.abs().amax(dim=1)
    keep = reach > 0
    if fractional_only:
        keep &= (grid != grid.round()).any(dim=1)
    grid, reach = grid[keep], reach[keep]
    order = sorted(range(len(grid)), key=lambda i: (float(reach[i]), float(grid[i, 0]), float(grid[i, 1])))
    return grid[order]


def translate(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Circularly translate each image by its own shift, bilinearly between whole pixels.

    A shift by whole pixels is ``torch.roll`` exactly; a fractional one mixes the four whole-pixel
    rolls around it with bilinear weights (content leaving one side enters the other).

    Args:
        images: The images.
        shifts: Per image ``(dy, dx)`` in pixels, any real values.

    Returns:
        The translated images, same dtype.

    Raises:
        ValueError: If ``images`` is not 4-D or ``shifts`` is not ``(B, 2)``.

    Shape:
        - images: :math:`(B, C, H, W)`
        - shifts: :math:`(B, 2)`
        - output: :math:`(B, C, H, W)`
    """
    if images.dim() != 4 or shifts.shape != (images.shape[0], 2):
        raise ValueError(
            f"translate expects (B, C, H, W) images and (B, 2) shifts, got {tuple(images.shape)} and "
            f"{tuple(shifts.shape)}"
        )
    height, width = images.shape[-2:]
    shifts = shifts.to(device=images.device, dtype=torch.float64)
    whole = torch.floor(shifts)
    part = (shifts - whole).to(images.dtype)
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    batch = torch.arange(images.shape[0], device=images.device)[:, None, None]
    result = torch.zeros_like(images)
    for extra_y in (0, 1):
        weight_y = part[:, 0] if extra_y else 1 - part[:, 0]
        source_rows = (rows[None, :] - whole[:, :1].long() - extra_y) % height
        for extra_x in (0, 1):
            weight_x = part[:, 1] if extra_x else 1 - part[:, 1]
            source_cols = (cols[None, :] - whole[:, 1:].long() - extra_x) % width
            gathered = images.permute(0, 2, 3, 1)[batch, source_rows[:, :, None], source_cols[:, None, :]]
            result += (weight_y * weight_x)[:, None, None, None] * gathered.permute(0, 3, 1, 2)
    return result


def _crop(images: torch.Tensor, corners: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per image, the window of ``size`` whose top-left corner is ``corners`` (int64 ``(B, 2)``)."""
    rows = corners[:, :1] + torch.arange(size[0], device=images.device)
    cols = corners[:, 1:] + torch.arange(size[1], device=images.device)
    batch = torch.arange(images.shape[0], device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


@torch.no_grad()
def worst_case_consistency(
    model: nn.Module,
    images: torch.Tensor,
    radius: int,
    *,
    kind: str = "circular",
    crop_size: tuple[int, int] | None = None,
    step: float = 0.5,
    max_shifts: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> WorstCase:
    """For each image, the smallest shift within ``radius`` that changes a classifier's top-1 class.

    Args:
        model: A classifier returning logits ``(B, K)``; run as it is (call ``.eval()`` first).
        images: The images. For ``"crop"``, larger than ``crop_size`` by ``2 * radius`` or more on
            each axis: the reference is the centred window and the others move from it.
        radius: The largest shift per axis, in pixels.
        kind: ``"circular"``, ``"crop"`` or ``"fractional"``.
        crop_size: ``(h, w)`` of the windows for ``"crop"`` (the model's input size).
        step: The grid of the fractional shifts, in pixels (0.5: half pixels).
        max_shifts: Try only this many shifts, a random subset (seeded) of the ones within
            ``radius``, still nearest first; default: all of them.
        seed: Seed of that subset.
        batch_size: Inputs per forward pass (images times shifts).

    Returns:
        Per image, the radius at which its prediction first changed.

    Raises:
        ValueError: For an unknown kind, a missing or too large ``crop_size``, or a radius that
            does not fit the images.

    Shape:
        - images: :math:`(B, C, H, W)`
    """
    if kind not in SHIFT_KINDS:
        raise ValueError(f"kind must be one of {SHIFT_KINDS}, got {kind!r}")
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    height, width = images.shape[-2:]
    if kind == "crop":
        if crop_size is None:
            raise ValueError("kind='crop' needs crop_size=(h, w), the model's input size")
        if crop_size[0] + 2 * radius > height or crop_size[1] + 2 * radius > width:
            raise ValueError(
                f"crops of {crop_size[0]} x {crop_size[1]} moved by up to {radius} px from the centre need images of "
                f"at least {crop_size[0] + 2 * radius} x {crop_size[1] + 2 * radius}, got {height} x {width}"
            )
    elif radius >= min(height, width):
        raise ValueError(f"radius {radius} must be smaller than the images ({height} x {width})")
    shifts = shifts_within(radius, step=step if kind == "fractional" else 1.0, fractional_only=kind == "fractional")
    if max_shifts is not None and max_shifts < len(shifts):
        chosen = torch.randperm(len(shifts), generator=torch.Generator().manual_seed(seed))[:max_shifts]
        shifts = shifts[chosen.sort().values]
    shifts = shifts.to(images.device)

    if kind == "crop":
        size = (int(crop_size[0]), int(crop_size[1]))  # type: ignore[index]
        centre = torch.tensor([(height - size[0]) // 2, (width - size[1]) // 2], device=images.device)

        def shifted(index: torch.Tensor, moves: torch.Tensor) -> torch.Tensor:
            return _crop(images[index], centre + moves.long(), size)

        reference = model(_crop(images, centre.expand(images.shape[0], 2), size)).argmax(dim=1)
    else:

        def shifted(index: torch.Tensor, moves: torch.Tensor) -> torch.Tensor:
            return translate(images[index], moves)

        reference = model(images).argmax(dim=1)

    failure = torch.full((images.shape[0],), math.inf, dtype=torch.float64)
    reach = shifts.abs().amax(dim=1).cpu()
    active = torch.arange(images.shape[0], device=images.device)
    start = 0
    while start < len(shifts) and len(active):
        per_image = max(1, batch_size // len(active))
        stop = min(len(shifts), start + per_image)
        count = stop - start
        index = active.repeat_interleave(count)
        moves = shifts[start:stop].repeat(len(active), 1)
        changed = (model(shifted(index, moves)).argmax(dim=1) != reference[index]).view(len(active), count).cpu()
        first = torch.where(changed.any(dim=1), changed.float().argmax(dim=1), -1)
        failed = first >= 0
        failure[active.cpu()[failed]] = reach[start + first[failed]]
        active = active[~failed.to(active.device)]
        start = stop
    return WorstCase(kind, int(radius), tuple(float(value) for value in failure), len(shifts))
