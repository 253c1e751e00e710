"""Find the modules of a model that would break shift equivariance."""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from torch import nn

from equivit.layers.anchored_conv import AnchoredConv2d
from equivit.layers.declare import declared_layers
from equivit.registry import ModuleCheck, registered_families

__all__ = ["equivariance_violations"]

# Modules that act on each token alone, or on the set of tokens without regard to their order
# (attention without position terms), or only hold other modules. Looked up by name so that a
# timm version without one of them still imports.
_SAFE_NAMES = {
    "torch.nn": (
        "Linear", "LayerNorm", "GroupNorm", "RMSNorm", "Dropout", "Identity", "Sequential", "ModuleList",
        "ModuleDict", "Flatten", "BatchNorm2d", "SyncBatchNorm",
        # Statistics per channel over the batch and every position (LeViT, heads after pooling).
        "BatchNorm1d",
    ),
    "timm.layers": (
        "Mlp", "GluMlp", "SwiGLU", "SwiGLUPacked", "LayerScale", "DropPath", "LayerNorm", "RmsNorm", "PatchDropout",
        "AttentionPoolLatent", "ClassifierHead", "NormMlpClassifierHead", "SelectAdaptivePool2d",
        # Attention over the set of tokens without position terms; norms of each position.
        "Attention", "DiffAttention", "LayerNorm2d", "RmsNorm2d", "SimpleNorm", "SimpleNorm2d",
        # Norms with an activation, containers of a convolution, a norm and an activation (each
        # checked on its own), per-channel scales, 1x1-convolution MLPs.
        "BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNorm2d", "FrozenBatchNormAct2d", "GroupNormAct",
        "GroupNorm1Act", "LayerNormAct", "LayerNormAct2d", "ConvNormAct", "ConvNormActAa", "LayerScale2d",
        "ConvMlp", "SeparableConvNormAct", "SeparableConv2d", "ClNormMlpClassifierHead",
        # Split attention (ResNeSt) and selective kernels (SK-ResNet): convolutions checked one by one,
        # attention weights from a pool over the whole grid.
        "SplitAttn", "SelectiveKernel",
        # EvoNorm: per-position terms and statistics over the whole grid (or the batch).
        "EvoNorm2dB0", "EvoNorm2dB1", "EvoNorm2dB2", "EvoNorm2dS0", "EvoNorm2dS0a", "EvoNorm2dS1", "EvoNorm2dS1a",
        "EvoNorm2dS2", "EvoNorm2dS2a", "FilterResponseNormAct2d", "FilterResponseNormTlu2d",
    ),
    # Global pools over the whole grid (the adaptive ones are checked for output size 1 below).
    "timm.layers.adaptive_avgmax_pool": (
        "FastAdaptiveAvgPool", "FastAdaptiveMaxPool", "FastAdaptiveAvgMaxPool", "FastAdaptiveCatAvgMaxPool",
    ),
    "timm.layers.split_attn": ("RadixSoftmax",),
    "timm.models._features": ("FeatureDictNet", "FeatureListNet", "FeatureGetterNet", "FeatureHookNet"),
}  # fmt: skip

# Channel attention that pools over the whole grid first, then acts on the pooled channel vector
# (squeeze-excitation, ECA): equivariant whatever is inside (ECA's Conv1d runs over channels).
# Accepted with everything they hold.
_GLOBAL_NAMES = {
    "timm.layers": ("SEModule", "EffectiveSEModule", "EcaModule", "CecaModule", "GlobalContext"),
    "timm.models._efficientnet_blocks": ("SqueezeExcite",),
    "timm.layers.selective_kernel": ("SelectiveKernelAttn",),
}


def _named_types(table: dict[str, tuple[str, ...]]) -> tuple[type, ...]:
    found: list[type] = []
    for module_name, names in table.items():
        module = importlib.import_module(module_name)
        found += [getattr(module, name) for name in names if isinstance(getattr(module, name, None), type)]
    return tuple(found)


def _safe_types() -> tuple[type, ...]:
    found: list[type] = [declaration.layer for declaration in declared_layers()]
    for family in registered_families():
        found += [*family.model_classes, *family.converted_classes, *family.accepted]
    return (*found, *_named_types(_SAFE_NAMES))


def _is_activation(module: nn.Module) -> bool:
    return type(module).__module__ == "torch.nn.modules.activation" or type(module).__module__.startswith(
        "timm.layers.activations"
    )


