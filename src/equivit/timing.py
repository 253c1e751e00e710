"""Wall-clock timing shared by ``equivit check`` and the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["timed"]


def timed(function: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call in milliseconds (synchronising CUDA before and after).

    Args:
        function: What to time.
        device: The device it runs on.

    Returns:
        Milliseconds.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3
