from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
# With pytest-xdist (`-n`), the workers share the cores instead of each taking all of them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(4, torch.get_num_threads() // _WORKERS)))
_ROWS: list[str] = []  # consistency rows sent back by the xdist workers


def pytest_sessionfinish(session, exitstatus) -> None:
    """In an xdist worker, hand the consistency rows of its tests to the controller."""
    if hasattr(session.config, "workeroutput"):
        from helpers import CONSISTENCY_ROWS

        session.config.workeroutput["consistency_rows"] = list(CONSISTENCY_ROWS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """In the xdist controller, collect the rows of a worker that finished."""
    _ROWS.extend(getattr(node, "workeroutput", {}).get("consistency_rows", []))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the stock-vs-converted consistency table that the model tests collected."""
    from helpers import CONSISTENCY_ROWS

    rows = sorted(_ROWS) + CONSISTENCY_ROWS
    if not rows:
        return
    terminalreporter.section("circular-shift consistency on real photos: stock timm vs equivit")
    terminalreporter.write_line(f"{'model, weights':<54} {'size':<9} {'stock':<38} converted")
    for row in rows:
        terminalreporter.write_line(row)
