"""Circular convolutions of converted CNNs against the zero-padded ones of the stock models.

For the convolution shapes of ConvNeXt-atto, PVT v2-b0 and ResNet-18 at 224 px (batch 8), in the
layout each model feeds them, the median time of ``F.conv2d`` with zero padding (what the stock
model runs), of ``equivit.layers.circular_conv2d`` (one padded copy in the input's layout), and of
torch's own circular padding (``F.pad(mode="circular")``, which loses a channels-last layout).
Interleaved in one process; ratios are circular / zero-padded time (lower is better).

    python benchmarks/bench_circular_conv.py [--device cuda] [--repeats 21] [--batch 8]
"""

from __future__ import annotations

import argparse
import platform
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from equivit.layers import circular_conv2d
from equivit.timing import timed

# (model, channels in, channels out, grid, kernel, depthwise, channels-last input)
SHAPES = (
    ("convnext_atto", 40, 40, 56, 7, True, False),
    ("convnext_atto", 80, 80, 28, 7, True, False),
    ("convnext_atto", 160, 160, 14, 7, True, False),
    ("convnext_atto", 320, 320, 7, 7, True, False),
    ("pvt_v2_b0", 256, 256, 56, 3, True, True),
    ("pvt_v2_b0", 512, 512, 28, 3, True, True),
    ("pvt_v2_b0", 640, 640, 14, 3, True, True),
    ("pvt_v2_b0", 1024, 1024, 7, 3, True, True),
    ("resnet18", 64, 64, 56, 3, False, False),
    ("resnet18", 128, 128, 28, 3, False, False),
    ("resnet18", 256, 256, 14, 3, False, False),
    ("resnet18", 512, 512, 7, 3, False, False),
)


def _calls(x: torch.Tensor, weight: torch.Tensor, pad: int, groups: int) -> dict[str, Callable[[], object]]:
    """The three ways to run one convolution: zero padding, ``circular_conv2d``, torch's circular padding."""
    return {
        "zero": lambda: F.conv2d(x, weight, None, 1, pad, 1, groups),
        "ours": lambda: circular_conv2d(x, weight, None, (1, 1), (pad, pad), (1, 1), groups),
        "torch": lambda: F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="circular"), weight, None, 1, 0, 1, groups),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"device {device}, batch {args.batch}, median of {args.repeats}"
    )
    print()
    print("| model | input | kernel | zero-padded ms | circular_conv2d / zero | F.pad circular / zero |")
    print("|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for model, c_in, c_out, grid, kernel, depthwise, channels_last in SHAPES:
        groups = c_in if depthwise else 1
        x = torch.randn(args.batch, c_in, grid, grid, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        weight = torch.randn(c_out, c_in // groups, kernel, kernel, device=device)
        calls = _calls(x, weight, kernel // 2, groups)
        times: dict[str, list[float]] = {key: [] for key in calls}
        with torch.no_grad():
            for call in calls.values():  # warm-up
                call()
            for _ in range(args.repeats):
                for key, call in calls.items():
                    times[key].append(timed(call, device))
        zero, ours, torch_pad = (statistics.median(times[key]) for key in ("zero", "ours", "torch"))
        layout = "NHWC" if channels_last else "NCHW"
        kind = "depthwise" if depthwise else "dense"
        print(
            f"| {model} | {layout} {c_in} x {grid} x {grid} | {kernel} x {kernel} {kind} | {zero:.2f} | "
            f"{ours / zero:.2f} | {torch_pad / zero:.2f} |"
        )


if __name__ == "__main__":
    main()
