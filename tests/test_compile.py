"""torch.compile of converted models: one graph (no break), the eager outputs, the same consistency.

Anchoring decides per sample with comparisons, ``argmax`` and gathers, never with ``.item()``, so
``fullgraph=True`` holds for every family, and the graphs AOT autograd hands to inductor hold no
operator that reads the device on the host or makes inductor turn CUDA graphs off
(``mode="reduce-overhead"``). The ``aot_eager`` backend traces exactly what inductor traces
(dynamo and AOT autograd) without generating code; inductor itself compiles one family in the
default run and every family in the slow tests.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func
from torch._inductor.utils import get_first_incompatible_cudagraph_node

import equivit
from equivit.testing import load_photos, make_images
from helpers import check_consistency, rounding_tolerance
from zoo import TINY, per_policy, tiny_pair

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
        tolerance = rounding_tolerance(converted, images)
        assert torch.allclose(compiled(images), expected, rtol=0, atol=tolerance), family
    check_consistency(stock, compiled, images, f"{family} compiled ({backend})", shifts=1)


@pytest.mark.parametrize("family", DEFAULT)
def test_compiled_model_is_one_graph_with_eager_outputs(family: str) -> None:
    _check_compiled(family, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("family", SLOW)
def test_compiled_model_is_one_graph_with_eager_outputs_slow(family: str) -> None:
    _check_compiled(family, "aot_eager")


def test_inductor_compiles_a_converted_model() -> None:
    """Inductor generates code for the anchors (its 64-bit index arithmetic overflowed on tables built in the graph)."""
    _check_compiled("resnet", "inductor")


@pytest.mark.slow
@pytest.mark.parametrize("family", [family for family in TINY if family != "resnet"])
def test_inductor(family: str) -> None:
    _check_compiled(family, "inductor")


def _offsets_4x8(x: torch.Tensor) -> torch.Tensor:
    return equivit.anchor_offsets(x, (4, 8))


def test_compiled_anchor_matches_eager_on_tied_and_natural_inputs() -> None:
    """Inductor's always-run tie-break chooses as eager's CPU path (tie-break on tied samples only)."""
    torch._dynamo.reset()
    compiled = torch.compile(_offsets_4x8, fullgraph=True, backend="inductor", dynamic=False)
    for seed, family in enumerate(("random", "binary", "signed_checkerboard", "constant", "sparse_dots")):
        x = make_images(family, (4, 3, 32, 48), seed=seed)
        assert torch.equal(compiled(x), _offsets_4x8(x)), family


# Operators that read a device value on the host or size their output by the data.
_HOST_READS = {"_local_scalar_dense", "item", "nonzero", "masked_select", "unique", "_unique2", "equal"}


def _aot_graphs(model: nn.Module, images: torch.Tensor, train: bool) -> list[torch.fx.GraphModule]:
    """The forward (and backward) graphs that AOT autograd would hand to inductor for ``model``."""
    graphs: list[torch.fx.GraphModule] = []

    def capture(graph: torch.fx.GraphModule, _: object) -> object:
        graphs.append(graph)
        return make_boxed_func(graph.forward)

    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=capture, bw_compiler=capture)
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend=backend)
    if train:
        model.train()
        compiled(images).square().mean().backward()
    else:
        with torch.no_grad():
            compiled(images)
    return graphs


# The backward graphs of one token and one CNN policy in the default run (each compile is 15-40 s
# on two cores); every example's, for both passes, in the slow set.
TRAINING_BY_DEFAULT = {"vit", "resnet"}


def _cuda_graph_cases() -> list[object]:
    """(example, train) for every example: inference as :func:`per_policy` marks it, training slow beyond a few."""
    cases = []
    for train in (False, True):
        for case in per_policy(list(TINY)):
            key = case if isinstance(case, str) else case.values[0]
            slow = not isinstance(case, str) or (train and key not in TRAINING_BY_DEFAULT)
            marks = [pytest.mark.slow] if slow else []
            cases.append(pytest.param(key, train, marks=marks, id=f"{key}-{'training' if train else 'inference'}"))
    return cases


@pytest.mark.parametrize(("family", "train"), _cuda_graph_cases())
def test_compiled_graphs_allow_cuda_graphs(family: str, train: bool) -> None:
    """No host read in the compiled graphs and nothing for which inductor would skip CUDA graphs."""
    _, converted, images = tiny_pair(family)
    graphs = _aot_graphs(converted, images, train)
    assert len(graphs) == (2 if train else 1), family
    for graph in graphs:
        unsafe = get_first_incompatible_cudagraph_node(graph)
        assert unsafe is None, f"{family}: {unsafe.format_node() if unsafe else ''}"
        targets = {getattr(node.target, "__name__", str(node.target)).split(".")[0] for node in graph.graph.nodes}
        assert not targets & _HOST_READS, (family, targets & _HOST_READS)


def test_cuda_graph_check_catches_a_host_read() -> None:
    """Negative control: a module that reads a value on the host is caught by the checks above."""

    class ReadsTheHost(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[: int((x > 0).sum())]

    torch._dynamo.config.capture_scalar_outputs = True
    try:
        graphs = _aot_graphs(ReadsTheHost(), torch.randn(6), train=False)
    finally:
        torch._dynamo.config.capture_scalar_outputs = False
    assert any(get_first_incompatible_cudagraph_node(graph) is not None for graph in graphs)


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
