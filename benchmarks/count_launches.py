"""Kernel launches and host reads per forward pass and training step, stock timm against converted.

Runs on the CPU along the branches a GPU tensor takes (``equivit.device_paths.accelerator_paths``)
and counts, with a ``TorchDispatchMode`` (``equivit.testing.count_kernel_ops``), every aten
operator that would launch a kernel and every read of a device value on the host (a sync). What
a GPU pays for launches is roughly the count times 4-8 microseconds in eager mode.

    python benchmarks/count_launches.py [--batch 8] [--size N] [--models NAME ...] [--no-training]
    python benchmarks/count_launches.py --compiled [--models NAME ...]

With ``--compiled`` it counts instead the kernels that ``torch.compile`` (inductor) launches per
forward pass: the calls in the generated code (fused kernels and library calls such as
convolutions and matrix products), stock against converted. Inductor generates C++ on the CPU
and Triton on a GPU; the two fuse alike, so the count is what a compiled model launches on a GPU
to within a few kernels (and with ``mode="reduce-overhead"`` a CUDA graph replays them all as one).
"""

from __future__ import annotations

import argparse
import re

import timm
import torch
from torch import nn

import equivit
from equivit.device_paths import accelerator_paths
from equivit.testing.launches import KernelOpCount, count_kernel_ops

MODELS = (
    "vit_small_patch16_224",
    "deit_small_patch16_224",
    "twins_pcpvt_small",
    "twins_svt_small",
    "swin_tiny_patch4_window7_224",
    "pvt_v2_b0",
    "resnet50",
    "convnext_tiny",
)


def forward_count(model: nn.Module, images: torch.Tensor) -> KernelOpCount:
    """Kernel ops and host reads of one forward pass in eval mode, without gradients (after a warm-up)."""
    model.eval()
    with torch.no_grad():
        model(images)  # builds the index tables of these shapes
        return count_kernel_ops(model, images)


def training_count(model: nn.Module, images: torch.Tensor) -> KernelOpCount:
    """Kernel ops and host reads of forward, cross-entropy and backward in train mode (after a warm-up)."""
    model.train()
    labels = torch.zeros(images.shape[0], dtype=torch.long)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()

    step()
    model.zero_grad(set_to_none=True)
    return count_kernel_ops(step)


# A launch in inductor's generated code: a fused kernel, a library call or an aten fallback.
_LAUNCH = re.compile(
    r"^\s+(?:\w+ = )?(cpp_fused\w*|triton_\w+\.run|extern_kernels\.\w+|aten\.\w+|torch\.ops\.\w+\.\w+)\("
)


def compiled_count(model: nn.Module, images: torch.Tensor) -> int:
    """Kernel launches of one compiled forward pass (eval mode, no gradients), read from inductor's code."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    compiled = torch.compile(model.eval(), fullgraph=True, dynamic=False)
    with torch.no_grad():
        _, code = run_and_get_code(compiled, images)
    return sum(1 for text in code for line in text.splitlines() if _LAUNCH.match(line))


def main_compiled(models: list[str], batch: int, size: int | None) -> None:
    """Print the table of compiled launches."""
    print(f"batch {batch}, torch.compile (inductor) forward, torch {torch.__version__}")
    print("| model | stock kernels | equivit kernels | ratio |")
    print("|---|---|---|---|")
    for name in models:
        stock = timm.create_model(name)
        converted = equivit.convert(timm.create_model(name))
        side = size or stock.pretrained_cfg["input_size"][-1]
        images = torch.randn(batch, 3, side, side)
        counts = [compiled_count(stock, images), compiled_count(converted, images)]
        print(f"| {name} ({side}) | {counts[0]} | {counts[1]} | {counts[1] / counts[0]:.2f} |", flush=True)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=None, help="image size (default: each model's own)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--no-training", action="store_true", help="count forward passes only")
    parser.add_argument("--compiled", action="store_true", help="count the kernels of compiled forward passes")
    args = parser.parse_args()
    if args.compiled:
        main_compiled(args.models, args.batch, args.size)
        return
    torch.manual_seed(0)
    print(f"batch {args.batch}, accelerator paths on CPU tensors, torch {torch.__version__}")
    print(
        "| model | stock fwd ops | equivit fwd ops | ratio | equivit fwd syncs | stock step ops "
        "| equivit step ops | ratio | equivit step syncs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        stock = timm.create_model(name)
        converted = equivit.convert(timm.create_model(name))
        size = args.size or stock.pretrained_cfg["input_size"][-1]
        images = torch.randn(args.batch, 3, size, size)
        with accelerator_paths():
            rows = [forward_count(stock, images), forward_count(converted, images)]
            if not args.no_training:
                rows += [training_count(stock, images), training_count(converted, images)]
        ratio = f"{rows[1].ops / rows[0].ops:.2f}"
        cells = [f"{name} ({size})", str(rows[0].ops), str(rows[1].ops), ratio, str(rows[1].host_reads)]
        if not args.no_training:
            cells += [str(rows[2].ops), str(rows[3].ops), f"{rows[3].ops / rows[2].ops:.2f}", str(rows[3].host_reads)]
        else:
            cells += ["", "", "", ""]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
