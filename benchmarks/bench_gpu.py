"""Stock timm against converted on a GPU: forward and training step, eager, compiled and CUDA graphs.

For each model, batch size and mode, stock and converted runs alternate (each first in every
other pair) and the table gives the median times, the ratio of converted to stock throughput
(1.0 = as fast as stock, higher is better) and the quartiles of the same ratio taken pair by
pair. Modes: ``eager``; ``compiled`` (``torch.compile``, default mode); ``reduce-overhead``
(``torch.compile`` with CUDA graphs, which removes the launch overhead that the extra anchoring
kernels add in eager mode). A training step is forward, cross-entropy and backward.

Compiling takes most of the time, so by default ``compiled`` runs at the larger batch and
``reduce-overhead`` at the smaller one; ``--budget-s`` skips the cells left when the time is
spent (they are listed as skipped). Writes a JSON file and a Markdown table.

    python benchmarks/bench_gpu.py [--device cuda] [--batches 8 64] [--models NAME ...] [--repeats 10]
        [--budget-s 270] [--json results.json] [--markdown results.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torch import nn

import equivit
from count_launches import MODELS  # the same eight models (this folder is on the path when run as a script)
from equivit.timing import timed


def make_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, train: bool) -> Callable[[], object]:
    """A forward pass without gradients (eval mode), or forward, cross-entropy and backward (train mode)."""
    if not train:

        def forward() -> object:
            with torch.no_grad():
                return model(images)

        return forward

    def step() -> object:
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        return loss

    return step


def measure(steps: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median milliseconds of both steps, interleaved, and the quartiles of the pairwise throughput ratio."""
    for step in steps.values():  # warm-up (compiles, records CUDA graphs, builds tables)
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {"stock": [], "converted": []}
    for repeat in range(repeats):
        order = ("stock", "converted") if repeat % 2 == 0 else ("converted", "stock")
        for key in order:
            times[key].append(timed(steps[key], device))
    pairs = [s / c for s, c in zip(times["stock"], times["converted"], strict=True)]
    low, _, high = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else (pairs[0],) * 3
    stock_ms, converted_ms = statistics.median(times["stock"]), statistics.median(times["converted"])
    return {
        "stock_ms": stock_ms,
        "converted_ms": converted_ms,
        "ratio": stock_ms / converted_ms,
        "ratio_q1": low,
        "ratio_q3": high,
    }


def prepare(model: nn.Module, mode: str, train: bool) -> nn.Module:
    """``model`` in the right train/eval state, compiled as ``mode`` asks."""
    model.train(train)
    if mode == "eager":
        return model
    return torch.compile(model, mode="reduce-overhead" if mode == "reduce-overhead" else None, dynamic=False)


def main() -> None:
    """Run the cells, print the table, write the JSON and Markdown files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 64])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled", "reduce-overhead"])
    parser.add_argument("--all-cells", action="store_true", help="compile every mode at every batch size")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=270.0, help="skip the cells left after this many seconds")
    parser.add_argument("--json", type=Path, default=Path("gpu_bench.json"))
    parser.add_argument("--markdown", type=Path, default=Path("gpu_bench.md"))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    started = time.perf_counter()
    header = (
        f"torch {torch.__version__}, timm {timm.__version__}, "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else device}, float32, 224 px, "
        f"median of {args.repeats} interleaved pairs"
    )
    cells = []
    for mode in args.modes:  # eager first: the cheap cells always run
        for batch in args.batches:
            if not args.all_cells and len(args.batches) > 1:
                if mode == "compiled" and batch != max(args.batches):
                    continue
                if mode == "reduce-overhead" and batch != min(args.batches):
                    continue
            for name in args.models:
                for train in (False, True):
                    cells.append((mode, batch, name, train))
    rows: list[dict[str, object]] = []
    lines = [
        header,
        "",
        "| model | mode | batch | step | stock ms | converted ms | throughput ratio | pairwise quartiles |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    print("\n".join(lines), flush=True)
    for mode, batch, name, train in cells:
        row: dict[str, object] = {"model": name, "mode": mode, "batch": batch, "step": "train" if train else "forward"}
        if time.perf_counter() - started > args.budget_s:
            row["skipped"] = "time budget spent"
        else:
            torch._dynamo.reset()
            stock = timm.create_model(name).to(device)
            converted = equivit.convert(timm.create_model(name)).to(device)
            converted.load_state_dict(stock.state_dict())
            images = torch.randn(batch, 3, 224, 224, device=device)
            labels = torch.randint(0, 1000, (batch,), device=device)
            steps = {
                key: make_step(prepare(model, mode, train), images, labels, train)
                for key, model in (("stock", stock), ("converted", converted))
            }
            try:
                row.update(measure(steps, device, args.repeats))
            except Exception as error:  # a failing cell is reported, the others still run
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            del stock, converted, steps
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        if "ratio" in row:
            line = (
                f"| {name} | {mode} | {batch} | {row['step']} | {row['stock_ms']:.2f} | {row['converted_ms']:.2f} "
                f"| {row['ratio']:.3f} | {row['ratio_q1']:.3f} to {row['ratio_q3']:.3f} |"
            )
        else:
            line = f"| {name} | {mode} | {batch} | {row['step']} | {row.get('skipped') or row.get('error')} | | | |"
        lines.append(line)
        print(line, flush=True)
    args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    args.markdown.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {args.json} and {args.markdown} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
