"""Building an anchored layer from the timm module it replaces, sharing its parameters."""

from __future__ import annotations

import copy
import types
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = ["parent_method", "retype", "take_over"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def take_over(new: ModuleT, old: nn.Module) -> ModuleT:
    """Give ``new`` (built on the meta device) the parameters, buffers and mode of ``old``.

    The parameters are ``old``'s own objects, not copies, so optimisers and in-place
    conversions keep working. timm's ``fused_attn`` switch is carried over where there is one.

    Args:
        new: A module with the same parameter names and shapes as ``old``.
        old: The module whose parameters ``new`` takes.

    Returns:
        ``new``.
    """
    new.load_state_dict(old.state_dict(keep_vars=True), assign=True)
    if hasattr(old, "fused_attn"):
        new.fused_attn = old.fused_attn
    new.train(old.training)
    return new


def retype(module: nn.Module, cls: type[ModuleT]) -> ModuleT:
    """A new ``cls`` (a subclass of ``type(module)``) that shares ``module``'s parameters and children.

    Used where a timm module's constructor arguments cannot all be read back from the module
    (Swin blocks and stages, PVT attention): the new module has the same attributes, its own
    parameter, buffer and child tables holding the same objects, and ``cls``'s methods. ``module``
    itself is left as it was.

    Args:
        module: The timm module.
        cls: The anchored subclass to give it.

    Returns:
        The new module.

    Raises:
        TypeError: If ``cls`` is not a subclass of ``type(module)``.
    """
    if not issubclass(cls, type(module)):
        raise TypeError(f"{cls.__name__} is not a subclass of {type(module).__name__}")
    new = cls.__new__(cls)
    # Own tables (parameters, buffers, children, hooks) holding the same objects.
    new.__dict__.update(
        {key: copy.copy(value) if isinstance(value, (dict, set)) else value for key, value in module.__dict__.items()}
    )
    return new


def parent_method(function: Callable[..., Any], name: str) -> Callable[..., Any]:
    """A parent class's method under another name, to be called as ``self.<name>(...)`` instead of ``super()``.

    TorchScript compiles neither ``super()`` nor ``Parent.method(self, ...)``, but it compiles a
    method that a class attribute refers to, under that function's name. An anchored layer that
    runs timm's computation after its own (``forward`` after anchoring) keeps timm's function as
    a class attribute made with this, so the same call works in eager mode, under
    ``torch.compile`` and in TorchScript. The function is the parent's own code (same code
    object, globals and defaults), only renamed, so that it does not clash with the method that
    calls it.

    Args:
        function: The parent class's function, for example ``BasicBlock.forward``.
        name: The attribute name it will have on the subclass.

    Returns:
        The renamed function.
    """
    renamed = types.FunctionType(
        function.__code__, function.__globals__, name, function.__defaults__, function.__closure__
    )
    renamed.__kwdefaults__ = function.__kwdefaults__
    renamed.__annotations__ = dict(function.__annotations__)
    renamed.__qualname__ = name
    renamed.__module__ = function.__module__
    renamed.__doc__ = function.__doc__
    return renamed