def _conv_problem(conv: nn.Conv2d) -> str | None:
    if isinstance(conv, AnchoredConv2d):  # anchored with period = stride
        return None
    if any(type(conv) is declaration.layer and declaration.period for declaration in declared_layers()):
        return None  # a declared anchored convolution (the circular weight-standardised ones)
    if tuple(conv.stride) != (1, 1):
        return f"strided convolution (stride {tuple(conv.stride)}) without anchoring"
    pads = conv.padding if not isinstance(conv.padding, str) else (conv.padding,)
    if any(p not in (0, "valid") for p in pads) and conv.padding_mode != "circular":
        return f"zero padding ({conv.padding}) marks the image border; it must be circular"
    return None


def _conv1d_problem(conv: nn.Conv1d) -> str | None:
    if tuple(conv.kernel_size) == (1,) and tuple(conv.stride) == (1,):
        return None  # acts on each token (or each channel) alone
    return f"1-D convolution (kernel {tuple(conv.kernel_size)}, stride {tuple(conv.stride)}) over a sequence"


def _position_parameter(module: nn.Module) -> str | None:
    """The name of a parameter of ``module`` itself that is an absolute position embedding, if any."""
    for name, parameter in module.named_parameters(recurse=False):
        if "pos_embed" in name and parameter is not None:
            return name
    return None


def _anchors_its_grid(module: nn.Module) -> bool:
    """Whether ``module`` is a declared layer that anchors its token grid with period = the grid."""
    return any(type(module) is declaration.layer and declaration.period == "grid" for declaration in declared_layers())


def _family_checks() -> dict[type, ModuleCheck]:
    return {cls: check for family in registered_families() for cls, check in family.checks.items()}


def _module_problem(
    module: nn.Module, trusted: tuple[type, ...], safe: tuple[type, ...], checks: dict[type, ModuleCheck]
) -> str | None:
    if isinstance(module, nn.Conv2d):
        return _conv_problem(module)
    if _anchors_its_grid(module):  # its position terms act in the content-chosen frame
        return None
    if isinstance(module, nn.Conv1d):
        return _conv1d_problem(module)
    if type(module) in checks:
        return checks[type(module)](module)
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size = module.output_size if isinstance(module.output_size, tuple) else (module.output_size,)
        return None if all(s == 1 for s in size) else f"adaptive pooling to {module.output_size} depends on position"
    if type(module).__name__ == "AttentionPoolLatent" and getattr(module, "pos_embed", None) is not None:
        return "attention pooling with an absolute position embedding"
    if getattr(module, "pos_embed", None) is not None and isinstance(module.pos_embed, nn.Parameter):
        return "absolute position embedding (pos_embed)"
    position = _position_parameter(module)
    if position is not None:
        return f"absolute position embedding ({position})"
    if isinstance(module, trusted + safe) or _is_activation(module):
        return None
    return "unknown module type"


def equivariance_violations(model: nn.Module, trusted: Iterable[type] = ()) -> list[tuple[str, str, str]]:
    """List the modules that break, or may break, circular-shift equivariance.

    A module is accepted when it is one of equivit's anchored layers (with the children it runs on
    its anchored input, named by its class attribute ``equivit_anchored_children``), a stride-1
    convolution with circular padding or none, or a type known to act on tokens one at a time or on the set of
    tokens (linear layers, norms, MLPs, attention without position terms, activations,
    containers), or a type in ``trusted``.

    Args:
        model: The model to inspect.
        trusted: Extra module types to accept (your own token-wise layers).

    Returns:
        ``(qualified name, type name, problem)`` for each module not accepted.
    """
    safe = _safe_types()
    checks = _family_checks()
    trusted_types = tuple(trusted)
    # Children that an anchored layer runs on its anchored input (the reduction of an anchored
    # sub-sampled attention, the convolutions of an anchored residual block): covered, with
    # everything inside them.
    covered = [
        f"{name}.{child}" if name else child
        for name, module in model.named_modules()
        for child in getattr(module, "equivit_anchored_children", ())
    ]
    # Global channel attention, with all it holds.
    whole = _named_types(_GLOBAL_NAMES)
    covered += [name for name, module in model.named_modules() if name and isinstance(module, whole)]
    problems = []
    for name, module in model.named_modules():
        if any(name == root or name.startswith(root + ".") for root in covered):
            continue
        problem = _module_problem(module, trusted_types, safe, checks)
        if problem is not None:
            problems.append((name or "(model)", type(module).__name__, problem))
    return problems
