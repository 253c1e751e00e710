"""Shift consistency of stock and converted timm models on many crops of real photos.

Images are random crops of the 16 scikit-image photos and scikit-learn's two sample photos (each
resized so that its shorter side is 320 pixels), so a few thousand pairs are distinct images.
Protocols, each over ``--pairs`` pairs per model:

- circular: two random circular shifts of any size of the same image (Ding et al., 2023);
- circular <= 15 px: the same with shifts of at most 15 pixels per axis;
- crop: two crops of the same photo whose corners differ by up to 32 pixels per axis;
- flip + circular: the image is mirrored left-right first, then two circular shifts;
- affine + circular: the image is rotated (up to 15 degrees) and scaled (0.9 to 1.1) first, then
  two circular shifts.

A pair is consistent when both images get the same top-1 class. The table gives, per model and
protocol, consistent pairs, the failures and the largest logit change within a pair.

    python benchmarks/consistency.py --pairs 20000
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
import torch.nn.functional as F
from torch import nn

import equivit
from equivit.testing import random_shifts

# (timm name, image size): sizes that keep a CPU run short while every family is represented
MODELS = (
    ("vit_tiny_patch16_224", 96),
    ("deit_tiny_distilled_patch16_224", 96),
    ("twins_pcpvt_small", 96),
    ("twins_svt_small", 224),
)
SHORT_SIDE = 320
CROP_JITTER = 32


def photo_pool() -> list[torch.Tensor]:
    """The 18 real photos, ImageNet-normalised, shorter side 320 pixels."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    from equivit.testing.photos import PHOTOS

    arrays = []
    for name in PHOTOS:
        array = getattr(data, name)()
        arrays.append(array[0] if isinstance(array, tuple) else array)
    arrays += list(load_sample_images().images)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    pool = []
    for array in arrays:
        image = torch.from_numpy(array.copy()).float()
        image = image[..., :3] if image.dim() == 3 else image[..., None].expand(*image.shape, 3)
        image = image.permute(2, 0, 1)[None] / 255
        scale = SHORT_SIDE / min(image.shape[-2:])
        size = (round(image.shape[-2] * scale), round(image.shape[-1] * scale))
        image = F.interpolate(image, size=size, mode="bilinear", antialias=True)[0]
        pool.append((image - mean) / std)
    return pool


def crops(pool: list[torch.Tensor], count: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``count`` random crops and, for each, a second crop of the same photo moved by up to 32 pixels."""
    first, second = [], []
    for _ in range(count):
        photo = pool[int(torch.randint(len(pool), (1,), generator=generator))]
        height, width = photo.shape[-2:]
        top = int(torch.randint(0, height - size - CROP_JITTER + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - size - CROP_JITTER + 1, (1,), generator=generator))
        dy, dx = (int(v) for v in torch.randint(0, CROP_JITTER + 1, (2,), generator=generator))
        first.append(photo[:, top : top + size, left : left + size])
        second.append(photo[:, top + dy : top + dy + size, left + dx : left + dx + size])
    return torch.stack(first), torch.stack(second)


@torch.no_grad()
def compare(model: nn.Module, first: torch.Tensor, second: torch.Tensor, batch: int) -> tuple[int, float]:
    """Pairs with the same top-1 class, and the largest logit change within a pair."""
    same, largest = 0, 0.0
    for a, b in zip(first.split(batch), second.split(batch), strict=True):
        logits_a, logits_b = model(a), model(b)
        same += int((logits_a.argmax(dim=1) == logits_b.argmax(dim=1)).sum())
        largest = max(largest, float((logits_a - logits_b).abs().max()))
    return same, largest


def protocols(images: torch.Tensor, jittered: torch.Tensor, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The image pairs of every protocol."""
    count, size = images.shape[0], tuple(images.shape[-2:])

    def shift(batch: torch.Tensor, offset: int, max_shift: int | None = None) -> torch.Tensor:
        return equivit.roll_from_anchor(batch, random_shifts(count, size, max_shift=max_shift, seed=seed + offset))  # type: ignore[arg-type]

    flipped = images.flip(-1)
    warped = affine(images, seed)
    return {
        "circular": (shift(images, 1), shift(images, 2)),
        "circular <= 15 px": (shift(images, 3, 15), shift(images, 4, 15)),
        "crop": (images, jittered),
        "flip + circular": (shift(flipped, 5), shift(flipped, 6)),
        "affine + circular": (shift(warped, 7), shift(warped, 8)),
    }


def affine(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Each image rotated by up to 15 degrees and scaled by 0.9 to 1.1 about its centre (reflection at the border)."""
    generator = torch.Generator().manual_seed(seed)
    count = images.shape[0]
    angle = (torch.rand(count, generator=generator) * 2 - 1) * torch.pi / 12
    scale = 0.9 + 0.2 * torch.rand(count, generator=generator)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        (torch.stack((cos, -sin, torch.zeros(count)), 1), torch.stack((sin, cos, torch.zeros(count)), 1)), 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000, help="pairs per model and protocol (default 2000)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=[name for name, _ in MODELS])
    args = parser.parse_args()
    sizes = dict(MODELS)
    pool = photo_pool()
    print(
        f"{len(pool)} real photos, {args.pairs} pairs per model and protocol, random init (seed {args.seed}), "
        f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads"
    )
    print()
    print("| model | size | protocol | stock consistent | stock max logit change | equivit consistent | "
          "equivit failures | equivit max logit change | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        size = sizes.get(name, 224)
        torch.manual_seed(args.seed)
        stock = timm.create_model(name, pretrained=False, img_size=size).eval()
        converted = equivit.convert(stock).eval()
        generator = torch.Generator().manual_seed(args.seed)
        images, jittered = crops(pool, args.pairs, size, generator)
        for protocol, (first, second) in protocols(images, jittered, args.seed).items():
            start = time.perf_counter()
            stock_same, stock_change = compare(stock, first, second, args.batch)
            same, change = compare(converted, first, second, args.batch)
            seconds = time.perf_counter() - start
            print(
                f"| {name} | {size} | {protocol} | {100 * stock_same / args.pairs:.2f} % | {stock_change:.2g} | "
                f"{100 * same / args.pairs:.2f} % | {args.pairs - same} | {change:.2g} | {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
