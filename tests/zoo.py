"""Tiny configurations of every family ``equivit.convert`` supports, for fast robustness tests.

Each entry is ``(timm name, timm keyword arguments, image size)``: small widths and depths, and an
image size that is a small multiple of the converted model's period.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

import equivit
from equivit.testing import perturb_weights_

_WIDE_HEADS = {"num_heads": (1, 1, 1, 1), "depths": (1, 1, 1, 1)}

TINY: dict[str, tuple[str, dict[str, object], tuple[int, int]]] = {
    "vit": (
        "vit_tiny_patch16_224",
        {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": (32, 48)},
        (32, 48),
    ),
    "deit_distilled": (
        "deit_tiny_distilled_patch16_224",
        {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32},
        (32, 32),
    ),
    "twins_pcpvt": (
        "twins_pcpvt_small",
        {"embed_dims": (16, 32, 32, 32), "sr_ratios": (2, 2, 1, 1), **_WIDE_HEADS},
        (64, 96),
    ),
    "twins_svt": (
        "twins_svt_small",
        {"embed_dims": (16, 32, 32, 32), "sr_ratios": (2, 2, 1, 1), "wss": (2, 2, 2, 2), **_WIDE_HEADS},
        (64, 64),
    ),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"embed_dim": 16, "window_size": 2, "img_size": (64, 128), **_WIDE_HEADS},
        (64, 128),
    ),
    "swinv2": (
        "swinv2_tiny_window8_256",
        {"embed_dim": 16, "window_size": 2, "img_size": 64, **_WIDE_HEADS},
        (64, 64),
    ),
    "pvt_v2": ("pvt_v2_b0", {"embed_dims": (16, 32, 32, 32), **_WIDE_HEADS}, (64, 96)),
    "pvt_v2_li": ("pvt_v2_b2_li", {"embed_dims": (16, 32, 32, 32), **_WIDE_HEADS}, (224, 224)),
    "resnet": ("resnet18", {"layers": (1, 1, 1, 1)}, (64, 96)),
    "resnet_bottleneck": ("resnet26d", {"layers": (1, 1, 1, 1)}, (64, 64)),
    "convnext": ("convnext_atto", {"depths": (1, 1, 1, 1), "dims": (16, 32, 32, 32)}, (64, 96)),
}


def tiny_pair(family: str, seed: int = 0) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """A trained-looking tiny stock model, its conversion (both in eval mode) and a batch of two images.

    Shape:
        - images: :math:`(2, 3, H, W)`
    """
    name, kwargs, size = TINY[family]
    torch.manual_seed(seed)
    stock = perturb_weights_(timm.create_model(name, pretrained=False, num_classes=10, **kwargs), seed=seed).eval()
    converted = equivit.convert(stock).eval()
    perturb_weights_(converted, seed=seed, only=converted.equivit_report.new_parameters)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
    return stock, converted, images
