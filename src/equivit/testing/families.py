"""Image families that stress shift equivariance.

Random, quantised, binary, constant, stripes, checkerboards and sparse dots; and signed content
whose polyphase components differ only in sign or in the order of their channels (+-1 stripes and
checkerboards, an image beside its negative, tokens that are channel permutations of each
other). Structured families tie polyphase energies on purpose; they are where a careless anchor
(plain ``argmax``, low-precision energies, statistics that drop the sign or the channel order)
loses exactness. Every family is built from a seed, so a failing case can be replayed.
"""

from __future__ import annotations

import torch

__all__ = ["FAMILIES", "make_images"]

FAMILIES: tuple[str, ...] = (
    "random",
    "quantised",
    "binary",
    "constant",
    "stripes",
    "checkerboard",
    "sparse_dots",
    "signed_stripes",
    "signed_checkerboard",
    "mirrored",
    "channel_permutations",
)


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """One integer in ``[low, high]`` (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _palette(generator: torch.Generator, size: int) -> torch.Tensor:
    """``size`` quantised levels ``k / 255`` (repeats allowed: equal values are a hard case)."""
    return torch.randint(0, 256, (size,), generator=generator, dtype=torch.float64) / 255


def _pattern(family: str, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """One ``(H, W)`` float64 pattern of a structured family."""
    rows = torch.arange(height)[:, None]
    cols = torch.arange(width)[None, :]
    if family == "stripes":
        orientation = _randint(generator, 0, 3)
        coordinate = (rows.expand(height, width), cols.expand(height, width), rows + cols, rows - cols)[orientation]
        palette = _palette(generator, _randint(generator, 2, 3))
        stripe = _randint(generator, 1, 8)
        return palette[torch.remainder(torch.div(coordinate, stripe, rounding_mode="floor"), len(palette))]
    if family == "checkerboard":
        palette = _palette(generator, 2)
        cell_h, cell_w = _randint(generator, 1, 8), _randint(generator, 1, 8)
        parity = torch.remainder(
            torch.div(rows, cell_h, rounding_mode="floor") + torch.div(cols, cell_w, rounding_mode="floor"), 2
        )
        return palette[parity]
    if family == "sparse_dots":
        image = torch.zeros(height * width, dtype=torch.float64)
        count = _randint(generator, 1, 4)
        positions = torch.randint(0, height * width, (count,), generator=generator)
        image[positions] = _palette(generator, _randint(generator, 1, 2)).repeat(count)[:count] + 1 / 255
        return image.view(height, width)
    raise ValueError(f"unknown image family {family!r}; choose one of {FAMILIES}")


def _signed(family: str, shape: tuple[int, int, int, int], generator: torch.Generator) -> torch.Tensor:
    """A batch of a signed family: equal magnitudes everywhere, content in the signs or the channel order."""
    batch, channels, height, width = shape
    samples = []
    for _ in range(batch):
        level = float(_palette(generator, 1)[0]) + 1 / 255
        if family in ("signed_stripes", "signed_checkerboard"):
            base = "stripes" if family == "signed_stripes" else "checkerboard"
            pattern = _pattern(base, height, width, generator)
            signs = torch.where(pattern == pattern.max(), 1.0, -1.0).to(torch.float64)
            gains = torch.randint(1, 4, (channels, 1, 1), generator=generator, dtype=torch.float64)
            samples.append(level * signs[None] * gains)
        elif family == "mirrored":
            # A quantised image in the top half and its negative in the bottom half (left/right
            # for a single row): every component has its sign-flipped twin.
            axis = 1 if height > 1 else 2
            size = (height, width)[axis - 1]
            half = size // 2
            image = torch.randint(0, 4, (channels, height, width), generator=generator, dtype=torch.float64) / 3
            if half:
                image.narrow(axis, half, half).copy_(-image.narrow(axis, 0, half))
            samples.append(image * level)
        else:  # channel_permutations: a pattern of two tokens, one the other with its channels reversed
            token = torch.randint(1, 256, (channels,), generator=generator, dtype=torch.float64) / 255
            other = token.flip(0) if channels > 1 else -token
            base = ("checkerboard", "stripes", "sparse_dots")[_randint(generator, 0, 2)]
            pattern = _pattern(base, height, width, generator)
            mask = (pattern == pattern.max()).to(torch.float64)
            samples.append(token[:, None, None] * mask + other[:, None, None] * (1 - mask))
    return torch.stack(samples) if batch else torch.zeros(shape, dtype=torch.float64)


def make_images(
    family: str,
    shape: tuple[int, int, int, int],
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """A batch of images of one family, reproducible from ``seed``.

    Args:
        family: One of :data:`FAMILIES`.
        shape: ``(B, C, H, W)``.
        seed: Seed of the generator; the same seed gives the same batch.
        dtype: Floating-point dtype of the result.
        channels_last: Return ``(B, H, W, C)`` instead.

    Returns:
        Images with values in ``[0, 1]`` (``random`` is standard normal; the signed families,
        ``mirrored`` included, lie in ``[-3, 3]``).

    Raises:
        ValueError: If the family is unknown or the shape is not 4-D.

    Shape:
        - output: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown image family {family!r}; choose one of {FAMILIES}")
    if len(shape) != 4:
        raise ValueError(f"shape must be (B, C, H, W), got {shape!r}")
    batch, channels, height, width = shape
    generator = torch.Generator().manual_seed(seed)
    if family == "random":
        images = torch.randn(shape, generator=generator, dtype=torch.float64)
    elif family == "quantised":
        levels = (2, 4, 16, 256)[_randint(generator, 0, 3)]
        images = torch.randint(0, levels, shape, generator=generator, dtype=torch.float64) / (levels - 1)
    elif family == "binary":
        images = torch.bernoulli(
            torch.full(shape, _randint(generator, 1, 9) / 10, dtype=torch.float64), generator=generator
        )
    elif family == "constant":
        images = torch.full(shape, float(_palette(generator, 1)[0]), dtype=torch.float64)
    elif family in ("signed_stripes", "signed_checkerboard", "mirrored", "channel_permutations"):
        images = _signed(family, shape, generator)
    else:
        gains = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
        patterns = [_pattern(family, height, width, generator) for _ in range(batch)]
        channel_gain = gains[torch.arange(channels) % 3][:, None, None]
        images = (
            torch.stack([pattern[None] * channel_gain for pattern in patterns])
            if batch
            else torch.zeros(shape, dtype=torch.float64)
        )
    images = images.to(dtype)
    return images.permute(0, 2, 3, 1).contiguous() if channels_last else images
