"""The paper's comparison at small scale: stock vs converted ViT and Twins trained on real digits.

scikit-learn's 1,797 handwritten digits (8 x 8, 10 classes) are upsampled to 32 x 32 and split
80/20 (seeded). For each family a small stock timm model and its conversion (same initial
weights) are trained with AdamW, no augmentation, then evaluated on the test split:

- clean accuracy;
- accuracy when every test image is circularly shifted by its own random shift;
- consistency: two random circular shifts of the same image give the same class (the paper's
  protocol, shifts of any size);
- crop consistency: two random 32 x 32 crops of the digit placed on a 40 x 40 background;
- accuracy against a horizontal circular shift of 0 to 16 pixels (plotted with ``--plot``).

Runs on one process, or under ``torchrun`` with DistributedDataParallel (gloo on CPU, nccl on
CUDA): each rank takes its share of every global batch, so the result matches one process.

    python benchmarks/train_digits.py --plot docs/img/digits_shift.png
    torchrun --nproc_per_node 2 benchmarks/train_digits.py --models vit --steps 3 --save-state state.pt
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.models.twins import Twins
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import equivit
from equivit.testing import crop_consistency, random_shifts

SIZE = 32
CANVAS = 40


def digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and test images ``(N, 1, 32, 32)`` (normalised) and labels, split 80/20 with ``seed``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images).float()[:, None] / 16
    images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = (images - images.mean()) / images.std()
    labels = torch.from_numpy(data.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(order))
    return images[order[:cut]], labels[order[:cut]], images[order[cut:]], labels[order[cut:]]


def make_vit() -> nn.Module:
    """A small ViT: 4 x 4 patches (64 tokens), width 64, depth 4, class token."""
    return VisionTransformer(
        img_size=SIZE, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0
    )


def make_twins() -> nn.Module:
    """A small Twins-SVT: 2 x 2 patches, windows of 4, 4, 2, 2 tokens, sub-sampling 4, 2, 1, 1."""
    return Twins(
        img_size=SIZE, patch_size=2, in_chans=1, num_classes=10, embed_dims=(32, 64, 96, 128), num_heads=(1, 2, 3, 4),
        mlp_ratios=(2, 2, 2, 2), depths=(2, 2, 2, 2), sr_ratios=(4, 2, 1, 1), wss=(4, 4, 2, 2),
    )  # fmt: skip


FAMILIES: dict[str, Callable[[], nn.Module]] = {"vit": make_vit, "twins": make_twins}


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    batch: int,
    seed: int,
    optimizer_name: str = "adamw",
    augment: bool = False,
) -> nn.Module:
    """AdamW (or SGD) with a cosine schedule; each rank trains on its share of every global batch.

    SGD is there for comparing runs: Adam divides by the gradient's magnitude, so parameters whose
    gradient is zero up to rounding (the key bias of attention) move by rounding-sized noise.
    With ``augment`` every training image is circularly shifted by its own random shift.
    """
    rank, world = distributed()
    if batch % world:
        raise ValueError(f"the global batch {batch} must be divisible by the number of processes {world}")
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if optimizer_name == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    cursor = 0
    model.train()
    for _ in range(steps):
        if cursor + batch > len(order):
            order, cursor = torch.randperm(len(labels), generator=generator), 0
        chosen = order[cursor : cursor + batch][rank::world]
        cursor += batch
        inputs = images[chosen]
        if augment:
            shifts = torch.randint(0, SIZE, (len(chosen), 2), generator=generator)
            inputs = equivit.roll_from_anchor(inputs, shifts)
        loss = F.cross_entropy(net(inputs), labels[chosen])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def shifted(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Each image circularly shifted by its own random shift (any size)."""
    shifts = random_shifts(len(images), (SIZE, SIZE), seed=seed)
    return equivit.roll_from_anchor(images, shifts)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, seed: int) -> dict[str, object]:
    """Clean and shifted accuracy, consistency, crop consistency, accuracy against a horizontal shift."""

    def predict(batch: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(part).argmax(dim=1) for part in batch.split(256)])

    first, second = predict(shifted(images, seed)), predict(shifted(images, seed + 1))
    background = float(images.amin())
    canvas = torch.full((len(images), 1, CANVAS, CANVAS), background)
    margin = (CANVAS - SIZE) // 2
    canvas[:, :, margin : margin + SIZE, margin : margin + SIZE] = images
    crops = crop_consistency(model, canvas, (SIZE, SIZE), seed=seed)
    curve = [
        float((predict(torch.roll(images, shift, dims=3)) == labels).float().mean()) for shift in range(SIZE // 2 + 1)
    ]
    return {
        "clean accuracy": float((predict(images) == labels).float().mean()),
        "shifted accuracy": float((first == labels).float().mean()),
        "consistency": float((first == second).float().mean()),
        "crop consistency": crops.fraction,
        "accuracy by horizontal shift": curve,
    }


def plot(results: dict[str, dict[str, object]], path: str) -> None:
    """Accuracy against a horizontal circular shift, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.6), dpi=120)
    for name, result in results.items():
        curve = result["accuracy by horizontal shift"]
        axes.plot(range(len(curve)), [100 * value for value in curve], marker="o", markersize=3, label=name)  # type: ignore[arg-type]
    axes.set_xlabel("horizontal circular shift (pixels)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("scikit-learn digits at 32 x 32: stock timm vs equivit")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per model (default 600)")
    parser.add_argument("--batch", type=int, default=64, help="global batch size (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    parser.add_argument(
        "--augmented-stock", action="store_true", help="also train each stock model with random circular shifts"
    )
    parser.add_argument("--plot", default=None, help="write the accuracy-against-shift plot (PNG) here")
    parser.add_argument("--json", default=None, help="write the results as JSON here")
    parser.add_argument("--save-state", default=None, help="save the trained state dicts here (rank 0)")
    args = parser.parse_args()
    rank, world = distributed()
    train_x, train_y, test_x, test_y = digits(args.seed)
    results: dict[str, dict[str, object]] = {}
    states: dict[str, dict[str, torch.Tensor]] = {}
    for family in args.models:
        torch.manual_seed(args.seed)
        stock = FAMILIES[family]()
        converted = equivit.convert(stock)  # same initial weights, before either is trained
        runs = [("stock", stock, False), ("equivit", converted, False)]
        if args.augmented_stock:
            runs.insert(1, ("stock + shift augmentation", copy.deepcopy(stock), True))
        for variant, model, augment in runs:
            name = f"{family} {variant}"
            torch.manual_seed(args.seed)
            start = time.perf_counter()
            train(
                model, train_x, train_y, steps=args.steps, batch=args.batch, seed=args.seed,
                optimizer_name=args.optimizer, augment=augment,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            states[name] = model.state_dict()
            if rank == 0:
                results[name] = {**evaluate(model, test_x, test_y, args.seed), "train seconds": round(seconds, 1)}
    if rank == 0:
        print(f"{len(train_y)} train / {len(test_y)} test digits at {SIZE} x {SIZE}, {args.steps} steps of "
              f"{args.batch}, {world} process(es), seed {args.seed}")  # fmt: skip
        print()
        print("| model | clean acc. | acc. under circular shifts | consistency | crop consistency | train s |")
        print("|---|---|---|---|---|---|")
        for name, result in results.items():
            print(
                f"| {name} | {100 * result['clean accuracy']:.1f} % | {100 * result['shifted accuracy']:.1f} % | "  # type: ignore[operator]
                f"{100 * result['consistency']:.1f} % | {100 * result['crop consistency']:.1f} % | "  # type: ignore[operator]
                f"{result['train seconds']} |"
            )
        if args.plot:
            plot(results, args.plot)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=1)
        if args.save_state:
            torch.save(states, args.save_state)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
