"""Shift consistency of stock and converted timm models on many crops of real photos.

Images are random crops of the 16 scikit-image photos and scikit-learn's two sample photos (each
resized so that its shorter side is 320 pixels), so a few thousand pairs are distinct images.
Protocols, each over ``--pairs`` pairs per model:

- circular: two random circular shifts of any size of the same image (Ding et al., 2023);
- circular <= 15 px: the same with shifts of at most 15 pixels per axis;
- crop: two crops of the same photo whose corners differ by up to 32 pixels per axis;
- flip + circular: the image is mirrored left-right first, then two circular shifts;
- affine + circular: the image is rotated (up to 15 degrees) and scaled (0.9 to 1.1) first, then
  two circular shifts.

A pair is consistent when both images get the same top-1 class. The table gives, per model and
protocol, consistent pairs, the failures, the pairs whose logits moved by more than 1e-4 (more than
float32 rounding: an anchor decided differently on a near-tie, see docs/anchoring.md) and the largest
logit change within a pair. With ``--shifts K`` every image gives K - 1 pairs, so many pairs cost
fewer forward passes.

    python benchmarks/consistency.py --pairs 7500 --stock-pairs 2000 --shifts 4 --models resnet18

With ``--adversarial R`` it runs the worst-case protocol instead (:mod:`equivit.testing.adversarial`):
per model, the share of the 16 scikit-image photos whose top-1 holds for *every* circular, crop and
half-pixel shift within ``r`` pixels, for each ``r`` up to ``R``, stock vs converted, with weights
made to look trained (``perturb_weights_``, batch norms calibrated on the photos) so that the top-1
varies between photos. ``--families`` takes one example of every registered family instead of the
models above; ``--plot FILE.svg`` draws the robust share against the radius.

    python benchmarks/consistency.py --adversarial 8 --plot docs/img/adversarial.svg
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

import equivit
from equivit.testing import calibrate_batch_norms_, load_photos, perturb_weights_, random_shifts
from equivit.testing.adversarial import SHIFT_KINDS, WorstCase, worst_case_consistency

# (timm name, image size): sizes that keep a CPU run short while every family is represented
# label: (timm name, image size, extra timm arguments); sizes that keep a CPU run short while every
# family is represented. SVT needs 224 (a multiple of its 7 x 7 windows at stride 32); its half-width
# variant (same depths, windows and head size) makes a run of 30,000 pairs affordable on a CPU.
MODELS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "vit_tiny_patch16_224": ("vit_tiny_patch16_224", 96, {"img_size": 96}),
    "deit_tiny_distilled_patch16_224": ("deit_tiny_distilled_patch16_224", 96, {"img_size": 96}),
    "twins_pcpvt_small": ("twins_pcpvt_small", 96, {"img_size": 96}),
    "twins_pcpvt_small@64": ("twins_pcpvt_small", 64, {"img_size": 64}),
    "twins_svt_small": ("twins_svt_small", 224, {}),
    "swin_tiny, 4 x 4 windows": ("swin_tiny_patch4_window7_224", 128, {"img_size": 128, "window_size": 4}),
    "pvt_v2_b0": ("pvt_v2_b0", 64, {}),
    "resnet18": ("resnet18", 64, {}),
    "convnext_atto": ("convnext_atto", 64, {}),
    "twins_svt_small, half width": (
        "twins_svt_small",
        224,
        {"img_size": 224, "embed_dims": (32, 64, 128, 256), "num_heads": (1, 2, 4, 8)},
    ),
}
INEXACT = 1e-4  # a logit change above this is more than float32 rounding (about 1e-6 here)
PROTOCOLS = ("circular", "circular <= 15 px", "crop", "flip + circular", "affine + circular")
SHORT_SIDE = 320
CROP_JITTER = 32


def photo_pool() -> list[torch.Tensor]:
    """The 18 real photos, ImageNet-normalised, shorter side 320 pixels."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    from equivit.testing.photos import PHOTOS

    arrays = []
    for name in PHOTOS:
        array = getattr(data, name)()
        arrays.append(array[0] if isinstance(array, tuple) else array)
    arrays += list(load_sample_images().images)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    pool = []
    for array in arrays:
        image = torch.from_numpy(array.copy()).float()
        image = image[..., :3] if image.dim() == 3 else image[..., None].expand(*image.shape, 3)
        image = image.permute(2, 0, 1)[None] / 255
        scale = SHORT_SIDE / min(image.shape[-2:])
        size = (round(image.shape[-2] * scale), round(image.shape[-1] * scale))
        image = F.interpolate(image, size=size, mode="bilinear", antialias=True)[0]
        pool.append((image - mean) / std)
    return pool


