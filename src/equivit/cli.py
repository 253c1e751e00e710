"""The ``equivit`` command: ``equivit check MODEL`` compares a stock timm model with its conversion.

    equivit check                                   # a ViT and a Twins on real photos
    equivit check twins_svt_small --img-size 224 448
    equivit check vit_small_patch16_224 --checkpoint vit_small.safetensors
    equivit check vit_tiny_patch16_224 --adversarial 4   # and the worst case within 4 pixels
    equivit check --list

For every model it prints, for the stock and the converted model: the share of images whose top-1
class survives random circular shifts, the same for crop shifts (two crops of a larger photo), the
largest logit change under the circular shifts, and the converted model's forward throughput
relative to the stock one; with ``--adversarial R``, the share of images whose top-1 holds for
every circular, crop and half-pixel shift within ``R`` pixels (:mod:`equivit.testing.adversarial`).
The exit status is 0 when every converted model kept every top-1
class under circular shifts, 1 when one did not, 2 on a usage error or an unsupported model.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from equivit.timing import timed

__all__ = ["main"]

DEFAULT_MODELS = ("vit_tiny_patch16_224", "twins_svt_small")


@dataclasses.dataclass(frozen=True)
class CheckRow:
    """What ``equivit check`` measured for one model (stock or converted)."""

    model: str
    variant: str
    circular: str
    crop: str
    max_logit_change: float
    speed: str
    consistent: bool
    worst_case: tuple[str, ...] = ()


def _progress(steps: Sequence[str], enabled: bool, label: str) -> Iterator[str]:
    """Yield the steps, with a progress bar showing ``label: step`` on stderr (tqdm) when enabled."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm comes with timm's dependencies
            pass
        else:
            bar = tqdm(steps, leave=False, file=sys.stderr)
            for step in bar:
                bar.set_description(f"{label}: {step}")
                yield step
            return
    yield from steps


def _throughput_ratio(
    stock: nn.Module, converted: nn.Module, size: tuple[int, int], batch: int, repeats: int, device: torch.device
) -> tuple[float, float, float]:
    """Converted / stock forward throughput of interleaved pairs of runs: the median ratio and its range.

    Returns:
        ``(median, lowest, highest)`` of the per-pair ratios (1.0 = as fast as stock).
    """
    images = torch.randn(batch, 3, *size, device=device)
    ratios: list[float] = []
    with torch.no_grad():
        for model in (stock, converted):
            model(images)  # warm-up
        for _ in range(repeats):
            stock_time = timed(lambda: stock(images), device)
            ratios.append(stock_time / timed(lambda: converted(images), device))
    return statistics.median(ratios), min(ratios), max(ratios)


def _build(
    name: str, checkpoint: str | None, size: tuple[int, int], device: torch.device
) -> tuple[nn.Module, nn.Module]:
    """The stock model (weights from ``checkpoint`` if given, loaded with ``weights_only``) and its conversion."""
    import timm

    import equivit

    try:  # ViT, DeiT and Twins take the image size; other families are refused by convert anyway
        stock = timm.create_model(name, pretrained=False, checkpoint_path=checkpoint or "", img_size=size)
    except TypeError:
        stock = timm.create_model(name, pretrained=False, checkpoint_path=checkpoint or "")
    stock = stock.to(device).eval()
    return stock, equivit.convert(stock).eval()


def _check_size(name: str, size: tuple[int, int], multiple: tuple[int, int]) -> None:
    """Raise a ``ValueError`` with the ``--img-size`` to use unless ``size`` is a multiple of ``multiple``."""
    if size[0] % multiple[0] == 0 and size[1] % multiple[1] == 0:
        return
    from equivit.report import nearest_multiple

    near = [nearest_multiple(s, m) for s, m in zip(size, multiple, strict=True)]
    raise ValueError(
        f"--img-size {size[0]} {size[1]} is not a multiple of {multiple[0]} x {multiple[1]}, which the converted "
        f"{name} needs (every stride and window on its path must divide the grid it sees); "
        f"try --img-size {near[0]} {near[1]}"
    )


