"""What a conversion changed, and the input check it installs at the model's entry."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

__all__ = [
    "ConversionReport",
    "InputSizeCheck",
    "Replacement",
    "UnsupportedModelError",
    "check_images",
    "entry_path",
    "install_input_check",
    "nearest_multiple",
]


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
        family: The name of the model's family in :mod:`equivit.registry` (``"vit"``, ``"swin"``,
            ``"resnet"``, ``"efficientnet"``, ...).
        input_multiple: ``(H, W)``: input sizes must be multiples of this (every stride and
            window on the model's path must divide the grid it sees).
        replacements: Every module or parameter changed, in order.
        new_parameters: Names of parameters that the stock model does not have (they cannot come
            from a stock checkpoint; see :func:`equivit.convert_state_dict`).
        folded_prefix: Prefix tokens that absorbed their part of the absolute position embedding.
        in_channels: Image channels the model takes (those of its stem convolution), or None if unknown.
        empty_batch_ok: Whether the converted model maps an empty batch to an empty output; None
            for its family's answer (:attr:`equivit.registry.Family.empty_batch_ok`), set where a
            model of the family differs (ResNeSt's split attention cannot reshape an empty batch).
        input_period: The period of the anchor on the network input (networks whose branches meet,
            :func:`equivit.cnn_policy.convert_network`), or None. A feature map of reduction ``r``
            of such a model moves by exactly ``shift / r`` for shifts by multiples of it, and by
            some whole number of cells for any other shift.
    """

    family: str
    input_multiple: tuple[int, int]
    replacements: list[Replacement] = dataclasses.field(default_factory=list)
    new_parameters: list[str] = dataclasses.field(default_factory=list)
    folded_prefix: list[str] = dataclasses.field(default_factory=list)
    in_channels: int | None = None
    empty_batch_ok: bool | None = None
    input_period: int | None = None

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


def shape_text(shape: list[int]) -> str:
    """A shape as Python prints a tuple, ``(2, 3, 32, 32)``, also in TorchScript (where shapes are lists).

    Args:
        shape: The sizes.

    Returns:
        The text.
    """
    parts: list[str] = []
    for size in shape:
        parts.append(str(int(size)))  # int(): a symbolic size under torch.compile prints as a number
    return "(" + ", ".join(parts) + (",)" if len(parts) == 1 else ")")


def dtype_name(dtype: torch.dtype) -> str:
    """A dtype as Python prints it, ``torch.uint8``, also in TorchScript (where a dtype prints as a number).

    Args:
        dtype: The dtype.

    Returns:
        The text.
    """
    if not torch.jit.is_scripting():
        return str(dtype)
    names = [
        (torch.uint8, "torch.uint8"), (torch.int8, "torch.int8"), (torch.int16, "torch.int16"),
        (torch.int32, "torch.int32"), (torch.int64, "torch.int64"), (torch.bool, "torch.bool"),
        (torch.float16, "torch.float16"), (torch.bfloat16, "torch.bfloat16"), (torch.float32, "torch.float32"),
        (torch.float64, "torch.float64"), (torch.complex64, "torch.complex64"), (torch.complex128, "torch.complex128"),
    ]  # fmt: skip
    for known, name in names:
        if dtype == known:
            return name
    return "dtype " + str(dtype)


def nearest_multiple(size: int, multiple: int) -> int:
    """The positive multiple of ``multiple`` nearest to ``size`` (ties to the even quotient, as ``round``)."""
    quotient, remainder = size // multiple, size % multiple
    if 2 * remainder > multiple or (2 * remainder == multiple and quotient % 2 == 1):
        quotient += 1
    return max(multiple, multiple * quotient)


