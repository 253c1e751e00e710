"""equivit.segmentation: per-pixel logits that move exactly with any integer circular shift of the image."""

from __future__ import annotations

import functools

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import equivit
from equivit.device_paths import accelerator_paths
from equivit.segmentation import AnchoredFeatures, FPNDecoder, Segmenter, anchor_period, create_segmenter
from equivit.testing import (
    FAMILIES,
    assert_shift_equivariant,
    count_kernel_ops,
    load_photos,
    make_images,
    perturb_weights_,
)
from helpers import assert_moves_with_shift, rounding_tolerance

# (timm name, image size, timm arguments): one backbone per way a family is converted. ResNet:
# anchored residual blocks; ConvNeXt: anchored downsampling; PVT v2 and Twins-PCPVT: anchored
# patch embeddings and reduction attention; Swin: windows (channels-last maps); ViT: one grid of
# tokens at stride 16; DLA and HRNet: one anchor on the network input; EdgeNeXt and MaxViT: a stem
# anchored with period = its map; MobileNetV3: squeeze-excitation (a mean over the map, exact to rounding).
BACKBONES = {
    "resnet18": ((64, 96), {"out_indices": (1, 2, 3, 4)}),
    "convnext_atto": ((64, 64), {}),
    "pvt_v2_b0": ((64, 96), {}),
    "twins_pcpvt_small": ((64, 64), {}),
    "swin_tiny_patch4_window7_224": ((128, 128), {"img_size": 128, "window_size": 4}),
    "vit_tiny_patch16_224": ((64, 96), {"img_size": (64, 96), "depth": 2, "out_indices": (0, 1)}),
    "dla34": ((64, 64), {}),
    "edgenext_xx_small": ((64, 64), {}),
    "hrnet_w18_small": ((64, 64), {}),
    "maxvit_nano_rw_256": ((128, 128), {"img_size": 128}),
    "mobilenetv3_small_100": ((64, 64), {}),
}
DEFAULT = ["resnet18", "pvt_v2_b0", "swin_tiny_patch4_window7_224", "vit_tiny_patch16_224"]


@functools.cache
def segmenter(name: str, equivariant: bool = True) -> Segmenter:
    torch.manual_seed(0)
    _, kwargs = BACKBONES[name]
    model = create_segmenter(name, 4, channels=16, equivariant=equivariant, **kwargs)
    backbone = model.features.backbone if equivariant else model.features
    perturb_weights_(backbone, seed=0)
    return model.eval()


@functools.cache
def photos(size: tuple[int, int]) -> torch.Tensor:
    return load_photos(size)[:2]


@functools.cache
def tolerance(name: str) -> float:
    """float32 rounding, measured against float64.

    The backbones' maps move bit for bit in a single process, but a convolution's kernels may
    round a position at the edge of a block differently from one inside (measured: a 1x1
    convolution of 512 channels on a 2 x 3 map, one thread, 2.4e-6), so bit-for-bit equality would
    test the kernels, not the construction. The controls below miss by 1e-3 of the scale or more.
    """
    return rounding_tolerance(segmenter(name), photos(BACKBONES[name][0]))


def test_smoke_shapes_period_and_stock_weights() -> None:
    model = create_segmenter("resnet18", 5, out_indices=(1, 2, 3), channels=8).eval()
    assert isinstance(model.features, AnchoredFeatures)
    assert model.features.period == 16
    assert model(torch.randn(2, 3, 32, 48)).shape == (2, 5, 32, 48)
    assert "period=16" in repr(model.features)
    # The backbone keeps timm's state-dict keys: a stock features_only checkpoint loads as it is.
    stock = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3))
    model.features.backbone.load_state_dict(stock.state_dict(), strict=True)
    # Swin's maps are channels-last in timm; the decoder receives them channels-first.
    swin = segmenter("swin_tiny_patch4_window7_224")
    assert swin.features.channels_last
    maps, offsets = swin.features(torch.randn(1, 3, 128, 128))
    assert [m.shape[1] for m in maps] == swin.features.channels
    assert offsets.shape == (1, 2)


