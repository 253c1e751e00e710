"""The family registry: one record per timm model family that :func:`equivit.convert` handles.

Everything the package knows about a family lives in its :class:`Family` record, in one file under
``equivit/families/``: the timm classes it converts, the converter, where the images enter, the
module types that mark it inside timm's ``features_only`` wrappers, the module types its converted
models may hold, the timm names it takes, the state-dict mapping and small example configurations.
``equivit.SUPPORTED``, ``equivit check --list``, the error messages, the equivariance audit and the
test suite's family lists are all read from here, so adding a family is adding one record.

A family from outside the package registers the same way::

    from equivit.registry import Family, register_family

    register_family(Family(name="mynet", description="MyNet (mynet_*)", model_classes=(MyNet,),
                           convert=convert_mynet, entry="stem"))
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from equivit.polyphase import Energy
    from equivit.report import ConversionReport

__all__ = [
    "Example",
    "Family",
    "ModuleCheck",
    "SupportedView",
    "family_named",
    "family_of",
    "module_types",
    "register_family",
    "registered_families",
    "supported_model_names",
    "types_named",
    "unregister_family",
]

Converter = Callable[[nn.Module, "ConversionReport", "Energy"], None]
"""Converts a model (or timm's ``features_only`` wrapper of one) in place, recording what it changed."""

ModuleCheck = Callable[[nn.Module], "str | None"]
"""A family's verdict on one module of a converted model: None if it is fine, else the problem."""

StateDictMapping = Callable[[Mapping[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
"""Maps a stock state dict onto a converted model (``(state_dict, converted_model) -> state_dict``)."""


@dataclasses.dataclass(frozen=True)
class Example:
    """A small configuration of a family: fast to build, used by the tests.

    Attributes:
        model_name: The timm model name.
        kwargs: Keyword arguments for ``timm.create_model`` (small widths and depths).
        image_size: ``(H, W)``: an input size the converted model takes (a small multiple of its period).
        quick: Whether the slower per-example tests (compiled graphs, autocast, TorchScript, ONNX)
            run on it in the default test run; False for families that share a conversion policy
            already tested there. Every example runs every test in the slow set.
    """

    model_name: str
    kwargs: Mapping[str, Any]
    image_size: tuple[int, int]
    quick: bool = True


@dataclasses.dataclass(frozen=True)
class Family:
    """Everything equivit knows about one family of timm models.

    Attributes:
        name: Short name, used as ``model.equivit_report.family`` (``"resnet"``).
        description: One line for users: what it covers, with timm's name patterns.
        model_classes: The timm model classes it converts.
        convert: The converter, ``convert(model, report, energy)``, in place.
        entry: Path of the module that receives the images in the model (``"patch_embed"``,
            ``"conv1"``); the input check is installed there. A tuple lists several, for families
            of more than one model class: the first path the model has is used. In timm's
            flattened ``features_only`` wrapper the first module is used.
        feature_markers: Module types that mark this family inside timm's flattened
            ``features_only`` wrappers (``FeatureListNet``), which lose the model class.
        accepted: Module types of this family that are equivariant as they are (containers whose
            parts are checked one by one, modules acting on each position alone); the audit
            accepts them.
        checks: Module types of this family that are fine in some configurations and not in others,
            each with a check that returns None or the problem (Twins' window attention is never
            fine unanchored; a key/value reduction is fine without its ``sr``).
        timm_modules: timm model modules whose names this family takes (``timm.list_models(module=...)``).
        excluded: Name patterns (``fnmatch``) in those modules that it refuses, each with the reason.
        converted_classes: Classes that its converted models have when they differ from the stock
            ones (so that a converted model is recognised).
        empty_batch_ok: Whether a converted model maps an empty batch to an empty output.
        float64_rtol: The relative rounding of the model's own arithmetic when it runs in
            float64: 1e-10 (the float64 tests' tolerance), larger where timm computes a part in
            float32 whatever the input dtype (EfficientViT's linear attention).
        map_state_dict: Maps a stock state dict onto a converted model, or None when the keys match.
        examples: Small configurations, by test id (the tests and the census run each).
    """

    name: str
    description: str
    model_classes: tuple[type[nn.Module], ...]
    convert: Converter
    entry: str | tuple[str, ...] = "patch_embed"
    feature_markers: tuple[type[nn.Module], ...] = ()
    accepted: tuple[type[nn.Module], ...] = ()
    checks: Mapping[type[nn.Module], ModuleCheck] = dataclasses.field(default_factory=dict)
    timm_modules: tuple[str, ...] = ()
    excluded: Mapping[str, str] = dataclasses.field(default_factory=dict)
    converted_classes: tuple[type[nn.Module], ...] = ()
    empty_batch_ok: bool = False
    float64_rtol: float = 1e-10
    map_state_dict: StateDictMapping | None = None
    examples: Mapping[str, Example] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check the record, so that a mistake shows where it is made, not at conversion time."""
        if not self.name.isidentifier():
            raise ValueError(f"a family name must be an identifier, got {self.name!r}")
        if not self.model_classes or not all(isinstance(c, type) for c in self.model_classes):
            raise TypeError(f"family {self.name!r}: model_classes must be a non-empty tuple of classes")
        if not callable(self.convert):
            raise TypeError(f"family {self.name!r}: convert must be callable, got {self.convert!r}")

    def takes(self, model_name: str) -> bool:
        """Whether the timm name ``model_name`` (without a pretrained tag) is one this family converts.

        Args:
            model_name: A timm model name.

        Returns:
            True if it is in one of :attr:`timm_modules` and matches none of :attr:`excluded`.
        """
        import timm

        base = model_name.split(".")[0]
        return timm.models.is_model_in_modules(base, list(self.timm_modules)) and not self._excluded(base)

    def _excluded(self, model_name: str) -> bool:
        """Whether ``model_name`` matches one of :attr:`excluded`."""
        return any(fnmatch.fnmatchcase(model_name, pattern) for pattern in self.excluded)

    def model_names(self) -> list[str]:
        """The timm names this family converts (see :meth:`takes`).

        Returns:
            Sorted as timm sorts them.
        """
        import timm

        names = [name for module in self.timm_modules for name in timm.list_models(module=module)]
        return [name for name in names if not self._excluded(name)]


def types_named(module: object, *names: str) -> tuple[type[nn.Module], ...]:
    """The classes called ``names`` in ``module`` that it has (a timm version may lack some).

    Args:
        module: A module object, for example ``timm.models.vision_transformer``.
        *names: Class names.

    Returns:
        The classes found, in the order of ``names``.
    """
    found = (getattr(module, name, None) for name in names)
    return tuple(cls for cls in found if isinstance(cls, type))


def module_types(module: object, *, without: tuple[str, ...] = ()) -> tuple[type[nn.Module], ...]:
    """The ``nn.Module`` classes defined in ``module`` (not imported into it), except those named in ``without``.

    For a family whose blocks only combine parts the audit checks one by one (convolutions,
    poolings, norms, activations, global pooling), read once: the audit then accepts every block
    type of its timm module, and still checks every convolution and pooling inside them.

    Args:
        module: A module object, for example ``timm.models.dla``.
        without: Names of classes to leave out (blocks that must stay refused).

    Returns:
        The classes, in name order.
    """
    found = vars(module).values()
    return tuple(
        sorted(
            (
                cls
                for cls in found
                if isinstance(cls, type)
                and issubclass(cls, nn.Module)
                and cls.__module__ == getattr(module, "__name__", None)
                and cls.__name__ not in without
            ),
            key=lambda cls: cls.__name__,
        )
    )


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family, *, replace: bool = False) -> Family:
    """Add a family, so that :func:`equivit.convert` converts its models.

    Args:
        family: The record.
        replace: Replace a family registered under the same name (otherwise that is an error).

    Returns:
        ``family``.

    Raises:
        ValueError: If the name is taken, or one of its model classes belongs to another family.
    """
    if family.name in _FAMILIES and not replace:
        raise ValueError(f"a family named {family.name!r} is already registered; pass replace=True to replace it")
    for other in _FAMILIES.values():
        if other.name == family.name:
            continue
        shared = set(other.model_classes + other.converted_classes) & set(
            family.model_classes + family.converted_classes
        )
        if shared:
            names = ", ".join(sorted(cls.__name__ for cls in shared))
            raise ValueError(f"family {family.name!r}: {names} already belong(s) to family {other.name!r}")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> Family:
    """Remove a registered family.

    Args:
        name: Its name.

    Returns:
        The removed record.

    Raises:
        KeyError: If no family has that name.
    """
    return _FAMILIES.pop(family_named(name).name)


def registered_families() -> tuple[Family, ...]:
    """Every registered family, in registration order (the built-in ones first).

    Returns:
        The records.
    """
    return tuple(_FAMILIES.values())


def family_named(name: str) -> Family:
    """The family registered as ``name``.

    Args:
        name: A family name (``model.equivit_report.family``).

    Returns:
        The record.

    Raises:
        KeyError: If none is, naming the registered ones.
    """
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"no family named {name!r}; registered: {', '.join(_FAMILIES)}") from None


def family_of(model: nn.Module) -> tuple[Family, nn.Module] | None:
    """The family of a model, or of timm's ``features_only`` wrapper of one.

    Args:
        model: The model.

    Returns:
        The pair ``(family, module to convert)``: the model itself, or the model inside timm's
        ``FeatureGetterNet``; None if no registered family takes it.
    """
    from timm.models._features import FeatureDictNet, FeatureGetterNet, FeatureHookNet

    by_class = {cls: family for family in _FAMILIES.values() for cls in family.model_classes + family.converted_classes}
    if isinstance(model, FeatureGetterNet):
        inner = model.model
        return (by_class[type(inner)], inner) if type(inner) in by_class else None
    if isinstance(model, FeatureDictNet | FeatureHookNet):  # FeatureListNet too: the model's children, flattened
        markers = {cls: family for family in _FAMILIES.values() for cls in family.feature_markers}
        for module in model.modules():
            if type(module) in markers:
                return markers[type(module)], model
        # No family's own module type inside (VGG's features are plain convolutions and poolings):
        # timm's wrapper keeps the model's pretrained_cfg, whose architecture names the model.
        architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
        named = [family for family in _FAMILIES.values() if architecture and family.takes(architecture)]
        return (named[0], model) if len(named) == 1 else None
    return (by_class[type(model)], model) if type(model) in by_class else None


def supported_model_names() -> dict[str, list[str]]:
    """The timm model names each registered family converts.

    Returns:
        Family name -> timm names.
    """
    return {family.name: family.model_names() for family in _FAMILIES.values()}


class SupportedView(Mapping[str, str]):
    """Model class name -> description of its family, read live from the registry (``equivit.SUPPORTED``)."""

    def _table(self) -> dict[str, str]:
        return {cls.__name__: family.description for family in _FAMILIES.values() for cls in family.model_classes}

    def __getitem__(self, name: str) -> str:
        """The description of the family of the class called ``name``."""
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        """The class names."""
        return iter(self._table())

    def __len__(self) -> int:
        """How many classes."""
        return len(self._table())

    def __repr__(self) -> str:
        """As a dict."""
        return repr(self._table())
