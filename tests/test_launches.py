"""Accelerator paths on CPU tensors: no host reads in any family's forward pass or training step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equivit.device_paths import accelerator_paths
from equivit.fused import use_fused_kernels
from equivit.testing.families import make_images
from equivit.testing.launches import count_kernel_ops
from zoo import TINY, heavy, tiny_pair


@pytest.mark.parametrize("family", heavy(list(TINY)))
@pytest.mark.parametrize("images", ["random", "constant"])
def test_forward_and_training_step_read_nothing_back(family: str, images: str) -> None:
    """Natural and fully tied inputs: 0 host reads, where the CPU paths read one flag per anchor."""
    stock, converted, batch = tiny_pair(family)
    if images == "constant":  # every energy tied: the tie-break decides every anchor
        batch = make_images("constant", tuple(batch.shape), seed=0)
    with accelerator_paths():
        with torch.no_grad():
            converted(batch)  # builds the index tables of these shapes
            forward = count_kernel_ops(converted, batch)
            stock_forward = count_kernel_ops(stock, batch)
        converted.train()

        def step() -> None:
            nn.functional.cross_entropy(converted(batch), torch.zeros(batch.shape[0], dtype=torch.long)).backward()

        training = count_kernel_ops(step)
        converted.eval()
    assert forward.host_reads == 0, forward.by_op
    assert training.host_reads == 0
    assert forward.host_copies == training.host_copies == 0  # no tensor built from Python data per call
    assert forward.ops > stock_forward.ops  # the anchors are counted (the counter sees the model)


def test_host_copies_are_counted() -> None:
    """Negative control: a tensor built from Python numbers in the counted code is a host copy."""
    x = torch.ones(2)
    assert count_kernel_ops(lambda: x + torch.tensor([1.0, 2.0])).host_copies == 1
    assert count_kernel_ops(lambda: x + 1.0).host_copies == 0


def test_cpu_paths_do_read_back() -> None:
    """Negative control: the same model on the CPU paths reads one flag per anchor."""
    _, converted, batch = tiny_pair("resnet")
    with accelerator_paths(False), torch.no_grad(), use_fused_kernels(False):
        count = count_kernel_ops(converted, batch)
    assert count.host_reads > 0