def check_model(
    name: str,
    *,
    size: tuple[int, int],
    shifts: int,
    max_shift: int | None,
    crop_margin: int,
    seed: int,
    batch: int,
    repeats: int,
    device: torch.device,
    checkpoint: str | None,
    progress: bool,
    adversarial: int = 0,
) -> list[CheckRow]:
    """Measure one model, stock and converted, on the scikit-image photos.

    Raises:
        equivit.UnsupportedModelError: If the model cannot be converted.
        RuntimeError: If timm does not know the model.
    """
    from equivit.testing import crop_consistency, load_photos, shift_consistency
    from equivit.testing.adversarial import SHIFT_KINDS, worst_case_consistency

    steps = ["build", "circular shifts", "crop shifts", *(["worst-case shifts"] if adversarial else []), "speed"]
    rows: dict[str, dict[str, object]] = {"stock": {}, "equivit": {}}
    models: dict[str, nn.Module] = {}
    for step in _progress(steps, progress, name):
        if step == "build":
            torch.manual_seed(seed)
            models["stock"], models["equivit"] = _build(name, checkpoint, size, device)
            _check_size(name, size, models["equivit"].equivit_report.input_multiple)
            photos = load_photos(size).to(device)
            larger = load_photos((size[0] + crop_margin, size[1] + crop_margin)).to(device)
        elif step == "circular shifts":
            for variant, model in models.items():
                result = shift_consistency(model, photos, shifts_per_image=shifts, max_shift=max_shift, seed=seed)
                rows[variant]["circular"] = result
        elif step == "crop shifts":
            for variant, model in models.items():
                rows[variant]["crop"] = crop_consistency(model, larger, size, crops_per_image=shifts, seed=seed)
        elif step == "worst-case shifts":
            margin = load_photos((size[0] + 2 * adversarial, size[1] + 2 * adversarial)).to(device)
            for variant, model in models.items():
                rows[variant]["worst_case"] = tuple(
                    worst_case_consistency(
                        model, margin if kind == "crop" else photos, adversarial, kind=kind, crop_size=size
                    )
                    for kind in SHIFT_KINDS
                )
        else:
            ratio, low, high = _throughput_ratio(models["stock"], models["equivit"], size, batch, repeats, device)
            spread = f" ({low:.2f}-{high:.2f})" if repeats > 1 else ""
            rows["stock"]["speed"], rows["equivit"]["speed"] = "1.00", f"{ratio:.2f}{spread}"
    return [
        CheckRow(
            model=name,
            variant=variant,
            circular=_fraction(values["circular"]),
            crop=_fraction(values["crop"]),
            max_logit_change=values["circular"].max_logit_change,  # type: ignore[attr-defined]
            speed=str(values["speed"]),
            consistent=values["circular"].fraction == 1.0  # type: ignore[attr-defined]
            and all(r.robust_fraction() == 1.0 for r in values.get("worst_case", ())[:1]),  # type: ignore[attr-defined]
            worst_case=tuple(
                f"{r.robust()}/{r.total} ({100 * r.robust_fraction():.1f} %)"  # type: ignore[attr-defined]
                for r in values.get("worst_case", ())  # type: ignore[attr-defined]
            ),
        )
        for variant, values in rows.items()
    ]


def _fraction(result: object) -> str:
    return f"{result.consistent}/{result.total} ({100 * result.fraction:.1f} %)"  # type: ignore[attr-defined]


