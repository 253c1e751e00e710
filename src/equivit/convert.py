"""``equivit.convert`` and ``equivit.create_model``: shift-equivariant copies of timm models."""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import timm
import torch
from torch import nn

import equivit.families  # noqa: F401  (registers the built-in families)
from equivit.audit import equivariance_violations
from equivit.energy import Energy
from equivit.registry import Family, SupportedView, family_named, family_of, registered_families
from equivit.report import ConversionReport, UnsupportedModelError, install_input_check

__all__ = ["SUPPORTED", "convert", "convert_state_dict", "create_model", "is_converted"]

logger = logging.getLogger("equivit")

SUPPORTED: Mapping[str, str] = SupportedView()
"""Model class name -> what its family covers; read from the family registry (:mod:`equivit.registry`)."""


def _a(word: str) -> str:
    """``word`` with its indefinite article: "a ResNet", "an EfficientNet"."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _family(model: nn.Module) -> tuple[Family, nn.Module]:
    """(family, the module to convert) for a model or timm's ``features_only`` wrapper of one."""
    from timm.models._features_fx import FeatureGraphNet

    found = family_of(model)
    if found is not None:
        return found
    if isinstance(model, (FeatureGraphNet, torch.fx.GraphModule)):
        raise UnsupportedModelError(
            f"equivit cannot convert {_a(type(model).__name__)}: a graph traced by torch.fx has the stock "
            "operations baked in. Convert the model first, then trace it: equivit.create_model(name, "
            "features_only=True, feature_cls='fx'), or equivit.fx.create_feature_extractor(equivit.convert(model), "
            "return_nodes)."
        )
    supported = "\n".join(f"  - {family.name}: {family.description}" for family in registered_families())
    raise UnsupportedModelError(
        f"equivit cannot convert {_a(type(model).__name__)}. Supported families (and timm's "
        f"features_only wrappers of their models):\n{supported}\n"
        "`equivit check --list` lists the timm names. For your own architecture, build it from equivit.layers, "
        "register it as a family (equivit.registry.register_family) and check it with equivit.testing."
    )


def is_converted(model: nn.Module) -> bool:
    """Whether ``model`` was produced by :func:`convert`.

    Args:
        model: Any module.

    Returns:
        True if it carries a conversion report.
    """
    return isinstance(getattr(model, "equivit_report", None), ConversionReport)


def convert(
    model: nn.Module,
    *,
    inplace: bool = False,
    energy: Energy = "l1",
    trusted: Iterable[type] = (),
    verbose: bool = False,
) -> nn.Module:
    """Make a timm model exactly equivariant to circular shifts (any family in ``equivit.SUPPORTED``).

    Every strided or windowed operator is anchored (its input rolled, per sample, to the
    polyphase component of largest energy), absolute position embeddings become a circular
    depthwise-convolution encoding, and zero padding becomes circular. With a class token, average
    pooling or attention pooling the logits of the result do not change when the image is
    circularly shifted by any number of pixels, up to floating-point rounding.

    Weights are carried over. Only a ViT or DeiT gets a new parameter. A ViT loses ``pos_embed``: its
    rows for the prefix tokens are added to those tokens, and its grid part is replaced by
    ``patch_embed.pos_conv``, a new zero-initialised parameter (fine-tune to learn it). What was
    changed is logged (logger ``"equivit"``), printed with ``verbose=True``, and kept as
    ``model.equivit_report``. Inputs must be multiples of ``model.equivit_report.input_multiple``.

    Args:
        model: A model of a class in :data:`SUPPORTED`, or timm's ``features_only`` wrapper of
            one (its feature maps then move with the image).
        inplace: Change ``model`` itself (its parameters stay the same objects) instead of a copy.
        energy: Energy that picks the anchors: ``"l1"`` (default) or ``"l2"`` (fails after
            LayerNorm, where every token has nearly the same L2 norm; kept for experiments).
        trusted: Module types of your own that act on each token alone or on the set of tokens;
            the check for modules that break equivariance accepts them.
        verbose: Print what was replaced.

    Returns:
        The converted model. Converting a converted model returns it unchanged (a copy unless
        ``inplace``).

    Raises:
        UnsupportedModelError: If the model's class is not supported, or it holds modules that
            would break equivariance (the message lists them and what to do).

    Examples:
        >>> import timm
        >>> model = convert(timm.create_model("vit_tiny_patch16_224"))
        >>> model.equivit_report.input_multiple
        (16, 16)
    """
    if energy not in ("l1", "l2"):
        raise ValueError(f"energy must be 'l1' or 'l2', got {energy!r}")
    if is_converted(model):
        logger.info("equivit: model is already converted; nothing to do")
        return model if inplace else copy.deepcopy(model)
    trusted = tuple(trusted)
    target = model if inplace else copy.deepcopy(model)
    family, part = _family(target)
    report = ConversionReport(family=family.name, input_multiple=(1, 1))
    family.convert(part, report, energy)
    problems = equivariance_violations(target, trusted)
    if problems:
        listed = "\n".join(f"  - {name} ({kind}): {problem}" for name, kind, problem in problems)
        raise UnsupportedModelError(
            f"after conversion these modules of the {type(model).__name__} would still break shift "
            f"equivariance:\n{listed}\nReplace them with equivariant ones (see equivit.layers), or, if a "
            "type acts on each token alone or on the set of tokens regardless of order, pass it in "
            "trusted=(...)."
        )
    target.equivit_report = report
    install_input_check(target, report, type(model).__name__)
    logger.info("%s", report)
    if verbose:
        print(report)
    return target


