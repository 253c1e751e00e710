"""Any residual block whose strided paths run side by side: its input anchored once for all of them."""

from __future__ import annotations

import copy
import importlib
import itertools
from typing import Any

from torch import nn

from equivit.layers.anchored_block import _AnchoredInput, _prepare
from equivit.layers.declare import equivariant_layer
from equivit.layers.sharing import parent_method
from equivit.polyphase import Energy

__all__ = ["anchored_residual"]


_CLASSES: dict[tuple[type[nn.Module], tuple[str, ...]], type[nn.Module]] = {}

_PREFIX = "_anchored__"


def _class_key(stock: type[nn.Module], anchored_children: tuple[str, ...]) -> str:
    """The module-level name of a generated class: the stock class's module and name, and the children.

    Pickle finds a class by its module and qualified name, so a generated class is also an
    attribute of this module under this name, and :func:`__getattr__` rebuilds it from the name in
    a process that has not made it yet (``torch.save(model)`` then ``torch.load`` elsewhere).
    """
    module = stock.__module__.replace(".", "_D_")
    return f"{_PREFIX}{module}__{stock.__qualname__}__{'__'.join(anchored_children)}"


def _anchored_class(stock: type[nn.Module], anchored_children: tuple[str, ...]) -> type[nn.Module]:
    """The class ``Anchored<Stock>``: a subclass of the stock block that anchors first (one per block type)."""
    key = (stock, anchored_children)
    if key not in _CLASSES:
        cls = type(
            f"Anchored{stock.__name__}",
            (_AnchoredInput, stock),
            {
                "__module__": __name__,
                "__doc__": f"{stock.__name__} (from {stock.__module__}) run on its input anchored once, for "
                f"{', '.join(anchored_children)}; made by equivit.layers.anchored_residual.",
                "_stock_forward": parent_method(stock.forward, "_stock_forward"),
            },
        )
        cls.__qualname__ = _class_key(stock, anchored_children)
        globals()[cls.__qualname__] = cls
        _CLASSES[key] = equivariant_layer(period="stride", anchored_children=anchored_children)(cls)
    return _CLASSES[key]


def __getattr__(name: str) -> type[nn.Module]:
    """Rebuild a generated class from its module-level name (for unpickling in a new process)."""
    if not name.startswith(_PREFIX):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, qualname, *children = name[len(_PREFIX) :].split("__")
    stock = importlib.import_module(module.replace("_D_", "."))
    for part in qualname.split("."):
        stock = getattr(stock, part)
    return _anchored_class(stock, tuple(children))  # type: ignore[arg-type]


def anchored_residual(
    block: nn.Module, stride: int, anchored_children: tuple[str, ...], *, energy: Energy = "l1"
) -> nn.Module:
    """Anchor a residual block whose strided operators sit in parallel paths (main path and shortcut).

    A block whose main path and shortcut both downsample must sample the same phase of its input in
    both, or their sum is misaligned. The returned block is of a subclass of ``type(block)``
    (``Anchored<Block>``, one per block type) that rolls its input to the polyphase anchor (period
    = ``stride``) once and then runs the stock ``forward`` on it; its convolutions pad circularly.
    It holds new module objects with ``block``'s own parameters and buffers (state-dict keys
    unchanged), and ``block`` is left as it was. :class:`AnchoredBasicBlock` and
    :class:`AnchoredBottleneck` are the hand-written ones for ResNet.

    Args:
        block: The stock block.
        stride: Its stride, the anchoring period.
        anchored_children: Names of the children that hold its strided operators (every strided
            operator must sit in one, with this stride, and map ``H x W`` to ``H/s x W/s``).
        energy: Energy that picks the anchor.

    Returns:
        The anchored block.

    Raises:
        ValueError: If a strided operator sits outside ``anchored_children``, has another
            stride or changes the grid, or a convolution cannot be made circular.

    Shape:
        - input: :math:`(B, C_{in}, H, W)`, ``H`` and ``W`` multiples of ``stride``
        - output: :math:`(B, C_{out}, H / s, W / s)`
    """
    cls = _anchored_class(type(block), tuple(anchored_children))
    shared: dict[int, Any] = {id(t): t for t in itertools.chain(block.parameters(), block.buffers())}
    new = copy.deepcopy(block, memo=shared)  # new modules, the same tensors
    new.__class__ = cls
    new.energy = energy
    new.anchor_period = int(stride)
    new.block_name = cls.__name__
    _prepare(new, int(stride), tuple(anchored_children), energy)
    return new
