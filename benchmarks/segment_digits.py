"""Segmentation at small scale: stock vs equivit FPN segmenters trained on digits scattered on a canvas.

scikit-learn's 1,797 handwritten digits (8 x 8) are upsampled to 20 x 20 and scattered, four to a
canvas, on a faint textured background; each pixel's label is the digit it belongs to (1-10, where
the digit's ink is above half its range) or background (0): 11 classes. Digits of the train and
test canvases come from disjoint halves of the dataset. A canvas is 64 x 64 (circular protocols);
for crop shifts it is larger by twice the radius and 64 x 64 windows are cut from it.

For each backbone, two segmenters start from the same backbone weights: ``equivariant=False`` on
the stock timm ``features_only`` model (the usual FPN: bilinear upsampling, zero padding) and
``equivit.create_segmenter`` (converted backbone, image anchor, circular decoder, anchor undone at
input resolution). Both are trained with AdamW, no augmentation, the same batches; then:

- mIoU on the test canvases;
- circular mask consistency: the share of pixels whose class is the same on a circularly shifted
  canvas as on the unshifted one moved by the shift, and the share of canvases whose whole mask
  agrees, over random shifts of any size;
- crop mask consistency: two 64 x 64 windows of a larger canvas, offset by up to ``--radius``
  pixels; the same shares over the pixels both windows see.

    python benchmarks/segment_digits.py                      # resnet18, about 5 minutes on 2 cores
    python benchmarks/segment_digits.py --backbones resnet18 pvt_v2_b0 --steps 600
"""

from __future__ import annotations

import argparse
import json
import time

import timm
import torch
import torch.nn.functional as F
from torch import nn

import equivit
from equivit.segmentation import Segmenter

SIZE = 64
DIGIT = 20
PER_CANVAS = 4
CLASSES = 11
BACKBONES = {
    "resnet18": {"out_indices": (1, 2, 3)},
    "convnext_atto": {"out_indices": (0, 1, 2)},
    "pvt_v2_b0": {"out_indices": (0, 1, 2)},
}


