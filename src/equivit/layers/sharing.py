"""Building an anchored layer from the timm module it replaces, sharing its parameters."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

__all__ = ["take_over"]

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
