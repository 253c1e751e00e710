"""The code examples in the documentation run and do what they say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.DOTALL)


def test_own_model_example_in_convert_guide() -> None:
    blocks = [block for block in python_blocks("convert.md") if "class TinyViT" in block]
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/convert.md", "exec"), {})  # raises if the model is not shift-invariant


def test_family_registration_example_in_convert_guide() -> None:
    blocks = [block for block in python_blocks("convert.md") if "register_family(" in block]
    assert len(blocks) == 1
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], "docs/convert.md", "exec"), namespace)  # raises if the model is not shift-invariant
    from equivit.registry import registered_families

    assert "small_net" not in {family.name for family in registered_families()}  # unregistered at its end


def test_grid_anchored_family_example_in_convert_guide() -> None:
    blocks = [block for block in python_blocks("convert.md") if "convert_grid_anchored" in block]
    assert len(blocks) == 1
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], "docs/convert.md", "exec"), namespace)
    from equivit.families.davit import FAMILY

    assert namespace["convert"].keywords == FAMILY.convert.keywords | {"converted": namespace["EquivariantDaVit"]}


@pytest.mark.parametrize("page", ["testing.md"])
def test_testing_guide_examples(page: str) -> None:
    for block in python_blocks(page):
        namespace: dict[str, object] = {}
        exec(compile(block, f"docs/{page}", "exec"), namespace)
        for name, value in list(namespace.items()):
            if name.startswith("test_") and callable(value):
                value()  # hypothesis-decorated tests run their examples


def test_index_and_readme_snippets_run() -> None:
    """The first code a reader sees runs as written (the README's asserts shift invariance)."""
    for page, block in [("index.md", python_blocks("index.md")[0]), ("README.md", _readme_block())]:
        exec(compile(block, page, "exec"), {})


def _readme_block() -> str:
    text = (DOCS.parent / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)[0]


def test_dense_prediction_examples() -> None:
    blocks = python_blocks("dense.md")
    assert len(blocks) == 2
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], "docs/dense.md", "exec"), namespace)
    logits, shifted = namespace["logits"], namespace["shifted"]
    import torch

    assert logits.shape == (2, 11, 64, 96)
    assert float((shifted - torch.roll(logits, (5, -3), dims=(2, 3))).abs().max()) <= 1e-4 * float(logits.abs().max())
    # The decoder sketch runs once its head and images are given.
    head = torch.nn.Conv2d(32, 4, 3, padding=1, padding_mode="circular")
    sketch = {"head": lambda maps: head(maps[0]), "images": torch.randn(1, 3, 64, 64), "equivit": namespace["equivit"]}
    exec(compile(blocks[1], "docs/dense.md", "exec"), sketch)
    assert sketch["logits"].shape == (1, 4, 64, 64)