def check_images(
    x: torch.Tensor, multiple: tuple[int, int], channels: int, model_name: str, empty_ok: bool = True
) -> None:
    """Raise a clear error if ``x`` is not a batch of images the converted model can take.

    Checks, in order: 4 dimensions, floating point, ``channels`` channels (unless ``channels`` is
    0: unknown), ``H`` and ``W`` positive multiples of ``multiple``, and, unless ``empty_ok``, at
    least one image (the token models reshape with an inferred size, which an empty batch leaves
    undefined; the CNNs return an empty output).
    Only shapes and the dtype are read, never values, so the check costs nothing, keeps
    ``torch.compile`` free of graph breaks and scripts with TorchScript. NaN and infinite values
    are not errors: they propagate to the output.

    Args:
        x: The input of the model.
        multiple: ``(H, W)`` the image size must be a multiple of.
        channels: Image channels, 0 if unknown.
        model_name: Name used in the messages.
        empty_ok: Whether the model can run on an empty batch.

    Raises:
        ValueError: Naming the shape or dtype received, what was expected and what to do.

    Shape:
        - x: :math:`(B, C, H, W)`
    """
    mh, mw = multiple
    # The shape is formatted only on the error paths: under torch.compile with dynamic shapes
    # its sizes are symbolic, and formatting them would break the graph.
    expected = f"(B, {channels}, H, W)" if channels > 0 else "(B, C, H, W)"
    if x.dim() != 4:
        hint = "for a single image, add the batch dimension: x.unsqueeze(0)"
        if x.dim() != 3:
            hint = "reshape the input to (batch, channels, height, width)"
        raise ValueError(
            f"the converted {model_name} expects images as a 4-D tensor {expected}, got a {x.dim()}-D tensor of "
            f"shape {shape_text(list(x.shape))}; {hint}"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"the converted {model_name} expects floating-point images, got dtype {dtype_name(x.dtype)} "
            f"(shape {shape_text(list(x.shape))}); convert them first, for example x.float() / 255 for 8-bit images, "
            "then normalise as for training"
        )
    if channels > 0 and x.shape[1] != channels:
        raise ValueError(
            f"the converted {model_name} expects {channels} image channels {expected}, got {x.shape[1]} in "
            f"shape {shape_text(list(x.shape))}; give images with {channels} channels (for example "
            f"x.expand(-1, {channels}, -1, -1) for single-channel images), or create the model with "
            f"in_chans={x.shape[1]}"
        )
    height, width = x.shape[2], x.shape[3]
    if height % mh != 0 or width % mw != 0 or height == 0 or width == 0:
        raise ValueError(
            f"input size H x W = {height} x {width} is not a multiple of {mh} x {mw}, which the converted "
            f"{model_name} needs (every stride and window on its path must divide the grid it sees; got shape "
            f"{shape_text(list(x.shape))}); resize or crop the images to a multiple, for example "
            f"{nearest_multiple(height, mh)} x "
            f"{nearest_multiple(width, mw)} (padding would break shift equivariance)"
        )
    if not empty_ok and x.shape[0] == 0:
        raise ValueError(
            f"the converted {model_name} cannot run on an empty batch (shape {shape_text(list(x.shape))}): its "
            "token reshapes need at least one image; skip the call when x.shape[0] == 0 and use an empty result instead"
        )


def _entry_check(module: nn.Module, args: tuple[torch.Tensor]) -> None:
    """Forward pre-hook of the model's entry module: :func:`check_images` with the settings stored on it.

    A plain function with typed arguments, so that TorchScript compiles it with the module. An
    argument that is not a tensor (an FX proxy while tracing) is let through.
    """
    x = args[0]
    if isinstance(x, torch.Tensor):
        check_images(
            x,
            module.equivit_input_multiple,
            module.equivit_in_channels,
            module.equivit_model_name,
            module.equivit_empty_batch_ok,
        )


def _empty_batch_ok(report: ConversionReport) -> bool:
    """Whether the converted model maps an empty batch to an empty output (the report's, else its family's)."""
    from equivit.registry import family_named

    if report.empty_batch_ok is not None:
        return report.empty_batch_ok
    return family_named(report.family).empty_batch_ok


