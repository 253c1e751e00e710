"""A pytest plugin that runs timm's own ``tests/test_models.py`` on a chosen set of models.

Loaded with ``-p equivit_timm_plugin`` (this folder on ``PYTHONPATH``) by ``tests/test_timm_suite.py``.
Environment:

- ``EQUIVIT_TIMM_MODELS``: comma-separated timm model names; ``timm.list_models`` returns only
  these (so timm's parametrised tests run on them alone) and ``timm.list_pretrained`` nothing
  (no downloads).
- ``EQUIVIT_TIMM_MODE``: ``stock`` leaves ``timm.create_model`` alone; ``converted`` makes it
  ``equivit.create_model`` for the chosen models, so every test builds the converted model.
"""

from __future__ import annotations

import os
from typing import Any

import pytest


def _chosen() -> list[str]:
    return [name for name in os.environ.get("EQUIVIT_TIMM_MODELS", "").split(",") if name]


def pytest_configure(config: pytest.Config) -> None:
    """Patch timm before timm's test module imports its functions."""
    import timm

    chosen = _chosen()
    list_models = timm.list_models

    def only_chosen(filter: str | list[str] = "", *args: Any, **kwargs: Any) -> list[str]:
        names = set(list_models(filter, *args, **kwargs))
        return [name for name in chosen if name in names]

    timm.list_models = only_chosen
    timm.list_pretrained = lambda *args, **kwargs: []
    if os.environ.get("EQUIVIT_TIMM_MODE") == "converted":
        import equivit

        create_model = timm.create_model

        def create(model_name: str, *args: Any, **kwargs: Any) -> Any:
            if model_name not in chosen:
                return create_model(model_name, *args, **kwargs)
            timm.create_model = create_model  # equivit.create_model calls timm's
            try:
                return equivit.create_model(model_name, *args, **kwargs)
            finally:
                timm.create_model = create

        timm.create_model = create
