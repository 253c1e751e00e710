"""Equivariant layers declare themselves: what they anchor on, and how FX and the audit treat them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal, TypeVar

from timm.layers import register_notrace_module
from torch import nn

__all__ = ["LayerDeclaration", "declared_layers", "equivariant_layer"]

LayerT = TypeVar("LayerT", bound=type[nn.Module])

FxRole = Literal["leaf", "traced"]


@dataclasses.dataclass(frozen=True)
class LayerDeclaration:
    """What an equivariant layer declares about itself.

    Attributes:
        layer: The layer class.
        period: What sets its anchoring period (``"stride"``, ``"window"``, ``"grid"``), or ``""``
            for a layer that needs no anchor (a circular convolution).
        anchored_children: Children it runs on its anchored input; the equivariance audit treats
            them, and everything inside them, as covered.
        fx: ``"leaf"``: ``torch.fx`` (and timm's feature extraction) records it as one node, as its
            forward depends on the data; ``"traced"``: FX traces through its forward, which calls
            only leaves and equivit's no-trace functions.
    """

    layer: type[nn.Module]
    period: str
    anchored_children: tuple[str, ...]
    fx: FxRole


_DECLARED: dict[type[nn.Module], LayerDeclaration] = {}


def equivariant_layer(
    *, period: str, anchored_children: tuple[str, ...] = (), fx: FxRole = "leaf"
) -> Callable[[LayerT], LayerT]:
    """Class decorator: declare a module class exactly shift-equivariant, as equivit's layers do.

    The declared class is accepted by :func:`equivit.audit.equivariance_violations` (with its
    ``anchored_children``), and a ``"leaf"`` is registered with timm's FX registry, so that no list
    has to be edited when a layer is added. ``anchored_children`` is also set as the class
    attribute ``equivit_anchored_children``.

    Args:
        period: What sets the anchoring period (``"stride"``, ``"window"``, ``"grid"``; ``""`` if none).
        anchored_children: Names of the children that run on the anchored input.
        fx: ``"leaf"`` or ``"traced"`` (see :class:`LayerDeclaration`).

    Returns:
        The decorator; it returns the class unchanged apart from ``equivit_anchored_children``.

    Raises:
        ValueError: If ``fx`` is not ``"leaf"`` or ``"traced"``.

    Examples:
        >>> @equivariant_layer(period="")
        ... class Twice(nn.Module):
        ...     def forward(self, x):
        ...         return 2 * x
        >>> Twice in {declaration.layer for declaration in declared_layers()}
        True
    """
    if fx not in ("leaf", "traced"):
        raise ValueError(f"fx must be 'leaf' or 'traced', got {fx!r}")

    def declare(cls: LayerT) -> LayerT:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"equivariant_layer declares nn.Module classes, got {cls!r}")
        cls.equivit_anchored_children = tuple(anchored_children)  # type: ignore[attr-defined]
        _DECLARED[cls] = LayerDeclaration(cls, period, tuple(anchored_children), fx)
        if fx == "leaf":
            register_notrace_module(cls)
        return cls

    return declare


def declared_layers() -> tuple[LayerDeclaration, ...]:
    """Every layer declared with :func:`equivariant_layer`, in declaration order.

    Returns:
        The declarations.
    """
    return tuple(_DECLARED.values())
