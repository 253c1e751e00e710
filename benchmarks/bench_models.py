"""Throughput of converted models against the stock timm models, interleaved in one process.

For each model: forward in eval mode (no grad) and one training step (forward, cross-entropy,
backward, SGD step), batch 16 at each model's own input size (224 px for most), random init.
Stock and converted runs alternate so that both see the same machine state, each going first in
every other pair; the table gives medians and the ratio converted / stock of throughput (higher
is better, 1.0 = as fast as stock), and the quartiles of the same ratio taken pair by pair, which
show how much the machine moved.

    python benchmarks/bench_models.py [--device cuda] [--repeats 7] [--batch 16] [--models NAME ...] [--modes forward]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
from collections.abc import Callable

import timm
import torch
from torch import nn

import equivit
from equivit.timing import timed

MODELS = (
    "vit_small_patch16_224",
    "deit_small_patch16_224",
    "twins_svt_small",
    "twins_pcpvt_small",
    "swin_tiny_patch4_window7_224",
    "pvt_v2_b0",
    "pvt_v2_b1",
    "resnet18",
    "resnet50",
    "convnext_atto",
    "convnext_tiny",
)


def forward_step(model: nn.Module, images: torch.Tensor) -> Callable[[], object]:
    """One forward pass without gradients, in eval mode."""

    def run() -> object:
        model.eval()
        with torch.no_grad():
            return model(images)

    return run


def training_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], object]:
    """One SGD step on cross-entropy, in train mode."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def run() -> object:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=["forward", "train step"], choices=["forward", "train step"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    print(
        f"torch {torch.__version__}, timm {timm.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {device}, batch {args.batch}, each model's own input size, "
        f"median of {args.repeats}"
    )
    print()
    print("| model | size | mode | stock ms | converted ms | converted / stock throughput | pairwise, quartiles |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        stock = timm.create_model(name).to(device)
        converted = equivit.convert(stock)
        _, height, width = stock.pretrained_cfg["input_size"]  # 224 for most; 256 for HaloNet, BoTNet, MobileViT
        images = torch.randn(args.batch, 3, height, width, device=device)
        for mode in args.modes:
            steps = {
                key: forward_step(model, images) if mode == "forward" else training_step(model, images, labels)
                for key, model in (("stock", stock), ("converted", converted))
            }
            for step in steps.values():  # warm-up
                step()
            times: dict[str, list[float]] = {"stock": [], "converted": []}
            for repeat in range(args.repeats):
                order = ("stock", "converted") if repeat % 2 == 0 else ("converted", "stock")
                for key in order:
                    times[key].append(timed(steps[key], device))
            stock_ms, converted_ms = statistics.median(times["stock"]), statistics.median(times["converted"])
            pairs = [s / c for s, c in zip(times["stock"], times["converted"], strict=True)]
            low, _, high = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else (pairs[0],) * 3
            print(
                f"| {name} | {height} | {mode} | {stock_ms:.1f} | {converted_ms:.1f} | {stock_ms / converted_ms:.3f} "
                f"| {low:.3f} to {high:.3f} |"
            )


if __name__ == "__main__":
    main()
