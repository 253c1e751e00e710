"""Token sequences on a grid anchored with period = the whole grid (the canonical frame of a single-grid model).

A transformer whose blocks all see one token grid (EVA, BEiT, CaiT, ...) may hold any position
terms (absolute embeddings, rotary embeddings, relative biases over the whole grid): once the
patch tokens are rolled to an origin chosen from content (a polyphase anchor with period = the
grid), a circular shift of the image reaches the blocks as the same sequence, bit for bit, and
everything after that point is invariant. The patch tokens are rolled back at the end so that
token maps move with the image; prefix tokens (class, register) are left where they are.

These are the two steps; a family's converted class calls them around timm's own blocks.
"""

from __future__ import annotations

import torch
from timm.layers import Format, PatchEmbed
from torch import nn

from equivit.anchor_core import anchor, roll_back
from equivit.energy import Energy
from equivit.layers.patch_embed import AnchoredPatchEmbed
from equivit.report import ConversionReport, UnsupportedModelError

__all__ = [
    "anchor_patch_tokens",
    "anchored_grid_embedding",
    "check_grid_size",
    "patch_token_map",
    "roll_back_patch_tokens",
]


def anchored_grid_embedding(
    patch_embed: nn.Module, report: ConversionReport, energy: Energy, *, name: str = "patch_embed"
) -> AnchoredPatchEmbed:
    """Timm's ``PatchEmbed`` anchored with period = patch size, returning the token grid ``(B, H, W, C)``.

    Shares the projection and norm (no copy); records the change and the input multiple.

    Args:
        patch_embed: The model's patch embedding.
        report: Where the change is recorded (``input_multiple`` = the patch size).
        energy: Energy that picks the anchor.
        name: Its path in the model, for the report and the messages.

    Returns:
        The anchored embedding, with output format ``NHWC``.

    Raises:
        UnsupportedModelError: If it is not timm's ``PatchEmbed`` with a ``Conv2d`` projection of
            non-overlapping patches (kernel = stride, no padding).
    """
    if type(patch_embed) is not PatchEmbed or type(patch_embed.proj) is not nn.Conv2d:
        raise UnsupportedModelError(
            f"{name}: {type(patch_embed).__name__} is not timm's PatchEmbed with a Conv2d projection"
        )
    proj = patch_embed.proj
    if tuple(proj.kernel_size) != tuple(proj.stride) or any(p != 0 for p in proj.padding):  # type: ignore[union-attr]
        raise UnsupportedModelError(
            f"{name}.proj: kernel {tuple(proj.kernel_size)}, stride {tuple(proj.stride)}: only non-overlapping "
            "patches (kernel = stride, no padding) are supported"
        )
    report.input_multiple = (int(proj.stride[0]), int(proj.stride[1]))
    anchored = AnchoredPatchEmbed.from_patch_embed(patch_embed, pos_conv=False, energy=energy)
    anchored.flatten = False
    anchored.output_fmt = Format.NHWC
    report.add(name, "PatchEmbed", "AnchoredPatchEmbed (anchored projection, period = patch size)")
    return anchored


def check_grid_size(grid: torch.Tensor, expected: tuple[int, int], patch: tuple[int, int], image: list[int]) -> None:
    """Refuse a token grid of another size than the model's fixed one, naming the image size it takes.

    Args:
        grid: The token grid.
        expected: The model's grid size.
        patch: The patch size.
        image: The input's ``[H, W]``.

    Raises:
        ValueError: If the grid is not ``expected``.

    Shape:
        - grid: :math:`(B, H, W, C)`
    """
    if grid.shape[1] != expected[0] or grid.shape[2] != expected[1]:
        raise ValueError(
            f"this model takes {expected[0] * patch[0]} x {expected[1] * patch[1]} images (its position terms "
            f"are fixed), got {image[0]} x {image[1]}; create it with img_size=(H, W) for another size"
        )


def anchor_patch_tokens(grid: torch.Tensor, energy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll a token grid so that its content-chosen origin comes first.

    Args:
        grid: Patch tokens on their grid.
        energy: ``"l1"`` or ``"l2"``, the energy that picks the origin.

    Returns:
        The pair ``(grid, offsets)``: the rolled grid, and each sample's origin ``(i, j)``.

    Raises:
        ValueError: If ``grid`` is not a 4-D floating-point map.

    Shape:
        - grid: :math:`(B, H, W, C)`
        - output: :math:`(B, H, W, C)` and :math:`(B, 2)`
    """
    return anchor(grid, grid.shape[1], grid.shape[2], energy, True)


def roll_back_patch_tokens(
    tokens: torch.Tensor, offsets: torch.Tensor, height: int, width: int, prefix: int
) -> torch.Tensor:
    """Roll the patch tokens of a sequence back to the frame of the image; prefix tokens stay first.

    Args:
        tokens: ``prefix`` tokens, then the patch tokens of an ``height x width`` grid, row-major.
        offsets: The origins :func:`anchor_patch_tokens` returned.
        height: Rows of the grid.
        width: Columns of the grid.
        prefix: How many tokens precede the patch tokens.

    Returns:
        The sequence with its patch tokens in the image's frame.

    Shape:
        - tokens: :math:`(B, P + H W, C)`
        - offsets: :math:`(B, 2)`
        - output: :math:`(B, P + H W, C)`
    """
    batch = tokens.shape[0]
    patches = tokens[:, prefix:].reshape(batch, height, width, tokens.shape[-1])
    patches = roll_back(patches, offsets, True).reshape(batch, height * width, tokens.shape[-1])
    if prefix == 0:
        return patches
    return torch.cat([tokens[:, :prefix], patches], dim=1)


def patch_token_map(
    tokens: torch.Tensor, offsets: torch.Tensor, height: int, width: int, prefix: int, output_fmt: str
) -> torch.Tensor:
    """The patch tokens of an anchored sequence as a map in the image's frame (an intermediate feature).

    Args:
        tokens: ``prefix`` tokens, then the patch tokens in the anchored frame.
        offsets: The origins :func:`anchor_patch_tokens` returned.
        height: Rows of the grid.
        width: Columns of the grid.
        prefix: How many tokens precede the patch tokens.
        output_fmt: ``"NCHW"`` for a map, ``"NLC"`` for a sequence.

    Returns:
        The patch tokens, rolled back.

    Shape:
        - tokens: :math:`(B, P + H W, C)`
        - output: :math:`(B, C, H, W)` for ``"NCHW"``, :math:`(B, H W, C)` for ``"NLC"``
    """
    batch, channels = tokens.shape[0], tokens.shape[-1]
    patches = roll_back(tokens[:, prefix:].reshape(batch, height, width, channels), offsets, True)
    if output_fmt == "NCHW":
        return patches.permute(0, 3, 1, 2).contiguous()
    return patches.reshape(batch, height * width, channels)
