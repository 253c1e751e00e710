"""Census: which of timm's model families equivit converts, checked on real photos.

For every timm model module (one family of networks, 98 in timm 1.0) the smallest model that a
registered family takes (by parameter count, not counting timm's ``test_*`` configurations; the
smallest of the module when none is taken) is
built with random weights made to look trained (:func:`equivit.testing.perturb_weights_`, batch
norms calibrated on the photos), converted, and run on real photos (scikit-image) under random
circular shifts, beside the stock model:

- **exact**: every top-1 prediction survives every shift and the logits move by float32
  rounding only (at most ``1e-4`` of the logit scale);
- **refused**: the family's documented reason, or, for a module no family covers, the module
  types the equivariance audit flags in the stock model (what a family would have to replace).

The table goes into docs/convert.md between the ``census`` markers (``--write``) and is printed.

    python benchmarks/census.py --write            # every module, about 10 minutes on 2 CPU cores
    python benchmarks/census.py --modules dla hrnet
    python benchmarks/census.py --update --modules dla   # rerun these rows, keep the others
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import time
import warnings
from collections import Counter
from pathlib import Path

import timm
import torch
from torch import nn

import equivit
from equivit.audit import equivariance_violations
from equivit.registry import Family, registered_families
from equivit.testing import calibrate_batch_norms_, load_photos, perturb_weights_, shift_consistency

DOCS = Path(__file__).resolve().parent.parent / "docs" / "convert.md"
START, END = "<!-- census:start -->", "<!-- census:end -->"
EXACT = 1e-4  # largest logit change, relative to the largest logit, that counts as float32 rounding
PHOTOS = 8
SHIFTS = 3


@dataclasses.dataclass
class Row:
    """One timm module in the census."""

    module: str
    family: str
    model: str
    converts: int
    names: int
    status: str
    size: int = 0
    stock: str = ""
    converted: str = ""
    seconds: float = 0.0


def _parameters(name: str) -> int:
    """Parameter count of a timm model, built on the meta device (no memory, no time)."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False)
    return sum(p.numel() for p in model.parameters())


def _family(names: list[str]) -> Family | None:
    """The registered family that takes most of ``names``, or None."""
    counts = Counter(family.name for name in names for family in registered_families() if family.takes(name))
    if not counts:
        return None
    best = counts.most_common(1)[0][0]
    return next(family for family in registered_families() if family.name == best)