def entry_path(model: nn.Module, entry: str | tuple[str, ...]) -> str:
    """The path of the module that receives the images: ``entry``, or the first module of timm's flattened wrappers.

    Args:
        model: A model, or timm's ``features_only`` wrapper of one.
        entry: The family's entry path in the model (:attr:`equivit.registry.Family.entry`), or
            several, the first one the model has being used (a family of two model classes).

    Returns:
        The path in ``model``.
    """
    from timm.models._features import FeatureDictNet, FeatureGetterNet, FeatureHookNet

    if isinstance(model, FeatureDictNet | FeatureHookNet):  # and FeatureListNet: runs its modules in order
        return next(iter(model.keys()))
    prefix = "model." if isinstance(model, FeatureGetterNet) else ""
    paths = (entry,) if isinstance(entry, str) else entry
    for path in paths:
        try:
            model.get_submodule(prefix + path)
        except AttributeError:
            continue
        return prefix + path
    return prefix + paths[0]


def _entry_module(model: nn.Module, family: str) -> nn.Module:
    """The first module that receives the images (where the check is installed)."""
    from equivit.registry import family_named

    return model.get_submodule(entry_path(model, family_named(family).entry))


def install_input_check(model: nn.Module, report: ConversionReport, model_name: str) -> nn.Module:
    """Check every input of ``model`` at its entry (stem) module, with :func:`check_images`.

    The check is a forward pre-hook on the first module that receives the images (the patch
    embedding or the stem), with its settings stored on that module as ``equivit_input_multiple``,
    ``equivit_in_channels``, ``equivit_model_name`` and ``equivit_empty_batch_ok``. A hook on the
    model itself could not be compiled by TorchScript, whose hooks must match the signature of
    ``forward`` (which differs between families); the entry module's ``forward`` takes the images
    alone.

    Args:
        model: The converted model (or timm's ``features_only`` wrapper of one).
        report: Its conversion report (``input_multiple``, ``family``); its ``in_channels`` is set
            from the entry module's first convolution if it is None.
        model_name: Name used in the messages.

    Returns:
        The entry module.
    """
    entry = _entry_module(model, report.family)
    if report.in_channels is None:
        report.in_channels = next((m.in_channels for m in entry.modules() if isinstance(m, nn.Conv2d)), None)
    entry.equivit_input_multiple = (int(report.input_multiple[0]), int(report.input_multiple[1]))
    entry.equivit_in_channels = int(report.in_channels or 0)
    entry.equivit_model_name = model_name
    entry.equivit_empty_batch_ok = _empty_batch_ok(report)
    if _entry_check not in entry._forward_pre_hooks.values():
        entry.register_forward_pre_hook(_entry_check)
    return entry


class InputSizeCheck:
    """A forward pre-hook for a whole model: :func:`check_images` with fixed settings.

    :func:`equivit.convert` checks inputs at the model's entry module instead (see
    :func:`install_input_check`); this hook is for wrappers that do not call that module through
    its hooks, such as an FX graph module traced from a converted model.

    Args:
        multiple: ``(H, W)`` the image size must be a multiple of.
        model_name: Name used in the messages.
        in_channels: Image channels, 0 or None if unknown.
        empty_ok: Whether the model can run on an empty batch.
    """

    def __init__(
        self, multiple: tuple[int, int], model_name: str, in_channels: int | None = None, empty_ok: bool = True
    ) -> None:
        self.multiple = multiple
        self.model_name = model_name
        self.in_channels = in_channels
        self.empty_ok = empty_ok

    @classmethod
    def from_report(cls, report: ConversionReport, model_name: str) -> InputSizeCheck:
        """The check of a converted model, from its report.

        Args:
            report: ``model.equivit_report``.
            model_name: Name used in the messages.

        Returns:
            The hook.
        """
        return cls(report.input_multiple, model_name, report.in_channels, _empty_batch_ok(report))

    def __call__(self, module: nn.Module, args: tuple[object, ...]) -> None:
        """Check the first positional argument, if it is a tensor.

        Args:
            module: The model (unused).
            args: Positional arguments of ``forward``.

        Raises:
            ValueError: As :func:`check_images`.
        """
        if args and isinstance(args[0], torch.Tensor):
            check_images(args[0], self.multiple, self.in_channels or 0, self.model_name, self.empty_ok)
