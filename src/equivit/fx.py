"""FX tracing of converted models: timm's feature extraction tools see equivit's layers as leaves.

Anchoring picks a phase from the data, and the anchored layers check their input sizes in Python,
so ``torch.fx`` cannot trace through them. On import of ``equivit`` this module registers them
with timm's FX registry (``timm.layers.register_notrace_module`` and
``register_notrace_function``), so that ``timm.models.get_graph_node_names``,
``timm.models.create_feature_extractor`` and timm's ``FeatureGraphNet`` stop at them: each anchored
layer becomes one node, and the model around it (blocks, stages, heads) is traced as timm traces
it. The Swin stages are traced through (their window anchoring is two leaf function calls), so
their blocks stay visible as nodes.

:class:`EquivariantFeatureGraphNet` is timm's ``FeatureGraphNet`` for a converted model: pass it as
``feature_cls`` to ``equivit.create_model(..., features_only=True)``; it converts the model before
tracing (a graph traced from a stock model cannot be converted afterwards).
"""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from timm.layers import is_notrace_function, register_notrace_function, register_notrace_module
from timm.models._features_fx import FeatureGraphNet
from timm.models._features_fx import create_feature_extractor as _timm_create_feature_extractor
from torch import fx, nn

from equivit.anchor_core import anchor, anchor_padded, choose_offsets, roll_back
from equivit.energy import Energy
from equivit.layers.circular_conv import circular_conv2d
from equivit.layers.declare import declared_layers
from equivit.polyphase import anchor_offsets, anchor_scores, polyphase_anchor, polyphase_energy
from equivit.report import ConversionReport, InputSizeCheck
from equivit.roll import roll_from_anchor, roll_to_anchor
from equivit.token_grid import (
    anchor_patch_tokens,
    check_grid_size,
    patch_token_map,
    roll_back_map,
    roll_back_patch_tokens,
)

__all__ = [
    "LEAF_MODULES",
    "NOTRACE_FUNCTIONS",
    "TRACED_MODULES",
    "EquivariantFeatureGraphNet",
    "create_feature_extractor",
    "record_helper_calls",
    "register_fx_leaves",
]

LEAF_MODULES: tuple[type[nn.Module], ...] = tuple(d.layer for d in declared_layers() if d.fx == "leaf")
"""equivit's layers that FX treats as single nodes (their forward depends on the data or checks sizes).

Read from the layers' declarations (:func:`equivit.layers.declare.equivariant_layer`), which also
register each leaf with timm's FX registry, including layers declared after this module is imported.
"""

TRACED_MODULES: tuple[type[nn.Module], ...] = tuple(d.layer for d in declared_layers() if d.fx == "traced")
"""equivit's layers that FX traces through: their forward calls only leaves and :data:`NOTRACE_FUNCTIONS`."""

NOTRACE_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    anchor,
    anchor_offsets,
    anchor_padded,
    choose_offsets,
    roll_back,
    anchor_scores,
    circular_conv2d,
    polyphase_anchor,
    polyphase_energy,
    roll_from_anchor,
    roll_to_anchor,
    anchor_patch_tokens,
    check_grid_size,
    patch_token_map,
    roll_back_map,
    roll_back_patch_tokens,
)
"""Functions that FX records as one call each instead of tracing into them (the token-grid helpers
branch on map sizes, which FX sees as traced values)."""


def record_helper_calls(module: ModuleType) -> None:
    """Make FX record each call made by name inside ``module`` of a function it must not trace as one node.

    Those are :data:`NOTRACE_FUNCTIONS` and the functions timm registered (its position-embedding
    resampling, for example).

    FX wraps a registered function only where it looks: in the globals of the traced root's
    ``forward`` and of each called module's ``forward``. A family's converted class that keeps
    timm's ``forward`` and calls the helpers from its own ``forward_features`` would be traced into
    them (and fail on their size checks). ``torch.fx.wrap`` marks a name in a module's globals for
    every trace; it must run at a module's top level, so it runs here as top-level code of
    ``module`` (the helper's own globals are ``module``'s).

    Args:
        module: A module whose functions call the helpers by their names (a family file).
    """
    for name, value in list(module.__dict__.items()):
        if callable(value) and (value in NOTRACE_FUNCTIONS or is_notrace_function(value)):
            code = compile(f"__import__('torch').fx.wrap({name!r})", module.__name__, "exec")
            exec(code, module.__dict__)  # top-level code of ``module``: what torch.fx.wrap requires


