from __future__ import annotations

import os

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
torch.set_num_threads(max(1, min(4, torch.get_num_threads())))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the stock-vs-converted consistency table that the model tests collected."""
    from helpers import CONSISTENCY_ROWS

    if not CONSISTENCY_ROWS:
        return
    terminalreporter.section("circular-shift consistency on real photos: stock timm vs equivit")
    terminalreporter.write_line(f"{'model, weights':<54} {'size':<9} {'stock':<38} converted")
    for row in CONSISTENCY_ROWS:
        terminalreporter.write_line(row)
