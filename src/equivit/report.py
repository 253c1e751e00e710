"""What a conversion changed, and the input-size check it installs."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

__all__ = ["ConversionReport", "InputSizeCheck", "Replacement", "UnsupportedModelError"]


class UnsupportedModelError(TypeError):
    """A model, or a module inside it, that equivit cannot make shift-equivariant."""


@dataclasses.dataclass(frozen=True)
class Replacement:
    """One change made by :func:`equivit.convert`.

    Attributes:
        name: Qualified name of the module or parameter (``""`` for the model itself).
        before: What was there.
        after: What is there now.
    """

    name: str
    before: str
    after: str


@dataclasses.dataclass
class ConversionReport:
    """What :func:`equivit.convert` did to a model; kept on it as ``model.equivit_report``.

    Attributes:
        family: The model family: ``"vit"``, ``"twins"``, ``"swin"``, ``"pvt_v2"``, ``"resnet"`` or
            ``"convnext"``.
        input_multiple: ``(H, W)``: input sizes must be multiples of this (the product of the
            strides and windows on the model's path).
        replacements: Every module or parameter changed, in order.
        new_parameters: Names of parameters that the stock model does not have (they cannot come
            from a stock checkpoint; see :func:`equivit.convert_state_dict`).
        folded_prefix: Prefix tokens that absorbed their part of the absolute position embedding.
    """

    family: str
    input_multiple: tuple[int, int]
    replacements: list[Replacement] = dataclasses.field(default_factory=list)
    new_parameters: list[str] = dataclasses.field(default_factory=list)
    folded_prefix: list[str] = dataclasses.field(default_factory=list)

    def add(self, name: str, before: str, after: str) -> None:
        """Record one change.

        Args:
            name: Qualified name.
            before: What was there.
            after: What is there now.
        """
        self.replacements.append(Replacement(name, before, after))

    def __str__(self) -> str:
        """A readable table of the changes."""
        width = max([len(r.name) for r in self.replacements] + [6])
        lines = [
            f"equivit: converted a {self.family} model; inputs must be multiples of "
            f"{self.input_multiple[0]} x {self.input_multiple[1]} pixels",
            f"  {'module':<{width}}  change",
        ]
        lines += [f"  {r.name or '(model)':<{width}}  {r.before} -> {r.after}" for r in self.replacements]
        if self.new_parameters:
            lines.append(f"  new parameters (not in a stock checkpoint): {', '.join(self.new_parameters)}")
        return "\n".join(lines)


def lcm_pair(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """Per-axis least common multiple.

    Args:
        a: A pair.
        b: A pair.

    Returns:
        ``(lcm(a[0], b[0]), lcm(a[1], b[1]))``.
    """
    return math.lcm(a[0], b[0]), math.lcm(a[1], b[1])


class InputSizeCheck:
    """Forward pre-hook that rejects images whose size is not a multiple of the model's period.

    Without it the error would come from deep inside the model, naming an internal token grid.

    Args:
        multiple: ``(H, W)`` the image size must be a multiple of.
        model_name: Name used in the message.
    """

    def __init__(self, multiple: tuple[int, int], model_name: str) -> None:
        self.multiple = multiple
        self.model_name = model_name

    def __call__(self, module: nn.Module, args: tuple[object, ...]) -> None:
        """Check the first positional argument.

        Args:
            module: The model (unused).
            args: Positional arguments of ``forward``.

        Raises:
            ValueError: If the image size is not a positive multiple of ``multiple``.
        """
        if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() != 4:
            return
        height, width = args[0].shape[-2:]
        mh, mw = self.multiple
        if height % mh or width % mw or height == 0 or width == 0:
            raise ValueError(
                f"input size H x W = {height} x {width} is not a multiple of {mh} x {mw}, which the converted "
                f"{self.model_name} needs (the product of the strides and windows on its path); resize or crop "
                f"the images to a multiple, for example {max(mh, mh * round(height / mh))} x "
                f"{max(mw, mw * round(width / mw))} (padding would break shift equivariance)"
            )
