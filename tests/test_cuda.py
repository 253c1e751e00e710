"""On a CUDA device: exact under shifts, no host sync in a forward pass or a training step, CUDA graphs.

These run only where a CUDA device is present (``pytest -m cuda``, or ``benchmarks/gpu_check.sh``,
which runs them with the GPU benchmarks). Without one, ``tests/test_launches.py`` counts the same
host reads along the same branches on CPU tensors, and ``tests/test_compile.py`` checks the
compiled graphs for what would turn CUDA graphs off.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from equivit.testing import load_photos, make_images
from helpers import check_consistency
from zoo import ONE_PER_FAMILY, TINY, tiny_pair

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)"),
]


def _on_cuda(family: str) -> tuple[nn.Module, nn.Module, nn.Module, torch.Tensor]:
    """Stock and converted on the GPU, the converted model on the CPU, and real photos on the GPU."""
    stock, converted, _ = tiny_pair(family)
    on_cpu = copy.deepcopy(converted)
    images = load_photos(TINY[family][2])[:8].cuda()
    return stock.cuda(), converted.cuda(), on_cpu, images


def _without_sync(function: object, *args: object) -> object:
    """Run ``function(*args)`` with CUDA's sync debug mode raising on any host synchronisation."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return function(*args)  # type: ignore[operator]
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("family", list(TINY))
def test_cuda_forward_is_exact_agrees_with_the_cpu_and_never_syncs(family: str) -> None:
    stock, converted, on_cpu, images = _on_cuda(family)
    check_consistency(stock, converted, images, f"{family} on CUDA", shifts=2, stock_must_move=False)
    with torch.no_grad():
        for name in ("random", "constant", "signed_checkerboard"):  # natural and fully tied inputs
            batch = make_images(name, tuple(images.shape), seed=1).cuda()
            converted(batch)  # builds the index tables of this shape (a copy to the device)
            _without_sync(converted, batch)
        on_gpu = converted(images).cpu()
        reference = on_cpu(images.cpu())
    assert torch.equal(on_gpu.argmax(1), reference.argmax(1)), family
    torch.testing.assert_close(on_gpu, reference, rtol=1e-3, atol=1e-3 * float(reference.abs().max()))


@pytest.mark.parametrize("family", list(TINY))
def test_cuda_training_step_never_syncs(family: str) -> None:
    _, converted, _, images = _on_cuda(family)
    converted.train()
    labels = torch.arange(images.shape[0], device="cuda") % 10

    def step() -> None:
        loss = nn.functional.cross_entropy(converted(images), labels)
        loss.backward()

    step()  # tables
    converted.zero_grad(set_to_none=True)
    _without_sync(step)
    assert all(p.grad is not None for p in converted.parameters() if p.requires_grad)


@pytest.mark.parametrize("family", ONE_PER_FAMILY)
def test_reduce_overhead_captures_cuda_graphs(family: str) -> None:
    from torch._dynamo.utils import counters

    _, converted, _, images = _on_cuda(family)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(converted, mode="reduce-overhead", fullgraph=True, dynamic=False)
    with torch.no_grad():
        expected = converted(images)
        for _ in range(3):  # warm-up, record, replay
            out = compiled(images).clone()
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    check_consistency(converted, compiled, images, f"{family} reduce-overhead", shifts=1)
