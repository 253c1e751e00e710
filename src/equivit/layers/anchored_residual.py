"""Any residual block whose strided paths run side by side: its input anchored once for all of them."""

from __future__ import annotations

import copy
import importlib
import itertools
from typing import Any

from torch import nn

from equivit.energy import Energy
from equivit.layers.anchored_block import _AnchoredInput, _prepare
from equivit.layers.declare import equivariant_layer
from equivit.layers.sharing import parent_method

__all__ = ["anchored_entry", "anchored_residual"]


_CLASSES: dict[tuple[type[nn.Module], tuple[str, ...]], type[nn.Module]] = {}

_PREFIX = "_anchored__"

# The children of an entry module (:func:`anchored_entry`): it anchors the network input, not a block's.
_ENTRY = ("network_input",)


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
    key = (stock, tuple(anchored_children))
    if key not in _CLASSES:
        entry = anchored_children == _ENTRY
        cls = type(
            f"Anchored{stock.__name__}",
            (_AnchoredInput, stock),
            {
                "__module__": __name__,
                "__doc__": (
                    f"{stock.__name__} (from {stock.__module__}) run on the network input anchored once; made by "
                    "equivit.layers.anchored_entry."
                    if entry
                    else f"{stock.__name__} (from {stock.__module__}) run on its input anchored once, for "
                    f"{', '.join(anchored_children)}; made by equivit.layers.anchored_residual."
                ),
                "_stock_forward": parent_method(stock.forward, "_stock_forward"),
                **({"__getitem__": _sliced_entry} if entry and issubclass(stock, nn.Sequential) else {}),
            },
        )
        cls.__qualname__ = _class_key(stock, anchored_children)
        globals()[cls.__qualname__] = cls
        declare = equivariant_layer(period="network", anchored_children=()) if entry else None
        declare = declare or equivariant_layer(period="stride", anchored_children=anchored_children)
        _CLASSES[key] = declare(cls)
    return _CLASSES[key]


def _sliced_entry(self: nn.Sequential, index: int | slice) -> nn.Module:
    """``stem[index]`` of an anchored sequential entry (timm's ``forward_intermediates`` slices stems).

    A slice that starts at the first module receives the images, so it keeps the input anchor; a
    slice that starts later runs on the anchored map and is the stock container; one module is
    itself, as for ``nn.Sequential``.
    """
    item = nn.Sequential.__getitem__(self, index)
    if isinstance(index, slice) and isinstance(item, _AnchoredInput):
        if index.indices(len(self))[0] == 0:
            item.energy, item.anchor_period, item.block_name = self.energy, self.anchor_period, self.block_name
        else:
            item.__class__ = type(self).__bases__[1]
    return item


def __getattr__(name: str) -> type[nn.Module]:
    """Rebuild a generated class from its module-level name (for unpickling in a new process)."""
    if not name.startswith(_PREFIX):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, qualname, *children = name[len(_PREFIX) :].split("__")
    stock = importlib.import_module(module.replace("_D_", "."))
    for part in qualname.split("."):
        stock = getattr(stock, part)
    return _anchored_class(stock, tuple(children))  # type: ignore[arg-type]


def _copy_as(module: nn.Module, cls: type[nn.Module], period: int, energy: str) -> nn.Module:
    """New module objects of class ``cls`` holding ``module``'s own parameters and buffers, with the anchor settings."""
    shared: dict[int, Any] = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    new = copy.deepcopy(module, memo=shared)  # new modules, the same tensors
    new.__class__ = cls
    new.energy = energy
    new.anchor_period = period
    new.block_name = cls.__name__
    return new


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
    new = _copy_as(block, _anchored_class(type(block), tuple(anchored_children)), int(stride), energy)
    _prepare(new, int(stride), tuple(anchored_children), energy)
    return new


def anchored_entry(module: nn.Module, period: int, *, energy: Energy = "l1") -> nn.Module:
    """Anchor a network's input once, in the module that receives the images (its stem).

    In a network whose branches meet at different resolutions (HRNet's fusions, DLA's trees, the
    dense connections of DenseNet and DPN, CSPNet's split stages), anchoring each strided operator
    alone lets parallel paths pick different phases. Rolling the network input to its polyphase
    anchor with ``period`` = the network's total stride fixes this: after it, a circular shift of
    the image reaches the network as a shift by a multiple of ``period``, which every later grid
    (of reduction ``r`` dividing ``period``) sees as a whole-cell shift by ``shift / r``, so
    circular padding keeps every path exact and aligned, and every anchored layer inside picks
    the same phase as before the shift.

    The returned module is of a subclass of ``type(module)`` (``Anchored<Stem>``, one per type)
    that anchors its input then runs the stock ``forward``; it holds new module objects with
    ``module``'s own parameters and buffers (state-dict keys unchanged); ``module`` is left as it
    was. Convert the layers inside ``module`` (circular padding, anchored strided layers) first.

    Args:
        module: The stock entry module (already converted inside).
        period: The network's total stride (the least common multiple of its reductions).
        energy: Energy that picks the anchor.

    Returns:
        The anchored entry module.

    Raises:
        ValueError: If ``period`` is not a positive int or ``energy`` is unknown.

    Shape:
        - input: :math:`(B, C, H, W)`, ``H`` and ``W`` multiples of ``period``
        - output: that of ``module``
    """
    if not isinstance(period, int) or isinstance(period, bool) or period < 1:
        raise ValueError(f"anchored_entry needs a positive int period, got {period!r}")
    if energy not in ("l1", "l2"):
        raise ValueError(f"energy must be 'l1' or 'l2', got {energy!r}")
    if isinstance(module, _AnchoredInput):
        raise ValueError(f"{type(module).__name__} already anchors its input; anchor the network input before it")
    return _copy_as(module, _anchored_class(type(module), _ENTRY), period, energy)