def _names_fx(feature_cls: object) -> bool:
    """Whether a ``feature_cls`` asks timm for its FX feature extractor (timm reads the name in any case)."""
    return isinstance(feature_cls, str) and feature_cls.lower() == "fx"


def create_model(model_name: str, pretrained: bool = False, *, energy: Energy = "l1", **kwargs: Any) -> nn.Module:
    """``timm.create_model`` followed by :func:`convert`.

    Stock weights (``pretrained=True`` or ``checkpoint_path=...``) are loaded into the stock model
    first, then carried over by the conversion. With ``features_only=True, feature_cls="fx"`` the
    model is converted before timm traces it (:class:`equivit.fx.EquivariantFeatureGraphNet`);
    so is it with timm's other spelling, ``feature_cfg={"feature_cls": "fx"}``.

    Args:
        model_name: A timm model name, for example ``"twins_svt_small"``.
        pretrained: Load timm's pretrained weights.
        energy: Energy that picks the anchors.
        **kwargs: Passed to ``timm.create_model``.

    Returns:
        The converted model.

    Raises:
        UnsupportedModelError: If the model is not supported.
    """
    if kwargs.get("features_only"):
        from equivit.fx import EquivariantFeatureGraphNet

        graph_net = functools.partial(EquivariantFeatureGraphNet, energy=energy)
        if _names_fx(kwargs.get("feature_cls")):
            kwargs["feature_cls"] = graph_net
        feature_cfg = kwargs.get("feature_cfg")
        if isinstance(feature_cfg, dict) and _names_fx(feature_cfg.get("feature_cls")):
            kwargs["feature_cfg"] = {**feature_cfg, "feature_cls": graph_net}
    return convert(timm.create_model(model_name, pretrained=pretrained, **kwargs), inplace=True, energy=energy)


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a stock timm state dict onto a converted model, for ``model.load_state_dict(..., strict=True)``.

    Done by the family's mapping (:attr:`equivit.registry.Family.map_state_dict`). Twins, Swin,
    PVT v2 and the CNNs: returned unchanged (the keys already match). ViT and DeiT: the rows of
    ``pos_embed`` that belong to the prefix tokens are added to ``cls_token``, ``reg_token`` and
    ``dist_token`` (unless the model has ``no_embed_class``), ``pos_embed`` is dropped, and the new
    parameters (``patch_embed.pos_conv.*``) are taken from ``model`` as it is.

    Args:
        state_dict: A state dict of the stock model.
        model: The converted model it is for.

    Returns:
        A new state dict that loads strictly into ``model``.

    Raises:
        ValueError: If ``model`` was not converted by :func:`convert`.
    """
    if not is_converted(model):
        raise ValueError("model was not converted by equivit.convert; load the state dict into the stock model")
    mapping = family_named(model.equivit_report.family).map_state_dict  # type: ignore[union-attr]
    return dict(state_dict) if mapping is None else mapping(state_dict, model)
