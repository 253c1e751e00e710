"""How often a classifier keeps its prediction under random circular shifts."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from torch import nn

from equivit.roll import roll_from_anchor

__all__ = ["ShiftConsistency", "crop_consistency", "random_shifts", "shift_consistency", "shifted_logits"]


@dataclasses.dataclass(frozen=True)
class ShiftConsistency:
    """Result of :func:`shift_consistency`.

    Attributes:
        consistent: Number of (image, shift) pairs whose top-1 class did not change.
        total: Number of pairs.
        max_logit_change: Largest absolute change of any logit over all pairs.
    """

    consistent: int
    total: int
    max_logit_change: float

    @property
    def fraction(self) -> float:
        """Share of pairs whose top-1 class did not change (1.0 when there are none)."""
        return self.consistent / self.total if self.total else 1.0

    def __str__(self) -> str:
        """For example ``16/16 (100.0 %), max logit change 4.2e-07``."""
        return (
            f"{self.consistent}/{self.total} ({100 * self.fraction:.1f} %), "
            f"max logit change {self.max_logit_change:.2g}"
        )


def random_shifts(
    count: int,
    size: tuple[int, int],
    *,
    max_shift: int | None = None,
    seed: int = 0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Random circular shifts ``(dy, dx)``, one per image, never both zero.

    Args:
        count: Number of shifts.
        size: ``(H, W)`` of the images; shifts are taken modulo it.
        max_shift: Largest absolute shift per axis (default: the whole image).
        seed: Seed.
        device: Device of the result.

    Returns:
        int64 shifts.

    Shape:
        - output: :math:`(count, 2)`
    """
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    limits = torch.tensor([height - 1, width - 1] if max_shift is None else [max_shift, max_shift])
    limits = torch.minimum(limits, torch.tensor([height - 1, width - 1]))
    shifts = torch.stack(
        [torch.randint(-int(limit), int(limit) + 1, (count,), generator=generator) for limit in limits], dim=1
    )
    zero = (shifts == 0).all(dim=1)
    shifts[zero, 1] = 1 if width > 1 else 0
    shifts[zero & (width == 1), 0] = 1 if height > 1 else 0
    return shifts.to(device)


def shifted_logits(
    model: nn.Module, images: torch.Tensor, *, shifts_per_image: int, max_shift: int | None, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """For each round, every image circularly shifted by its own random shift: ``(shifts, logits)``.

    Round ``k`` uses ``random_shifts(..., seed=seed + k)``.

    Shape:
        - images: :math:`(B, C, H, W)`
        - shifts: :math:`(B, 2)`; logits: :math:`(B, K)`
    """
    size = (images.shape[-2], images.shape[-1])
    for round_index in range(shifts_per_image):
        shifts = random_shifts(
            images.shape[0], size, max_shift=max_shift, seed=seed + round_index, device=images.device
        )
        yield shifts, model(roll_from_anchor(images, shifts))


@torch.no_grad()
def shift_consistency(
    model: nn.Module,
    images: torch.Tensor,
    *,
    shifts_per_image: int = 1,
    max_shift: int | None = None,
    seed: int = 0,
) -> ShiftConsistency:
    """Top-1 consistency of a classifier under random circular shifts, one shift per image and round.

    Each image is compared with circularly shifted copies of itself, each by its own random
    shift (not one shift for the whole batch). The model is run as it is (call ``.eval()``
    first for inference behaviour).

    Args:
        model: A classifier returning logits ``(B, K)``.
        images: The images.
        shifts_per_image: Shifted copies per image.
        max_shift: Largest absolute shift per axis (default: any).
        seed: Seed of the shifts.

    Returns:
        Counts and the largest logit change.

    Shape:
        - images: :math:`(B, C, H, W)`
    """
    reference = model(images)
    consistent, total, largest = 0, 0, 0.0
    for _, logits in shifted_logits(model, images, shifts_per_image=shifts_per_image, max_shift=max_shift, seed=seed):
        consistent += int((logits.argmax(dim=1) == reference.argmax(dim=1)).sum())
        total += images.shape[0]
        largest = max(largest, float((logits - reference).abs().max()) if logits.numel() else 0.0)
    return ShiftConsistency(consistent, total, largest)


@torch.no_grad()
def crop_consistency(
    model: nn.Module,
    images: torch.Tensor,
    size: tuple[int, int],
    *,
    crops_per_image: int = 1,
    seed: int = 0,
) -> ShiftConsistency:
    """Top-1 consistency under crop shifts: two random crops of the same larger image.

    The protocol of Chaman & Dokmanic (2021) and Ding et al. (2023): for each image, two crops of
    ``size`` at independent random positions are classified, and the pair counts as consistent
    when the top-1 classes agree. Unlike a circular shift, a crop shift brings new content in at
    the border, so no model is exactly invariant to it; circular-shift equivariance still helps.

    Args:
        model: A classifier returning logits ``(B, K)``.
        images: Larger images to crop from.
        size: ``(h, w)`` of the crops, at most the images' size.
        crops_per_image: Pairs of crops per image.
        seed: Seed of the crop positions.

    Returns:
        Counts, and the largest logit change between the two crops of a pair.

    Raises:
        ValueError: If the crops are larger than the images.

    Shape:
        - images: :math:`(B, C, H, W)`
    """
    height, width = images.shape[-2:]
    crop_h, crop_w = size
    if crop_h > height or crop_w > width or crop_h < 1 or crop_w < 1:
        raise ValueError(
            f"crop size {crop_h} x {crop_w} must be positive and fit inside the images ({height} x {width})"
        )
    generator = torch.Generator().manual_seed(seed)
    consistent, total, largest = 0, 0, 0.0
    rows, cols = torch.arange(crop_h, device=images.device), torch.arange(crop_w, device=images.device)
    batch = torch.arange(images.shape[0], device=images.device)[:, None, None]

    def crop(tops: torch.Tensor, lefts: torch.Tensor) -> torch.Tensor:
        index_h = (tops.to(images.device)[:, None] + rows)[:, :, None]
        index_w = (lefts.to(images.device)[:, None] + cols)[:, None, :]
        return images.permute(0, 2, 3, 1)[batch, index_h, index_w].permute(0, 3, 1, 2)

    for _ in range(crops_per_image):
        corners = [
            (
                torch.randint(0, height - crop_h + 1, (images.shape[0],), generator=generator),
                torch.randint(0, width - crop_w + 1, (images.shape[0],), generator=generator),
            )
            for _ in range(2)
        ]
        first, second = (model(crop(*corner)) for corner in corners)
        consistent += int((first.argmax(dim=1) == second.argmax(dim=1)).sum())
        total += images.shape[0]
        largest = max(largest, float((first - second).abs().max()) if first.numel() else 0.0)
    return ShiftConsistency(consistent, total, largest)
