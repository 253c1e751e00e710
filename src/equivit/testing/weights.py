"""Weights that look trained, for tests: fresh initialisation hides problems that trained weights show."""

from __future__ import annotations

import zlib
from collections.abc import Collection

import torch
from torch import nn

__all__ = ["perturb_weights_"]

_TOKENS = ("cls_token", "reg_token", "dist_token")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm | nn.GroupNorm) or "norm" in type(module).__name__.lower()


def _is_positional_conv(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and ("pos_conv" in name or "pos_block" in name)


@torch.no_grad()
def perturb_weights_(model: nn.Module, *, seed: int = 0, only: Collection[str] | None = None) -> nn.Module:
    """Give a freshly initialised model the statistics that training gives it, in place.

    A fresh timm ViT has LayerNorm weights of exactly 1, biases of 0 and a position embedding of
    standard deviation 0.02: every token after a LayerNorm has the same L2 norm (so L2 energies
    tie), and the position embedding is too small to change predictions under a shift. Trained
    models are not like that. This sets, from a generator seeded by ``seed`` and the parameter's
    name (so the same name gets the same values in a stock and a converted model):

    - norm weights to ``1 + 0.5 * N(0, 1)`` and norm biases to ``0.2 * N(0, 1)``;
    - ``pos_embed`` to ``0.5 * N(0, 1)`` and the prefix tokens to ``N(0, 1)``;
    - positional convolutions (``pos_conv``, Twins' ``pos_block``) to ``0.2 * N(0, 1)``;
    - Swin's relative position bias tables to ``N(0, 1)`` (timm initialises them at 0.02).

    Args:
        model: The model, changed in place.
        seed: Seed of the values.
        only: If given, change only the parameters with these qualified names.

    Returns:
        ``model``.
    """
    targets: dict[str, tuple[torch.Tensor, float, float]] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for param_name, param in module.named_parameters(recurse=False):
            name = prefix + param_name
            if _is_norm(module):
                targets[name] = (param, 1.0 if param_name == "weight" else 0.0, 0.5 if param_name == "weight" else 0.2)
            elif _is_positional_conv(module_name, module):
                targets[name] = (param, 0.0, 0.2)
            elif param_name == "pos_embed":
                targets[name] = (param, 0.0, 0.5)
            elif param_name == "relative_position_bias_table" or param_name in _TOKENS:
                targets[name] = (param, 0.0, 1.0)
    for name, (param, mean, std) in targets.items():
        if only is not None and name not in only:
            continue
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        values = torch.randn(param.shape, generator=generator, dtype=torch.float64) * std + mean
        param.copy_(values.to(param.dtype))
    return model
