"""The digits training benchmark: two DistributedDataParallel processes agree with one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_digits.py"
ARGS = ["--models", "vit", "--steps", "3", "--batch", "8", "--seed", "5", "--optimizer", "sgd"]


def _run(command: list[str], state: Path) -> dict[str, dict[str, torch.Tensor]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    subprocess.run([*command, str(SCRIPT), *ARGS, "--save-state", str(state)], check=True, cwd=ROOT, env=env)
    return torch.load(state, weights_only=True)


@pytest.mark.slow  # two training runs, one of them in two processes: over a minute on two cores
def test_two_processes_agree_with_one(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    single = _run([sys.executable], tmp_path / "single.pt")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    double = _run(torchrun, tmp_path / "double.pt")
    assert single.keys() == double.keys() == {"vit stock", "vit equivit"}
    for name, state in single.items():
        assert state.keys() == double[name].keys()
        for key, value in state.items():
            torch.testing.assert_close(double[name][key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
    # the converted model starts as a copy of the stock one: different heads mean both were trained
    assert not torch.equal(single["vit stock"]["head.weight"], single["vit equivit"]["head.weight"])
