"""Weights that look trained, for tests: fresh initialisation hides problems that trained weights show."""

from __future__ import annotations

import zlib
from collections.abc import Collection

import torch
from torch import nn

__all__ = ["calibrate_batch_norms_", "perturb_weights_"]

_TOKENS = ("cls_token", "reg_token", "dist_token")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm | nn.GroupNorm) or "norm" in type(module).__name__.lower()


def _is_positional_conv(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and ("pos_conv" in name or "pos_block" in name)


_LAYER_SCALES = ("gamma", "gamma_1", "gamma_2")  # per-channel scales of residual branches


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
    - Swin's relative position bias tables to ``N(0, 1)`` (timm initialises them at 0.02);
    - all-zero linear weights (classifiers that timm starts at 0, as MLP-Mixer's) to
      ``N(0, 1 / fan_in)``;
    - layer scales (``gamma``, ``gamma_1``, ``gamma_2``; timm starts them at 1e-6 to 1e-5, which
      silences every block) to ``0.2 + 0.2 * N(0, 1)``;
    - the gains of weight-standardised convolutions and NFNet's ``skipinit_gain`` (the last one of
      each block starts at 0, which silences the residual branch) to ``1 + 0.5 * N(0, 1)``.

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
            elif param_name in _LAYER_SCALES and param.dim() == 1:
                targets[name] = (param, 0.2, 0.2)
            elif param_name in ("gain", "skipinit_gain"):
                targets[name] = (param, 1.0, 0.5)
            elif _is_positional_conv(module_name, module):
                targets[name] = (param, 0.0, 0.2)
            elif param_name == "pos_embed":
                targets[name] = (param, 0.0, 0.5)
            elif param_name == "relative_position_bias_table" or param_name in _TOKENS:
                targets[name] = (param, 0.0, 1.0)
            elif isinstance(module, nn.Linear) and param_name == "weight" and not bool(param.any()):
                targets[name] = (param, 0.0, param.shape[1] ** -0.5)  # a zero-initialised classifier
    for name, (param, mean, std) in targets.items():
        if only is not None and name not in only:
            continue
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        values = torch.randn(param.shape, generator=generator, dtype=torch.float64) * std + mean
        param.copy_(values.to(param.dtype))
    return model


@torch.no_grad()
def calibrate_batch_norms_(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Set every batch norm's running statistics to those of ``images``, as training leaves them, in place.

    A freshly initialised CNN in eval mode normalises with mean 0 and variance 1 whatever its
    activations are, so they grow layer by layer: logits in the hundreds after a deep
    EfficientNet or MobileNet, where float32 rounding then shows at the tolerances the tests use.
    Training leaves the running statistics of the data instead. This runs ``model`` once in train
    mode on ``images`` with cumulative averaging (each norm's statistics over the batch), then
    restores each norm's momentum and the model's mode. Models without batch norms are returned
    unchanged.

    Args:
        model: The model, changed in place (the stock model, before conversion).
        images: A batch of real images at an input size the model takes.

    Returns:
        ``model``.

    Shape:
        - images: :math:`(B, C, H, W)`, ``B > 1``
    """
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    was_training = model.training
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: the statistics of this batch
    model.train()
    model(images)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.train(was_training)
    return model
