"""torch.compile of converted models: one graph (no break), the eager outputs, the same consistency.

Anchoring decides per sample with ``torch.cond`` and gathers, never with ``.item()``, so
``fullgraph=True`` holds for every family. The ``aot_eager`` backend traces exactly what inductor
traces (dynamo and AOT autograd) without generating code; inductor itself runs in the slow tests.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from equivit.testing import load_photos
from helpers import check_consistency
from zoo import TINY, tiny_pair

# The default run compiles the families that test_convert.py does not (ViT and PCPVT are there).
DEFAULT = ["swin", "pvt_v2", "resnet", "convnext"]
SLOW = [family for family in TINY if family not in DEFAULT]


@functools.cache
def photos(size: tuple[int, int]) -> torch.Tensor:
    return load_photos(size)[:8]


def _check_compiled(family: str, backend: str) -> None:
    """One compile (static shapes: every call below has the shape of the photo batch)."""
    torch._dynamo.reset()
    stock, converted, _ = tiny_pair(family)
    images = photos(TINY[family][2])
    compiled = torch.compile(converted, fullgraph=True, backend=backend, dynamic=False)  # a break raises
    with torch.no_grad():
        expected = converted(images)
        assert torch.allclose(compiled(images), expected, rtol=0, atol=1e-5 * expected.abs().max()), family
    check_consistency(stock, compiled, images, f"{family} compiled ({backend})", shifts=1)


@pytest.mark.parametrize("family", DEFAULT)
def test_compiled_model_is_one_graph_with_eager_outputs(family: str) -> None:
    _check_compiled(family, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("family", SLOW)
def test_compiled_model_is_one_graph_with_eager_outputs_slow(family: str) -> None:
    _check_compiled(family, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("family", list(TINY))
def test_inductor(family: str) -> None:
    _check_compiled(family, "inductor")


def test_dynamo_explain_finds_no_break() -> None:
    torch._dynamo.reset()
    _, converted, images = tiny_pair("swin")
    explanation = torch._dynamo.explain(converted)(images)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_training_step_matches_eager() -> None:
    """Forward and backward compiled together: the same loss and parameter gradients as eager."""
    torch._dynamo.reset()
    _, converted, images = tiny_pair("convnext")
    converted.train()
    targets = torch.tensor([3, 7])

    def step(model: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(images), targets)
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in converted.named_parameters()}

    eager_loss, eager_grads = step(converted)
    compiled_loss, compiled_grads = step(torch.compile(converted, fullgraph=True, backend="aot_eager"))
    assert torch.allclose(compiled_loss, eager_loss, rtol=1e-6, atol=0)
    for name, grad in eager_grads.items():
        assert torch.allclose(compiled_grads[name], grad, rtol=0, atol=1e-5 * grad.abs().max() + 1e-12), name
