"""Which code path a tensor takes: the CPU's (host reads are free) or the accelerator's (no host reads).

On the CPU, anchoring reads one flag back per anchor (whether any energy tie needs breaking) and
runs fused numba kernels; both are free or faster there. On an accelerator a host read waits for
the device, so the accelerator path decides everything on the device. Tests and
``benchmarks/count_launches.py`` run the accelerator path on CPU tensors with
:func:`accelerator_paths` (or ``EQUIVIT_ACCELERATOR_PATHS=1`` in the environment), so that the
kernel launches and host reads a GPU would pay can be counted without one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["accelerator_paths", "compiling", "host_paths", "takes_host_paths"]

_state: dict[str, bool] = {"accelerator": os.environ.get("EQUIVIT_ACCELERATOR_PATHS", "0") not in ("", "0")}


def compiling() -> bool:
    """Whether ``torch.compile`` or ``torch.export`` is tracing (never true in TorchScript)."""
    return torch.compiler.is_compiling()


def takes_host_paths(x: torch.Tensor) -> bool:
    """Whether ``x`` takes the CPU paths: a CPU tensor, not under :func:`accelerator_paths`."""
    return x.is_cpu and not _state["accelerator"]


def host_paths() -> bool:
    """Whether CPU tensors take the CPU paths now (false inside :func:`accelerator_paths`)."""
    return not _state["accelerator"]


@contextmanager
def accelerator_paths(on: bool = True) -> Iterator[None]:
    """Run the accelerator code paths on CPU tensors inside a ``with`` block.

    Every branch that a CUDA (or other accelerator) tensor takes is taken by CPU tensors too: no
    fused CPU kernels, no host reads, the always-on tie-break. The results are the same anchors
    (the paths choose identically); only the cost differs. Use it with
    :func:`equivit.testing.count_kernel_ops` to count what a forward pass would launch on a GPU.

    Args:
        on: Whether to take the accelerator paths (``False`` restores the CPU paths inside the block).
    """
    previous = _state["accelerator"]
    _state["accelerator"] = bool(on)
    try:
        yield
    finally:
        _state["accelerator"] = previous