def digit_sources(seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Digits ``(N, 20, 20)`` in [0, 1] with their labels, split in two disjoint halves."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images).float()[:, None] / 16
    images = F.interpolate(images, size=(DIGIT, DIGIT), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)
    labels = torch.from_numpy(data.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = len(order) // 2
    return (images[order[:cut]], labels[order[:cut]]), (images[order[cut:]], labels[order[cut:]])


def canvases(
    source: tuple[torch.Tensor, torch.Tensor], count: int, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` canvases ``(N, 3, size, size)`` (normalised) and their masks ``(N, size, size)``."""
    digits, labels = source
    generator = torch.Generator().manual_seed(seed)
    texture = F.interpolate(torch.rand(count, 3, size // 8, size // 8, generator=generator), size=(size, size))
    images = 0.15 * texture
    masks = torch.zeros(count, size, size, dtype=torch.long)
    for index in range(count):
        for pick in torch.randint(0, len(labels), (PER_CANVAS,), generator=generator).tolist():
            top, left = torch.randint(0, size - DIGIT + 1, (2,), generator=generator).tolist()
            ink = digits[pick]
            window = (slice(top, top + DIGIT), slice(left, left + DIGIT))
            colour = 0.5 + 0.5 * torch.rand(3, 1, 1, generator=generator)
            images[index][(slice(None), *window)] = torch.maximum(images[index][(slice(None), *window)], colour * ink)
            masks[index][window] = torch.where(ink > 0.5, labels[pick] + 1, masks[index][window])
    return (images - 0.25) / 0.3, masks


def make_pair(name: str, seed: int) -> dict[str, nn.Module]:
    """Stock and equivit segmenters on the same backbone weights, with the same decoder weights."""
    torch.manual_seed(seed)
    stock_backbone = timm.create_model(name, pretrained=False, features_only=True, **BACKBONES[name])
    converted_backbone = equivit.convert(stock_backbone)  # a copy: the stock model stays stock
    stock = Segmenter(stock_backbone, CLASSES, equivariant=False)
    converted = Segmenter(converted_backbone, CLASSES)
    converted.decoder.load_state_dict(stock.decoder.state_dict())
    converted.classifier.load_state_dict(stock.classifier.state_dict())
    return {"stock": stock, "equivit": converted}


def train(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, steps: int, batch: int, seed: int) -> float:
    """AdamW with a cosine schedule; returns the seconds spent."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        pick = torch.randint(0, len(images), (batch,), generator=generator)
        loss = F.cross_entropy(model(images[pick]), masks[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return time.perf_counter() - start


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Per-pixel classes ``(N, H, W)``."""
    model.eval()
    return torch.cat([model(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])


def mean_iou(predicted: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean over the classes present of intersection over union."""
    scores = []
    for label in range(CLASSES):
        truth, guess = masks == label, predicted == label
        union = (truth | guess).sum()
        if truth.any():
            scores.append(float((truth & guess).sum() / union))
    return sum(scores) / len(scores)


def circular_consistency(model: nn.Module, images: torch.Tensor, rounds: int, seed: int) -> tuple[float, float]:
    """(pixel share, whole-mask share) of agreement between shifted and unshifted predictions."""
    reference = predict(model, images)
    generator = torch.Generator().manual_seed(seed)
    pixels, whole = [], []
    for _ in range(rounds):
        shifts = torch.randint(0, SIZE, (len(images), 2), generator=generator)
        shifted = equivit.roll_from_anchor(images, shifts)  # each canvas rolled by its own shift
        moved = equivit.roll_from_anchor(reference[:, None].float(), shifts)[:, 0].long()
        agree = predict(model, shifted) == moved
        pixels.append(agree.float().mean())
        whole.append(agree.flatten(1).all(1).float().mean())
    return float(torch.stack(pixels).mean()), float(torch.stack(whole).mean())


def crop_consistency(model: nn.Module, large: torch.Tensor, radius: int, seed: int) -> tuple[float, float]:
    """(pixel share, whole-overlap share) of agreement between two windows offset by up to ``radius``."""
    generator = torch.Generator().manual_seed(seed)
    first = predict(model, large[:, :, radius : radius + SIZE, radius : radius + SIZE])
    pixels, whole = [], []
    for index in range(len(large)):
        dy, dx = (torch.randint(-radius, radius + 1, (2,), generator=generator)).tolist()
        window = large[index : index + 1, :, radius + dy : radius + dy + SIZE, radius + dx : radius + dx + SIZE]
        second = predict(model, window)[0]
        # Pixel (i, j) of the second window is pixel (i + dy, j + dx) of the first.
        rows = slice(max(0, -dy), SIZE - max(0, dy))
        cols = slice(max(0, -dx), SIZE - max(0, dx))
        seen_first = first[index][rows.start + dy : rows.stop + dy, cols.start + dx : cols.stop + dx]
        agree = second[rows, cols] == seen_first
        pixels.append(agree.float().mean())
        whole.append(agree.all().float())
    return float(torch.stack(pixels).mean()), float(torch.stack(whole).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet18"], choices=list(BACKBONES))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train", type=int, default=2000, help="training canvases")
    parser.add_argument("--test", type=int, default=200, help="test canvases")
    parser.add_argument("--radius", type=int, default=8, help="largest crop offset, pixels")
    parser.add_argument("--rounds", type=int, default=3, help="random circular shifts per test canvas")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    train_source, test_source = digit_sources(args.seed)
    train_images, train_masks = canvases(train_source, args.train, SIZE, args.seed + 1)
    large, large_masks = canvases(test_source, args.test, SIZE + 2 * args.radius, args.seed + 2)
    inner = (slice(None), slice(None), slice(args.radius, args.radius + SIZE), slice(args.radius, args.radius + SIZE))
    test_images, test_masks = large[inner], large_masks[inner[0], inner[2], inner[3]]

    results = []
    print(
        "| backbone | model | mIoU | circular: pixels | circular: whole masks | crop: pixels | crop: whole masks "
        "| train s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.backbones:
        for label, model in make_pair(name, args.seed).items():
            seconds = train(model, train_images, train_masks, args.steps, args.batch, args.seed)
            miou = mean_iou(predict(model, test_images), test_masks)
            circular = circular_consistency(model, test_images, args.rounds, args.seed)
            crop = crop_consistency(model, large, args.radius, args.seed)
            row = {"backbone": name, "model": label, "miou": miou, "circular": circular, "crop": crop, "s": seconds}
            results.append(row)
            print(
                f"| {name} | {label} | {miou:.3f} | {100 * circular[0]:.2f} % | {100 * circular[1]:.1f} % "
                f"| {100 * crop[0]:.2f} % | {100 * crop[1]:.1f} % | {seconds:.0f} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