def format_table(rows: Sequence[CheckRow], radius: int = 0) -> str:
    """The rows as an aligned text table (with the worst-case columns when ``radius`` > 0)."""
    header: tuple[str, ...] = ("model", "variant", "circular shift", "crop shift", "max logit change", "speed vs stock")
    worst = tuple(f"every {kind} <= {radius} px" for kind in ("circular", "crop", "fractional")) if radius else ()
    cells = [header + worst] + [
        (row.model, row.variant, row.circular, row.crop, f"{row.max_logit_change:.2g}", row.speed, *row.worst_case)
        for row in rows
    ]
    widths = [max(len(line[column]) for line in cells) for column in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _list_supported() -> str:
    from equivit.registry import registered_families

    lines = ["Model families equivit converts, with the timm names of each (equivit.registry):"]
    total = 0
    for family in registered_families():
        names = family.model_names()
        total += len(names)
        lines.append(f"  {family.name}: {family.description} ({len(names)} names)")
        lines.append(f"    {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
    lines.append(
        f'{total} timm names in all; `python -c "import equivit.registry as r; print(r.supported_model_names())"` '
        "prints every one."
    )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="equivit", description="Exactly shift-equivariant timm models.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check",
        help="compare a stock timm model with its conversion on real photos",
        description=(__doc__ or "").split("\n\n")[2].replace("\n", " "),
    )
    check.add_argument("models", nargs="*", metavar="MODEL", help=f"timm model names (default: {DEFAULT_MODELS})")
    check.add_argument("--list", action="store_true", help="list the supported model families and exit")
    check.add_argument("--img-size", type=int, nargs="+", default=[224], metavar="PX", help="H, or H W (default 224)")
    check.add_argument("--shifts", type=int, default=2, help="shifted copies (and crop pairs) per image (default 2)")
    check.add_argument("--max-shift", type=int, default=None, help="largest circular shift per axis (default: any)")
    check.add_argument("--crop-margin", type=int, default=32, help="crops are taken from photos this much larger")
    check.add_argument(
        "--adversarial",
        type=int,
        default=0,
        metavar="R",
        help="also the share of images whose top-1 holds for EVERY circular, crop and half-pixel shift within R px",
    )
    check.add_argument("--batch", type=int, default=16, help="batch size of the speed measurement (default 16)")
    check.add_argument("--repeats", type=int, default=5, help="timed forward passes per model (default 5)")
    check.add_argument("--seed", type=int, default=0, help="seed of the weights, shifts and crops (default 0)")
    check.add_argument("--device", default="cpu", help="torch device (default cpu)")
    check.add_argument("--checkpoint", default=None, help="local stock timm checkpoint (.pth, .safetensors)")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    import equivit
    from equivit.testing import PHOTOS

    if args.list:
        print(_list_supported())
        return 0
    if args.adversarial < 0:
        print("equivit check: --adversarial takes a radius in pixels, 0 or more", file=sys.stderr)
        return 2
    if len(args.img_size) not in (1, 2):
        print("equivit check: --img-size takes H or H W", file=sys.stderr)
        return 2
    size = (args.img_size[0], args.img_size[-1])
    names = args.models or list(DEFAULT_MODELS)
    if args.checkpoint and len(names) != 1:
        print("equivit check: --checkpoint needs exactly one MODEL", file=sys.stderr)
        return 2
    if args.checkpoint and not Path(args.checkpoint).is_file():
        print(f"equivit check: checkpoint file not found: {args.checkpoint}", file=sys.stderr)
        return 2
    print(
        f"equivit {equivit.__version__}: stock timm vs converted, {len(PHOTOS)} scikit-image photos "
        f"at {size[0]} x {size[1]}, {args.shifts} random shifts per image, seed {args.seed}, device {args.device}",
        flush=True,
    )
    if args.checkpoint:
        print(f"weights: {args.checkpoint} (a stock timm checkpoint, loaded into the stock model)", flush=True)
    else:
        print(
            f"weights: random (timm's initialisation, seed {args.seed}); --checkpoint FILE checks trained weights",
            flush=True,
        )
    rows: list[CheckRow] = []
    status = 0
    for name in names:
        try:
            rows += check_model(
                name,
                size=size,
                shifts=args.shifts,
                max_shift=args.max_shift,
                crop_margin=args.crop_margin,
                seed=args.seed,
                batch=args.batch,
                repeats=args.repeats,
                device=torch.device(args.device),
                checkpoint=args.checkpoint,
                progress=not args.no_progress,
                adversarial=args.adversarial,
            )
        except equivit.UnsupportedModelError as error:
            print(f"equivit check: {name}: {error}", file=sys.stderr)
            status = 2
        except (RuntimeError, ValueError, OSError) as error:
            message = str(error) or type(error).__name__
            if message.startswith("Unknown model"):
                message = f"timm has no model named {name!r}; equivit check --list shows the models equivit converts"
            print(f"equivit check: {name}: {message}", file=sys.stderr)
            status = 2
    if rows:
        print()
        print(format_table(rows, args.adversarial))
        print()
        print("circular shift: images whose top-1 class is unchanged under random circular shifts (exact for equivit)")
        print("crop shift: pairs of crops of a larger photo with the same top-1 (new content enters at the border)")
        if args.adversarial:
            print(
                f"every ... <= {args.adversarial} px: images whose top-1 holds for every shift within "
                f"{args.adversarial} px per axis (worst case; circular: exact for equivit; crop: a window "
                "moving from the centre of a larger photo; fractional: bilinear translations by half pixels)"
            )
        print(
            "speed vs stock: converted / stock forward throughput, median of interleaved pairs of runs "
            "(their range in brackets; 1.00 = as fast as stock)"
        )
    if any(row.variant == "equivit" and not row.consistent for row in rows):
        status = max(status, 1)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
