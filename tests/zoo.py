"""Small configurations of every family ``equivit.convert`` supports, shared by the robustness tests.

``TINY`` entries are ``(timm name, timm keyword arguments, image size)``, read from the examples of
the registered families: small widths and depths, and an image size that is a small multiple of the
converted model's period. ``NODE_CONFIGS`` are
somewhat larger models with the FX nodes whose feature maps the FX and checkpoint tests read.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import equivit
from equivit.registry import family_named, registered_families
from equivit.testing import calibrate_batch_norms_, load_photos, perturb_weights_

TINY: dict[str, tuple[str, dict[str, object], tuple[int, int]]] = {
    key: (example.model_name, dict(example.kwargs), example.image_size)
    for family in registered_families()
    for key, example in family.examples.items()
}
"""Every example of every registered family (``equivit.registry``), by test id."""

FAMILY_OF: dict[str, str] = {key: family.name for family in registered_families() for key in family.examples}
"""The family of each example."""

ONE_PER_FAMILY: list[str] = [next(iter(family.examples)) for family in registered_families() if family.examples]
"""The first example of each family, for the slower tests."""

QUICK: set[str] = {key for family in registered_families() for key, example in family.examples.items() if example.quick}
"""Examples that the slower per-example tests run on in the default test run (``Example.quick``)."""


def heavy(keys: list[str]) -> list[object]:
    """``keys`` as parameters for a slow per-example test: those not in :data:`QUICK` marked slow."""
    return [key if key in QUICK else pytest.param(key, marks=pytest.mark.slow) for key in keys]


POLICY_EXAMPLES: frozenset[str] = frozenset(
    {"vit", "twins_svt", "swin", "pvt_v2", "resnet", "efficientnet", "convnext", "eva02", "maxvit"}
)
"""One example per way of converting (token anchors, windows, spatial-reduction attention, the CNN
policy on residual, inverted-residual and ConvNeXt blocks, the token-grid and stem-anchored policies):
the slowest per-example tests (compiled graphs for CUDA graphs, autocast) run on these by default."""


def per_policy(keys: list[str]) -> list[object]:
    """``keys`` as parameters for the slowest per-example tests: those not in :data:`POLICY_EXAMPLES` marked slow."""
    return [key if key in POLICY_EXAMPLES else pytest.param(key, marks=pytest.mark.slow) for key in keys]


def float64_rtol(key: str) -> float:
    """The float64 tests' relative tolerance for an example: 1e-10 unless its family computes a part in float32."""
    return max(1e-10, family_named(FAMILY_OF[key]).float64_rtol)


EMPTY_BATCH_OK: list[str] = [key for key in TINY if family_named(FAMILY_OF[key]).empty_batch_ok]
"""Examples whose converted models map an empty batch to an empty output."""


def tiny_pair(family: str, seed: int = 0) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """A trained-looking tiny stock model, its conversion (both in eval mode) and a batch of two real photos.

    Trained-looking: norms and embeddings perturbed (``perturb_weights_``), batch-norm statistics of
    real photos (``calibrate_batch_norms_``), for the stock model and, after conversion, for the
    converted one.

    Shape:
        - images: :math:`(2, 3, H, W)`
    """
    name, kwargs, size = TINY[family]
    torch.manual_seed(seed)
    stock = perturb_weights_(timm.create_model(name, pretrained=False, num_classes=10, **kwargs), seed=seed)
    calibrate_batch_norms_(stock, load_photos(size)[:8]).eval()
    converted = equivit.convert(stock).eval()
    perturb_weights_(converted, seed=seed, only=converted.equivit_report.new_parameters)
    photos = load_photos(size)
    # Circular padding changes what a convolution sees on grids near its kernel size (MixNet's 9 x 9
    # kernels on a 2 x 2 grid wrap many times): the converted model gets its own statistics, as
    # fine-tuning would give it, so that its activations keep their scale.
    calibrate_batch_norms_(converted, photos[:8]).eval()
    images = torch.roll(photos, -2 * seed, dims=0)[:2].clone()
    return stock, converted, images


# Swin at 128 x 256 with 4 x 4 windows, two blocks (regular and shifted) per stage, narrow: fast.
SMALL_SWIN = {
    "img_size": (128, 256),
    "window_size": 4,
    "depths": (2, 2, 2, 2),
    "embed_dim": 48,
    "num_heads": (2, 2, 4, 4),
}

# Layout of a node's output: "nchw", "nhwc", or "nlc" (tokens, after ``prefix`` class tokens).
Layout = tuple[str, int, int]  # (layout, prefix tokens, stride)

# (timm name, image size, timm arguments, {node: (layout, prefix tokens, stride)}). A negative stride marks
# a node inside an anchored Swin stage: it lives in the stage's anchored frame, so a shift moves it by some
# roll (whole windows away from shift / stride), not by exactly shift / stride.
NODE_CONFIGS: list[tuple[str, tuple[int, int], dict[str, object], dict[str, Layout]]] = [
    (
        "vit_tiny_patch16_224",
        (64, 96),
        {"img_size": (64, 96), "depth": 4},
        {"patch_embed": ("nlc", 0, 16), "blocks.1": ("nlc", 1, 16), "blocks.3": ("nlc", 1, 16)},
    ),
    (
        "deit_tiny_distilled_patch16_224",
        (64, 96),
        {"img_size": (64, 96), "depth": 2},
        {"patch_embed": ("nlc", 0, 16), "blocks.1": ("nlc", 2, 16)},
    ),
    (
        "twins_svt_small",
        (64, 96),
        {"depths": (1, 1, 2, 1), "wss": (4, 4, 2, 1)},
        # Blocks run on the stage's anchored grid (their maps move by some roll); the final norm
        # sees the last stage rolled back (it moves with the image).
        {"blocks.0.0": ("nlc", 0, -4), "blocks.1.0": ("nlc", 0, -8), "norm": ("nlc", 0, 32)},
    ),
    (
        "swin_tiny_patch4_window7_224",
        (128, 256),
        SMALL_SWIN,
        {"layers.0": ("nhwc", 0, 4), "layers.1.blocks.0": ("nhwc", 0, -8), "layers.3": ("nhwc", 0, 32)},
    ),
    (
        "swinv2_tiny_window8_256",
        (128, 256),
        SMALL_SWIN,
        {"layers.1.downsample": ("nhwc", 0, 8), "layers.2.blocks.1": ("nhwc", 0, -16), "layers.3": ("nhwc", 0, 32)},
    ),
    (
        "pvt_v2_b0",
        (64, 96),
        {},
        {"patch_embed": ("nhwc", 0, 4), "stages.1.blocks.0": ("nlc", 0, -8), "stages.3": ("nchw", 0, 32)},
    ),
    (
        "resnet18",
        (64, 96),
        {},
        {"maxpool": ("nchw", 0, 4), "layer2.0": ("nchw", 0, 8), "layer4": ("nchw", 0, 32)},
    ),
    (
        "convnext_atto",
        (64, 96),
        {},
        {"stem": ("nchw", 0, 4), "stages.1.downsample": ("nchw", 0, 8), "stages.3": ("nchw", 0, 32)},
    ),
]