def register_fx_leaves() -> None:
    """Register every declared leaf layer and :data:`NOTRACE_FUNCTIONS` with timm's FX registry.

    Done on ``import equivit``; calling it again does nothing new (the registry is a set). After
    it, tracing a converted model with timm's FX tools stops at equivit's layers. A function is
    recorded as one call wherever a traced ``forward`` refers to it by a module-level name.
    """
    for declaration in declared_layers():
        if declaration.fx == "leaf":
            register_notrace_module(declaration.layer)
    for function in NOTRACE_FUNCTIONS:
        register_notrace_function(function)


def _carry_report(graph: nn.Module, model: nn.Module) -> None:
    """Give ``graph`` the report of ``model`` and an input check on its own entry.

    A traced graph keeps the hooks of the leaves it calls, but not those of the model or of a
    module traced through, so the check that :func:`equivit.convert` installs may not run.
    """
    report = getattr(model, "equivit_report", None)
    if not isinstance(report, ConversionReport):
        return
    graph.equivit_report = report
    graph.register_forward_pre_hook(InputSizeCheck.from_report(report, type(model).__name__))
    graph.__prepare_scriptable__ = functools.partial(_without_pre_hooks, graph)


def _without_pre_hooks(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` without its forward pre-hooks, for ``torch.jit.script``.

    TorchScript compiles hooks only if they are scripted functions; the input check is a Python
    object. ``torch.jit.script`` calls ``__prepare_scriptable__`` first, and scripts this copy
    (same submodules and parameters). The scripted graph keeps the checks of the anchored
    layers, which raise on a map that is not a multiple of their period.
    """
    plain = copy.copy(module)
    plain.__dict__.pop("__prepare_scriptable__", None)
    plain._forward_pre_hooks = OrderedDict()
    return plain


def create_feature_extractor(model: nn.Module, return_nodes: dict[str, str] | list[str]) -> fx.GraphModule:
    """Like timm's ``create_feature_extractor``, keeping a converted model's report and input-size check.

    The graph module shares the model's parameters. Node names are those of
    :func:`timm.models.get_graph_node_names`; equivit's layers are single nodes.

    Args:
        model: A model (converted or not).
        return_nodes: Node names to return, or a mapping from node name to output name.

    Returns:
        A module returning a dict of the requested intermediate values; for a converted model it
        carries ``equivit_report`` and rejects images of a size that is not a multiple of
        ``equivit_report.input_multiple``.
    """
    graph = _timm_create_feature_extractor(model, return_nodes)
    _carry_report(graph, model)
    return graph


class EquivariantFeatureGraphNet(FeatureGraphNet):
    """The FX feature extractor of timm (``feature_cls="fx"``), built on the converted model.

    Give it as ``feature_cls`` to ``equivit.create_model(name, features_only=True, ...)`` (or to
    ``timm.create_model``): the stock model timm builds is converted in place, then traced, so
    the feature maps are those of the converted model and move with the image. It carries the
    model's ``equivit_report`` and input-size check, so ``equivit.create_model`` returns it as is.

    Args:
        model: A supported timm model (converted or not; converted in place if not).
        out_indices: Indices into ``model.feature_info`` of the maps to return (an int ``n``: the
            last ``n``), as in timm.
        out_map: Optional names of the outputs, as in timm.
        output_fmt: Layout of the maps, as in timm.
        return_dict: Return a dict instead of a list.
        energy: Energy that picks the anchors (see :func:`equivit.convert`).

    Raises:
        UnsupportedModelError: If the model cannot be converted.

    Examples:
        >>> net = equivit.create_model(  # doctest: +SKIP
        ...     "resnet18", features_only=True, feature_cls=EquivariantFeatureGraphNet, out_indices=(2, 3)
        ... )
    """

    def __init__(
        self,
        model: nn.Module,
        out_indices: int | Sequence[int],
        out_map: dict[Any, Any] | None = None,
        output_fmt: str = "NCHW",
        return_dict: bool = False,
        energy: Energy = "l1",
    ) -> None:
        from equivit.convert import convert

        model = convert(model, inplace=True, energy=energy)
        super().__init__(model, out_indices, out_map=out_map, output_fmt=output_fmt, return_dict=return_dict)
        _carry_report(self, model)


register_fx_leaves()