def _audit_reason(name: str) -> str:
    """For a module no family covers: the module types the audit flags in the stock model."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False)
    violations = equivariance_violations(model)
    # What breaks equivariance in known parts first (padding, strides, position embeddings), then
    # the block types a family would have to take apart.
    known = Counter(problem.split(" (")[0] for _, _, problem in violations if problem != "unknown module type")
    unknown = Counter(kind for _, kind, problem in violations if problem == "unknown module type")
    parts = [f"{problem} x {count}" for problem, count in known.most_common(3)]
    if unknown:
        parts.append("unknown to the audit: " + ", ".join(kind for kind, _ in unknown.most_common(3)))
    return "no family; " + "; ".join(parts) if parts else "no family"


def _excluded_reason(family: Family, name: str) -> str:
    """The documented reason a family gives for refusing ``name``."""
    import fnmatch

    return next((why for pattern, why in family.excluded.items() if fnmatch.fnmatchcase(name, pattern)), "refused")


def _image_size(model: nn.Module, multiple: int) -> int:
    """The model's default input size, at most 224 where the model runs at that size, rounded up to ``multiple``.

    Models built for one size (fixed position terms) and models whose blocks need more (HaloNet's
    8 x 8 blocks at stride 32: 256) keep their own.
    """
    default = int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    for size in dict.fromkeys((min(default, 224), default)):
        size = max(multiple, math.ceil(size / multiple) * multiple)
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
        except (AssertionError, RuntimeError, ValueError):
            continue
        return size
    return max(multiple, math.ceil(default / multiple) * multiple)


def _run(model: nn.Module, photos: torch.Tensor) -> tuple[str, float, float]:
    """(text, top-1 fraction, largest logit change relative to the logit scale) under random shifts."""
    with torch.no_grad():
        scale = float(model(photos).abs().max())
        result = shift_consistency(model, photos, shifts_per_image=SHIFTS, seed=1)
    relative = result.max_logit_change / max(scale, 1e-12)
    return f"{100 * result.fraction:.0f} %, {relative:.0e}", result.fraction, relative


def census_row(module: str) -> Row:
    """Build, convert and check the smallest model of one timm module."""
    started = time.perf_counter()
    names = timm.list_models(module=module)
    family = _family(names)
    taken = [name for name in names if family is not None and family.takes(name)]
    candidates = taken or names
    real = [name for name in candidates if not name.startswith("test_")]  # timm's tiny test configurations
    model_name = min(real or candidates, key=_parameters)
    row = Row(module, family.name if family else "", model_name, len(taken), len(names), "")
    if family is None:
        row.status = f"refused: {_audit_reason(model_name)}"
        return row
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stock = timm.create_model(model_name, pretrained=False).eval()
    perturb_weights_(stock)
    try:
        converted = equivit.convert(stock).eval()
    except equivit.UnsupportedModelError as error:
        row.status = f"refused: {str(error).splitlines()[0]}"
        return row
    multiple = math.lcm(*converted.equivit_report.input_multiple)
    row.size = _image_size(stock, multiple)
    photos = load_photos(row.size)[:PHOTOS]
    calibrate_batch_norms_(stock, photos)
    calibrate_batch_norms_(converted, photos)
    row.stock, _, _ = _run(stock, photos)
    row.converted, fraction, relative = _run(converted, photos)
    row.status = "exact" if fraction == 1.0 and relative <= EXACT else "NOT EXACT"
    row.seconds = time.perf_counter() - started
    return row


def table(rows: list[Row]) -> str:
    """The census as a markdown table, with a summary line."""
    exact = [row for row in rows if row.status == "exact"]
    names = sum(row.converts for row in exact)
    total = sum(row.names for row in rows)
    lines = [
        f"{len(exact)} of {len(rows)} timm model modules convert exactly, {names} of {total} model names "
        f"({100 * names / max(total, 1):.0f} %); timm {timm.__version__}, torch {torch.__version__.split('+')[0]}. "
        f"Top-1 kept and largest logit change (relative to the largest logit) over {PHOTOS} photos x {SHIFTS} "
        "random circular shifts, float32, random weights made to look trained.",
        "",
        "| timm module | family | names | model | size | stock | converted | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        status = row.status.replace("|", "/")
        size = str(row.size) if row.size else ""
        lines.append(
            f"| {row.module} | {row.family} | {row.converts}/{row.names} | {row.model} | {size} | {row.stock} | "
            f"{row.converted} | {status} |"
        )
    return "\n".join(lines)


def write(text: str, path: Path = DOCS) -> None:
    """Replace what is between the census markers of ``path`` with ``text``."""
    page = path.read_text()
    if START not in page or END not in page:
        raise SystemExit(f"{path} has no {START} ... {END} markers")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    path.write_text(pattern.sub(lambda _: f"{START}\n{text}\n{END}", page))


def rows_in_docs(path: Path = DOCS) -> list[Row]:
    """The rows of the census table now in ``path`` (for ``--update``: rerun some modules, keep the rest)."""
    page = path.read_text()
    block = page[page.index(START) : page.index(END)]
    rows = []
    for line in block.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 8 or cells[0] in ("timm module", "---"):
            continue
        module, family, names, model, size, stock, converted, status = cells
        converts, total = (int(n) for n in names.split("/"))
        rows.append(Row(module, family, model, converts, total, status, int(size) if size else 0, stock, converted))
    return rows


def main() -> None:
    """Run the census over the modules asked for (default: all of timm's)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="*", help="timm model modules (default: all)")
    parser.add_argument("--write", action="store_true", help=f"write the table into {DOCS.name}")
    parser.add_argument(
        "--update", action="store_true", help=f"rerun --modules only and write them into the table of {DOCS.name}"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    modules = args.modules or sorted(timm.list_modules())
    rows = []
    for module in modules:
        try:
            row = census_row(module)
        except Exception as error:  # a model that does not build or run here: say so, go on
            row = Row(module, "", "", 0, len(timm.list_models(module=module)), f"error: {type(error).__name__}")
        rows.append(row)
        print(f"{row.module:28s} {row.status[:90]:90s} {row.converted:14s} {row.seconds:5.1f} s", flush=True)
    if args.update:
        fresh = {row.module: row for row in rows}
        kept = [row for row in rows_in_docs() if row.module not in fresh]
        rows = sorted([*kept, *fresh.values()], key=lambda row: row.module)
    text = table(rows)
    print(text)
    if args.write or args.update:
        write(text)


if __name__ == "__main__":
    main()