def crops(pool: list[torch.Tensor], count: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``count`` random crops and, for each, a second crop of the same photo moved by up to 32 pixels."""
    first, second = [], []
    for _ in range(count):
        photo = pool[int(torch.randint(len(pool), (1,), generator=generator))]
        height, width = photo.shape[-2:]
        top = int(torch.randint(0, height - size - CROP_JITTER + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - size - CROP_JITTER + 1, (1,), generator=generator))
        dy, dx = (int(v) for v in torch.randint(0, CROP_JITTER + 1, (2,), generator=generator))
        first.append(photo[:, top : top + size, left : left + size])
        second.append(photo[:, top + dy : top + dy + size, left + dx : left + dx + size])
    return torch.stack(first), torch.stack(second)


@dataclasses.dataclass
class Tally:
    """Consistent pairs, pairs, pairs whose logits moved by more than rounding, the largest logit change."""

    same: int = 0
    pairs: int = 0
    inexact: int = 0
    largest: float = 0.0

    def add(self, reference: torch.Tensor, other: torch.Tensor) -> None:
        """Count the pairs (reference[i], other[i])."""
        change = (reference - other).abs().amax(dim=1)
        self.same += int((reference.argmax(dim=1) == other.argmax(dim=1)).sum())
        self.pairs += reference.shape[0]
        self.inexact += int((change > INEXACT).sum())
        self.largest = max(self.largest, float(change.max()))


@torch.no_grad()
def logits(model: nn.Module, images: torch.Tensor, batch: int) -> torch.Tensor:
    """The model's logits, ``batch`` images at a time."""
    return torch.cat([model(part) for part in images.split(batch)])


def views(protocol: str, images: torch.Tensor, jittered: torch.Tensor, shifts: int, seed: int) -> list[torch.Tensor]:
    """The views of every image that ``protocol`` compares: view 0 against each of the others."""
    count, size = images.shape[0], tuple(images.shape[-2:])
    if protocol == "crop":
        return [images, jittered]
    max_shift = 15 if protocol == "circular <= 15 px" else None
    base = {"flip + circular": images.flip(-1), "affine + circular": affine(images, seed)}.get(protocol, images)
    return [
        equivit.roll_from_anchor(base, random_shifts(count, size, max_shift=max_shift, seed=seed + index))  # type: ignore[arg-type]
        for index in range(shifts)
    ]


def affine(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Each image rotated by up to 15 degrees and scaled by 0.9 to 1.1 about its centre (reflection at the border)."""
    generator = torch.Generator().manual_seed(seed)
    count = images.shape[0]
    angle = (torch.rand(count, generator=generator) * 2 - 1) * torch.pi / 12
    scale = 0.9 + 0.2 * torch.rand(count, generator=generator)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        (torch.stack((cos, -sin, torch.zeros(count)), 1), torch.stack((sin, cos, torch.zeros(count)), 1)), 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def adversarial_models(
    families: bool, labels: list[str], names: list[str] | None = None
) -> dict[str, tuple[str, int | tuple[int, int], dict[str, Any]]]:
    """The models of the worst-case protocol: ``labels`` of :data:`MODELS`, or the first example of every family.

    ``names`` keeps only the families of those names (to resume or split a sweep).
    """
    if not families:
        return {label: MODELS[label] for label in labels}
    from equivit.registry import registered_families

    known = {family.name for family in registered_families()}
    unknown = sorted(set(names or ()) - known)
    if unknown:
        raise SystemExit(f"unknown families {unknown}; registered: {sorted(known)}")
    chosen = {}
    for family in registered_families():
        if family.examples and (not names or family.name in names):
            example = next(iter(family.examples.values()))
            chosen[f"{family.name} ({example.model_name})"] = (
                example.model_name,
                example.image_size,
                dict(example.kwargs),
            )
    return chosen


def svg_plot(curves: dict[str, dict[str, list[float]]], radius: int, path: str) -> None:
    """Robust share against radius, one panel per kind of shift: stock dashed, equivit solid (mean over models)."""
    width, height, margin = 260, 200, 40
    colours = {"stock": "#d62728", "equivit": "#1f77b4"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{3 * width + 20}" height="{height + 60}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{3 * width + 20}" height="{height + 60}" fill="white"/>',
    ]
    for panel, kind in enumerate(SHIFT_KINDS):
        left = 10 + panel * width
        inner_w, inner_h = width - margin - 10, height - margin

        def point(r: float, share: float, left: int = left, inner_w: int = inner_w, inner_h: int = inner_h) -> str:
            return f"{left + margin + inner_w * r / radius:.1f},{24 + inner_h * (1 - share):.1f}"

        parts.append(f'<text x="{left + margin + inner_w / 2}" y="14" text-anchor="middle">{kind} shifts</text>')
        parts.append(f'<polyline points="{point(0, 1)} {point(0, 0)} {point(radius, 0)}" fill="none" stroke="#444"/>')
        for tick in (0, 0.5, 1):
            parts.append(f'<text x="{left + margin - 4}" y="{24 + inner_h * (1 - tick) + 4:.1f}" '
                         f'text-anchor="end">{tick:g}</text>')  # fmt: skip
        for r in range(0, radius + 1, max(1, radius // 4)):
            x, y = point(r, 0).split(",")
            parts.append(f'<text x="{x}" y="{float(y) + 14:.1f}" text-anchor="middle">{r}</text>')
        parts.append(
            f'<text x="{left + margin + inner_w / 2}" y="{height + 10}" text-anchor="middle">radius (px)</text>'
        )
        for variant, shares in curves[kind].items():
            line = " ".join(point(r, share) for r, share in enumerate(shares))
            dash = ' stroke-dasharray="5,3"' if variant == "stock" else ""
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colours[variant]}" stroke-width="2"{dash}/>')
    for number, (variant, colour) in enumerate(colours.items()):
        y = height + 40
        x = 20 + 120 * number
        dash = ' stroke-dasharray="5,3"' if variant == "stock" else ""
        parts.append(f'<line x1="{x}" y1="{y}" x2="{x + 30}" y2="{y}" stroke="{colour}" stroke-width="2"{dash}/>')
        parts.append(f'<text x="{x + 36}" y="{y + 4}">{"stock timm" if variant == "stock" else "equivit"}</text>')
    parts.append(
        f'<text x="260" y="{height + 44}">vertical: share of photos whose top-1 holds for every shift within the '
        "radius (mean over models)</text>"
    )
    parts.append("</svg>")
    with open(path, "w") as handle:
        handle.write("\n".join(parts) + "\n")


def run_adversarial(args: argparse.Namespace) -> None:
    """The worst-case protocol: robust shares per radius, stock vs converted, as a table (and a plot)."""
    radius = args.adversarial
    models = adversarial_models(args.families, args.models, args.family_names)
    radii = sorted({r for r in (1, 2, 4, 8, 16, radius) if r <= radius})
    print(
        f"worst case within {radius} px, 16 scikit-image photos, trained-looking random weights (seed {args.seed}), "
        f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads"
    )
    print()
    columns = " | ".join(f"<= {r} px" for r in radii)
    print(f"| model | size | kind | variant | {columns} | seconds |")
    print("|---|---|---|---|" + "---|" * len(radii) + "---|")
    curves: dict[str, dict[str, list[list[float]]]] = {kind: {"stock": [], "equivit": []} for kind in SHIFT_KINDS}
    for label, (name, size, kwargs) in models.items():
        size = (size, size) if isinstance(size, int) else tuple(size)
        torch.manual_seed(args.seed)
        photos = load_photos(size)
        stock = perturb_weights_(timm.create_model(name, pretrained=False, **kwargs), seed=args.seed).eval()
        calibrate_batch_norms_(stock, photos)
        converted = equivit.convert(stock).eval()
        calibrate_batch_norms_(converted, photos)
        larger = load_photos((size[0] + 2 * radius, size[1] + 2 * radius))
        for kind in SHIFT_KINDS:
            for variant, model in (("stock", stock), ("equivit", converted)):
                start = time.perf_counter()
                result: WorstCase = worst_case_consistency(
                    model, larger if kind == "crop" else photos, radius, kind=kind, crop_size=size,
                    batch_size=args.batch,
                )  # fmt: skip
                shares = " | ".join(f"{100 * result.robust_fraction(r):.0f} %" for r in radii)
                seconds = time.perf_counter() - start
                print(f"| {label} | {size[0]}x{size[1]} | {kind} | {variant} | {shares} | {seconds:.0f} |", flush=True)
                curves[kind][variant].append([result.robust_fraction(r) for r in range(radius + 1)])
    if args.plot:
        means = {
            kind: {
                variant: [sum(c[r] for c in runs) / len(runs) for r in range(radius + 1)] for variant, runs in v.items()
            }
            for kind, v in curves.items()
        }
        svg_plot(means, radius, args.plot)
        print(f"\nplot: {args.plot}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000, help="equivit pairs per model and protocol (default 2000)")
    parser.add_argument("--stock-pairs", type=int, default=None, help="stock pairs per protocol (default: --pairs)")
    parser.add_argument(
        "--shifts",
        type=int,
        default=2,
        help="circular shifts per image (default 2, the paper's pair); with K > 2 every image gives K - 1 pairs, "
        "each shift compared with the first",
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=512, help="images held in memory at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--adversarial", type=int, default=0, metavar="R", help="the worst-case protocol up to R px")
    parser.add_argument("--families", action="store_true", help="worst case: one example of every registered family")
    parser.add_argument("--plot", default=None, metavar="FILE.svg", help="worst case: plot the robust share")
    parser.add_argument(
        "--family-names", nargs="+", default=None, metavar="NAME", help="with --families: only these families"
    )
    args = parser.parse_args()
    if args.adversarial:
        run_adversarial(args)
        return
    if args.shifts < 2:
        parser.error("--shifts must be at least 2")
    stock_pairs = args.pairs if args.stock_pairs is None else args.stock_pairs
    pool = photo_pool()
    print(
        f"{len(pool)} real photos, {args.pairs} equivit and {stock_pairs} stock pairs per model and protocol, "
        f"{args.shifts} shifts per image, random init (seed {args.seed}), torch {torch.__version__}, "
        f"timm {timm.__version__}, {torch.get_num_threads()} threads"
    )
    print()
    print("| model | size | protocol | stock pairs | stock consistent | stock max logit change | equivit pairs | "
          "equivit consistent | equivit failures | equivit pairs with logit change > 1e-4 | "
          "equivit max logit change | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label in args.models:
        name, size, kwargs = MODELS[label]
        torch.manual_seed(args.seed)
        stock = timm.create_model(name, pretrained=False, **kwargs).eval()
        converted = equivit.convert(stock).eval()
        for number, protocol in enumerate(args.protocols):
            start = time.perf_counter()
            generator = torch.Generator().manual_seed(args.seed)
            per_image = 1 if protocol == "crop" else args.shifts - 1
            stock_tally, tally = Tally(), Tally()
            chunk_index = 0
            while tally.pairs < args.pairs or stock_tally.pairs < stock_pairs:
                wanted = max(args.pairs - tally.pairs, stock_pairs - stock_tally.pairs)
                count = min(args.chunk, -(-wanted // per_image))
                images, jittered = crops(pool, count, size, generator)
                seed = args.seed + 1000 * number + 100_000 * chunk_index
                chunk_index += 1
                shifted = views(protocol, images, jittered, 2 if protocol == "crop" else args.shifts, seed)
                for model, tally_, target in ((stock, stock_tally, stock_pairs), (converted, tally, args.pairs)):
                    take = min(count, -(-(target - tally_.pairs) // per_image))
                    if take <= 0:
                        continue
                    reference = logits(model, shifted[0][:take], args.batch)
                    for view in shifted[1:]:
                        tally_.add(reference, logits(model, view[:take], args.batch))
            seconds = time.perf_counter() - start
            print(
                f"| {label} | {size} | {protocol} | {stock_tally.pairs} | "
                f"{100 * stock_tally.same / max(stock_tally.pairs, 1):.2f} % | {stock_tally.largest:.2g} | "
                f"{tally.pairs} | {100 * tally.same / max(tally.pairs, 1):.2f} % | {tally.pairs - tally.same} | "
                f"{tally.inexact} | {tally.largest:.2g} | {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
