"""Gradients of converted models: they reach every parameter, and they are shift-invariant.

A converted classifier is invariant to circular shifts, so the gradient of a loss with respect to
its parameters is the same for an image and for any shift of it, and the gradient with respect to
the image moves with the image. Training on shifted copies therefore changes nothing.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import equivit
from equivit.layers import circular_conv2d
from zoo import ONE_PER_FAMILY, TINY, float64_rtol, heavy, tiny_pair

FAMILIES = heavy(list(TINY))
SHIFT = (5, 11)  # not a multiple of any stride or window


def _loss(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the model's logits, with timm's eval-mode attention-bias caches emptied first.

    LeViT, TinyViT, EfficientFormer and EfficientViT-MSRA cache their gathered attention biases in
    eval mode, with the autograd graph of the first call: a second backward through a stock model
    fails ("backward through the graph a second time") and a cache filled under ``no_grad`` passes
    no gradient to the biases. Emptying the caches makes each forward build its own graph.
    """
    for module in model.modules():
        if isinstance(getattr(module, "attention_bias_cache", None), dict):
            module.attention_bias_cache.clear()
    targets = torch.arange(images.shape[0]) % 10
    return nn.functional.cross_entropy(model(images), targets)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_parameter_gets_a_finite_nonzero_gradient(family: str) -> None:
    _, converted, images = tiny_pair(family)
    converted.train()
    _loss(converted, images.repeat(2, 1, 1, 1)).backward()
    missing = [name for name, p in converted.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    dead = [name for name, p in converted.named_parameters() if not p.grad.isfinite().all() or not p.grad.any()]
    assert not dead, f"zero or non-finite gradient for {dead}"


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_are_shift_invariant(family: str) -> None:
    """Parameter gradients equal for an image and its shift; the image gradient is rolled with it.

    In float64, so that the check is of the anchoring and not of float32 rounding, which deep
    CNNs with trained-looking weights amplify to about 1e-5 of the gradients' scale.
    """
    stock, converted, images = tiny_pair(family)
    stock, converted, images = stock.double(), converted.double(), images.double()
    gradients = {}
    for shift in ((0, 0), SHIFT):
        converted.zero_grad()
        x = torch.roll(images, shift, dims=(2, 3)).requires_grad_()
        _loss(converted, x).backward()
        gradients[shift] = (x.grad, {name: p.grad.clone() for name, p in converted.named_parameters()})
    (image_grad, params), (shifted_image_grad, shifted_params) = gradients[(0, 0)], gradients[SHIFT]
    scale = max(g.abs().max() for g in params.values())
    rtol = float64_rtol(family)
    for name, grad in params.items():
        assert torch.allclose(shifted_params[name], grad, rtol=0, atol=rtol * scale), name
    rolled = torch.roll(image_grad, SHIFT, dims=(2, 3))
    assert torch.allclose(shifted_image_grad, rolled, rtol=0, atol=rtol * image_grad.abs().max())
    # The stock model's parameter gradients do depend on the shift.
    stock.zero_grad()
    _loss(stock, images).backward()
    stock_grads = {name: p.grad.clone() for name, p in stock.named_parameters()}
    stock.zero_grad()
    _loss(stock, torch.roll(images, SHIFT, dims=(2, 3))).backward()
    moved = max(float((p.grad - stock_grads[name]).abs().max()) for name, p in stock.named_parameters())
    assert moved > 1e-3 * max(g.abs().max() for g in stock_grads.values())


def _gradient_penalty(model: nn.Module, x: torch.Tensor) -> None:
    """Backward of the squared norm of the image gradient (a double backward through ``model``)."""
    with sdpa_kernel(SDPBackend.MATH):
        (image_grad,) = torch.autograd.grad(_loss(model, x), x, create_graph=True)
        image_grad.square().sum().backward()


@pytest.mark.parametrize("family", heavy(ONE_PER_FAMILY))
def test_double_backward_through_the_model(family: str) -> None:
    """A gradient penalty (the norm of the image gradient) trains through every anchored layer.

    torch's fused CPU attention kernel has no double backward (stock timm models fail the same
    way), so attention runs on the math backend here.
    """
    stock, converted, images = tiny_pair(family)
    x = images.requires_grad_()
    try:
        _gradient_penalty(stock, x)
    except RuntimeError as error:
        # torch has no double backward for some activations (hard sigmoid): the converted model
        # fails as the stock one does.
        with pytest.raises(RuntimeError, match=re.escape(str(error).splitlines()[0])):
            _gradient_penalty(converted, x)
        return
    _gradient_penalty(converted, x)
    reached = [name for name, p in converted.named_parameters() if p.grad is not None and p.grad.any()]
    assert len(reached) > len(list(converted.parameters())) // 2


def test_anchoring_ops_double_backward_in_float64() -> None:
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    offsets = torch.tensor([[1, -3], [4, 2]])
    ops = {
        "polyphase_anchor": lambda t: equivit.polyphase_anchor(t, (2, 4))[0],
        "roll_to_anchor with padding": lambda t: equivit.roll_to_anchor(t, offsets, padding=(2, 5)),
        "roll_from_anchor": lambda t: equivit.roll_from_anchor(t, offsets),
    }
    for name, op in ops.items():
        assert torch.autograd.gradgradcheck(op, (x,)), name
    # Depthwise on a large grid (border strips) and dense on a grid smaller than the kernel (wraps).
    large = torch.randn(1, 3, 16, 17, dtype=torch.float64, requires_grad=True)  # 16 x the padding: strips
    depthwise = lambda t, w: circular_conv2d(t, w, None, (1, 1), (1, 1), (1, 1), 3)  # noqa: E731
    assert torch.autograd.gradgradcheck(depthwise, (large, weight)), "circular_conv2d, depthwise"
    tokens = large.detach().contiguous(memory_format=torch.channels_last).requires_grad_()  # strips, channels-last
    assert torch.autograd.gradgradcheck(depthwise, (tokens, weight)), "circular_conv2d, depthwise, channels-last"
    small = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    dense = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    conv = lambda t, w: circular_conv2d(t, w, None, (1, 1), (1, 1), (1, 1), 1)  # noqa: E731
    assert torch.autograd.gradgradcheck(conv, (small, dense)), "circular_conv2d, dense"