def test_anchor_period_takes_the_network_input_anchor_into_account() -> None:
    backbone = equivit.create_model("resnet18", features_only=True, out_indices=(1, 2))
    assert anchor_period(backbone) == 8
    dla = equivit.create_model("dla34", features_only=True, out_indices=(1, 2))
    assert dla.equivit_report.input_period == 32
    assert anchor_period(dla) == 32


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: Segmenter(timm.create_model("resnet18"), 3), TypeError, "features_only wrapper"),
        (
            lambda: Segmenter(timm.create_model("resnet18", features_only=True), 3),
            ValueError,
            "needs a converted backbone.*equivit.convert",
        ),
        (
            lambda: Segmenter(equivit.create_model("resnet18", features_only=True), 0),
            ValueError,
            "num_classes must be a positive int",
        ),
        (lambda: FPNDecoder([8, 16], [4, 6]), ValueError, r"divide each other in order, got \[4, 6\]"),
        (lambda: FPNDecoder([8, 16], [4]), ValueError, "one reduction per map"),
        (lambda: FPNDecoder([8], [4], channels=0), ValueError, "channels must be a positive int"),
        (lambda: FPNDecoder([8, 8], [4, 8])([torch.randn(1, 8, 2, 2)]), ValueError, "built for 2 maps, got 1"),
        (lambda: AnchoredFeatures(equivit.create_model("resnet18", features_only=True), "l3"), ValueError, "'l3'"),
        (lambda: segmenter("resnet18")(torch.randn(1, 3, 40, 64)), ValueError, "40 x 64 is not a multiple of 32"),
        (lambda: segmenter("resnet18")(torch.randn(3, 64, 64)), ValueError, "images"),
    ],
)
def test_bad_input_names_the_problem(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]


def _check_dense(name: str, images: torch.Tensor, shift: tuple[int, int]) -> None:
    model = segmenter(name)
    with torch.no_grad():
        reference = model(images)
        shifted = model(torch.roll(images, shift, (2, 3)))
    assert_moves_with_shift(shifted, reference, shift, images, atol=tolerance(name))


def _dense_property(name: str) -> None:
    size = BACKBONES[name][0]

    @settings(max_examples=12, deadline=None)
    @given(
        shift=st.tuples(st.integers(0, size[0] - 1), st.integers(0, size[1] - 1)),
        family=st.sampled_from(("photos", *FAMILIES)),
        seed=st.integers(0, 2**16),
    )
    def check(shift: tuple[int, int], family: str, seed: int) -> None:
        images = photos(size) if family == "photos" else make_images(family, (2, 3, *size), seed=seed)
        _check_dense(name, images, shift)

    check()


@pytest.mark.parametrize("name", DEFAULT)
def test_full_resolution_logits_move_with_any_shift(name: str) -> None:
    _dense_property(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in BACKBONES if n not in DEFAULT])
def test_full_resolution_logits_move_with_any_shift_slow(name: str) -> None:
    _dense_property(name)


def test_every_shift_by_one_pixel_and_a_non_square_size() -> None:
    """Not a sample of shifts: each of the eight one-pixel shifts, on a 64 x 96 input."""
    images = photos((64, 96))
    for shift in ((1, 0), (0, 1), (1, 1), (-1, 0), (0, -1), (-1, -1), (1, -1), (-1, 1)):
        _check_dense("resnet18", images, shift)


