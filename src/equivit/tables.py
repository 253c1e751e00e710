"""Index and weight tables that depend only on shapes, built once per device in eager mode.

An accelerator pays a kernel launch for every small tensor built in a forward pass (an
``arange``, a ``remainder``), so the tables that anchoring indexes with (roll indices per phase,
tie-break weights) are built once per shape and device and reused. Under ``torch.compile``,
``torch.export`` and tracing they are built inside the graph instead, where the compiler folds
them into constants or fuses them into the kernels that use them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["cached_table", "clear_tables"]

_TABLES: dict[tuple[object, ...], torch.Tensor] = {}


def cached_table(key: tuple[object, ...], device: torch.device, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The table ``build()`` for ``key`` on ``device``: built on first use, then reused (eager mode).

    Args:
        key: What the table depends on besides the device (a kind and the sizes).
        device: Where the table lives.
        build: Builds the table on ``device``.

    Returns:
        The table. Callers must not modify it.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return build()
    full_key = (*key, str(device))
    table = _TABLES.get(full_key)
    if table is None:
        table = build()
        _TABLES[full_key] = table
    return table


def clear_tables() -> None:
    """Drop every cached table (they are rebuilt on next use)."""
    _TABLES.clear()
