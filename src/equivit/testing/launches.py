"""Count the kernel launches and host reads of a piece of code, on any device, without a profiler.

A GPU pays for every kernel launch and every read of a device value on the host (a sync that
drains the device's queue). Both can be counted on the CPU: a ``TorchDispatchMode`` sees every
aten operator that runs. Views (``view``, ``permute``, ``expand``, ...) and bare allocations
(``empty``) launch nothing and are not counted; every other operator is one kernel launch (a
close upper bound: a few operators launch two kernels on CUDA, and on-device memory copies
count as kernels too). ``aten._local_scalar_dense`` (``.item()``, ``bool(tensor)``,
``int(tensor)``) and operators whose output size depends on the data (``nonzero``,
``masked_select``, ``unique``) are host reads. Tensors built from Python data during the run
(``aten.lift_fresh``: ``torch.tensor([...])``) are host copies: on a GPU each is a copy from
pageable host memory, which waits for the device as a host read does. Together with
:func:`equivit.device_paths.accelerator_paths` this counts what a forward pass would cost on a
GPU, on a machine without one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HOST_READ_OPS", "KernelOpCount", "KernelOpCounter", "count_kernel_ops"]

# Operators that read a device value back to the host (or size their output by the data).
HOST_READ_OPS: frozenset[str] = frozenset(
    {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive", "equal"}
)
# Operators that allocate or relabel memory without launching a kernel (``_unsafe_view`` is a view
# that autograd does not track as one).
_FREE_OPS: frozenset[str] = frozenset(
    {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided"}
    | {"detach", "alias", "lift_fresh", "_unsafe_view"}
)


@dataclass
class KernelOpCount:
    """What a piece of code ran: kernel launches and host reads, with a count per operator.

    Attributes:
        ops: Operators that launch a kernel (everything but views and bare allocations).
        host_reads: Operators that read a device value on the host (syncs on an accelerator).
        host_copies: Tensors built from Python data (copies from the host, which also wait on an accelerator).
        by_op: Count per operator name (kernel operators and host reads).
    """

    ops: int = 0
    host_reads: int = 0
    host_copies: int = 0
    by_op: Counter[str] = field(default_factory=Counter)

    def top(self, count: int = 10) -> list[tuple[str, int]]:
        """The ``count`` most frequent operators."""
        return self.by_op.most_common(count)


class KernelOpCounter(TorchDispatchMode):
    """A dispatch mode that counts kernel launches and host reads into :attr:`count`.

    Examples:
        >>> with KernelOpCounter() as counter:
        ...     _ = torch.randn(4, 4).abs().sum()
        >>> counter.count.ops
        3
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = KernelOpCount()

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        """Count ``func`` (unless it is a view or an allocation), then run it."""
        name = func.overloadpacket.__name__
        if name == "lift_fresh":
            self.count.host_copies += 1
        if name in HOST_READ_OPS:
            self.count.host_reads += 1
            self.count.by_op[name] += 1
        if not func.is_view and name not in _FREE_OPS and name != "_local_scalar_dense":
            self.count.ops += 1
            self.count.by_op[name] += 1
        return func(*args, **(kwargs or {}))


def count_kernel_ops(function: Callable[..., object], *args: object, **kwargs: object) -> KernelOpCount:
    """Run ``function(*args, **kwargs)`` once and count its kernel launches and host reads.

    Args:
        function: What to run (a model, a forward-and-backward step, one layer).
        *args: Its positional arguments.
        **kwargs: Its keyword arguments.

    Returns:
        The counts. Run it inside :func:`equivit.testing.accelerator_paths` to count the paths a
        GPU tensor takes.

    Examples:
        >>> count_kernel_ops(torch.add, torch.ones(2), torch.ones(2)).ops
        1
    """
    with KernelOpCounter() as counter:
        function(*args, **kwargs)
    return counter.count
