"""Time ``polyphase_anchor`` against ``x.clone()`` of the same tensor, in the same run.

A clone reads and writes the tensor once: the least any op that returns a new rolled tensor can
cost. The ratio anchor / clone is printed as a Markdown table (median of ``--repeats`` runs,
interleaved so that both see the same machine state).

    python benchmarks/bench_anchor.py [--device cuda] [--repeats 15] [--reuse-memory] [--plain]

On the CPU with numba installed, anchoring runs the fused kernels of ``equivit.fused``;
``--plain`` times the plain tensor ops instead (what runs without numba).

On Linux, glibc serves large allocations (above a threshold that grows to at most 32 MB) with
fresh pages from the kernel, and touching them can cost as much as the copy itself: the larger
inputs below then time page faults as much as memory traffic, in the clone and the anchor alike.
``--reuse-memory`` restarts the benchmark with glibc's ``mmap`` allocations turned off
(``MALLOC_MMAP_MAX_=0``), so that freed memory is reused as a caching allocator would, and the
ratio measures the work of the two ops.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys

import torch

import equivit
from equivit.timing import timed

# (shape, stride, channels_last): images and feature maps (B, C, H, W), then Twins-like token maps (B, H, W, C).
CASES: list[tuple[tuple[int, int, int, int], int, bool]] = [
    ((64, 3, 224, 224), 16, False),
    ((64, 64, 56, 56), 7, False),
    *[((64, 3, 224, 224), stride, False) for stride in (2, 4, 8)],
    ((64, 3, 224, 224), 14, False),
    ((64, 56, 56, 64), 7, True),
    ((64, 28, 28, 128), 4, True),
]

# glibc's switch that turns off mmap for large allocations, and its value.
REUSE_MEMORY = ("MALLOC_MMAP_MAX_", "0")


def measure(
    shape: tuple[int, int, int, int],
    stride: int,
    channels_last: bool,
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
) -> tuple[float, float]:
    """Median milliseconds of clone and of polyphase_anchor, interleaved."""
    x = torch.randn(shape, device=device, dtype=dtype)

    def anchor() -> object:
        return equivit.polyphase_anchor(x, stride, channels_last=channels_last)

    clone_times, anchor_times = [], []
    for _ in range(3):  # warm-up
        x.clone()
        anchor()
    for _ in range(repeats):
        clone_times.append(timed(x.clone, device))
        anchor_times.append(timed(anchor, device))
    return statistics.median(clone_times), statistics.median(anchor_times)


def main() -> None:
    """Print the table."""
    with contextlib.ExitStack() as stack:
        _main(stack)


def _main(stack: contextlib.ExitStack) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--reuse-memory", action="store_true", help="restart with glibc's mmap allocations off (Linux, CPU)"
    )
    parser.add_argument("--plain", action="store_true", help="turn the fused CPU kernels off (plain tensor ops)")
    args = parser.parse_args()
    if args.reuse_memory and os.environ.get(REUSE_MEMORY[0]) != REUSE_MEMORY[1]:
        environment = {**os.environ, REUSE_MEMORY[0]: REUSE_MEMORY[1], "MALLOC_TRIM_THRESHOLD_": str(2**36)}
        os.execve(sys.executable, [sys.executable, *sys.argv], environment)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    allocator = "glibc mmap off (memory reused)" if os.environ.get(REUSE_MEMORY[0]) == REUSE_MEMORY[1] else "default"
    if args.plain and equivit.fused.available():
        stack.enter_context(equivit.fused.use_fused_kernels(False))
    kernels = "fused (numba)" if equivit.fused.enabled() and device.type == "cpu" else "plain tensor ops"
    print(
        f"device: {device.type} ({name}); torch {torch.__version__}; dtype {args.dtype}; median of {args.repeats}; "
        f"allocator: {allocator}; anchoring: {kernels}"
    )
    print()
    print("| input | layout | stride | clone ms | anchor ms | anchor / clone |")
    print("|---|---|---|---|---|---|")
    for shape, stride, channels_last in CASES:
        clone_ms, anchor_ms = measure(shape, stride, channels_last, device, dtype, args.repeats)
        layout = "(B, H, W, C)" if channels_last else "(B, C, H, W)"
        print(
            f"| {shape} | {layout} | {stride} | {clone_ms:.2f} | {anchor_ms:.2f} | {anchor_ms / clone_ms:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