@pytest.mark.parametrize(
    "variant",
    ["stock backbone, usual decoder", "converted backbone, usual decoder", "anchor not undone"],
)
def test_negative_controls_are_not_equivariant(variant: str) -> None:
    images = photos((64, 96))
    if variant == "stock backbone, usual decoder":
        model: nn.Module = segmenter("resnet18", equivariant=False)
    elif variant == "converted backbone, usual decoder":
        converted = segmenter("resnet18")
        model = Segmenter(converted.features.backbone, 4, channels=16, equivariant=False).eval()
        model.decoder.load_state_dict(converted.decoder.state_dict())
        model.classifier.load_state_dict(converted.classifier.state_dict())
    else:
        converted = segmenter("resnet18")

        def model(x: torch.Tensor) -> torch.Tensor:  # the same layers, the final roll back dropped
            maps, _ = converted.features(x)
            logits = converted.classifier(converted.decoder(maps))
            return equivit.upsample.circular_upsample(logits, converted.reduction)

    with torch.no_grad():
        reference = model(images)
        shifted = model(torch.roll(images, (1, 3), (2, 3)))
    assert (shifted - torch.roll(reference, (1, 3), (2, 3))).abs().max() > 1e-3 * reference.abs().max()


def test_gradients_reach_backbone_and_decoder_and_move_with_the_image() -> None:
    model = create_segmenter("resnet18", 3, out_indices=(1, 2, 3), channels=8)
    perturb_weights_(model.features.backbone, seed=0)
    model.eval()
    images = photos((32, 48)).clone().requires_grad_(True)
    target = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    (model(images) * target).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    grad = images.grad
    # The gradient of a shifted loss is the shifted gradient: the backward pass moves with the image too.
    shifted = torch.roll(images.detach(), (3, 5), (2, 3)).requires_grad_(True)
    (model(shifted) * torch.roll(target, (3, 5), (2, 3))).sum().backward()
    assert torch.allclose(shifted.grad, torch.roll(grad, (3, 5), (2, 3)), rtol=0, atol=1e-5 * float(grad.abs().max()))


def test_compiles_to_one_graph_with_the_eager_output() -> None:
    torch._dynamo.reset()
    model = segmenter("resnet18")
    images = photos((64, 96))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=False)
    with torch.no_grad():
        assert torch.allclose(compiled(images), model(images), rtol=0, atol=rounding_tolerance(model, images))


def test_the_public_assertion_checks_a_segmenter_at_stride_one() -> None:
    images = photos((64, 96))
    model = segmenter("resnet18")
    assert_shift_equivariant(model, images, output_stride=1, shifts_per_input=3, rtol=0, atol=tolerance("resnet18"))
    with pytest.raises(AssertionError, match="not shift-equivariant"):
        assert_shift_equivariant(segmenter("resnet18", equivariant=False), images, output_stride=1)


@pytest.mark.parametrize("images", ["random", "constant"])
def test_forward_and_training_step_read_nothing_back(images: str) -> None:
    """On the accelerator paths (CPU tensors taking a GPU's branches): no host reads, no host copies."""
    model = segmenter("pvt_v2_b0")
    batch = make_images(images, (2, 3, 64, 96), seed=0)
    with accelerator_paths():
        with torch.no_grad():
            model(batch)  # builds the index tables and weights of these shapes
            forward = count_kernel_ops(model, batch)
        model.train()

        def step() -> None:
            nn.functional.cross_entropy(model(batch), torch.zeros(2, 64, 96, dtype=torch.long)).backward()

        try:
            training = count_kernel_ops(step)
        finally:
            model.zero_grad(set_to_none=True)
            model.eval()
    assert forward.host_reads == training.host_reads == 0, forward.by_op
    assert forward.host_copies == training.host_copies == 0, forward.by_op


@settings(max_examples=5, deadline=None)
@given(
    size=st.tuples(st.sampled_from([32, 64, 96]), st.sampled_from([32, 64, 96])),
    shift=st.tuples(st.integers(-100, 100), st.integers(-100, 100)),
    seed=st.integers(0, 2**16),
)
def test_any_size_the_backbone_takes(size: tuple[int, int], shift: tuple[int, int], seed: int) -> None:
    """Square and non-square sizes, shifts larger than the image included (they wrap)."""
    images = make_images("quantised", (2, 3, *size), seed=seed)
    _check_dense("pvt_v2_b0", images, shift)
