"""The XCiT family: timm ``Xcit`` (cross-covariance image transformers, ``xcit_*``)."""

from __future__ import annotations

import torch
from timm.models import xcit as timm_xcit
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.xcit import ConvPatchEmbed, Xcit
from torch import nn

from equivit.cnn_policy import convert_convolutions
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import anchor_patch_tokens, patch_token_map, roll_back_patch_tokens

__all__ = ["FAMILY", "EquivariantXcit", "convert_xcit"]


@equivariant_layer(
    period="grid", anchored_children=("pos_embed", "blocks", "cls_attn_blocks", "norm", "head"), fx="traced"
)
class EquivariantXcit(Xcit):
    """timm's ``Xcit`` whose blocks see the patch tokens from an origin chosen by content.

    The convolutional patch embedding is anchored at each strided convolution and pads
    circularly, so a circular shift of the image by a multiple of the patch size moves the token
    grid by whole tokens (and any shift moves it by some roll). The token grid is then anchored
    with period = the whole grid (:mod:`equivit.token_grid`) before the Fourier position encoding
    is added; timm's blocks (cross-covariance attention, the local patch interaction's zero-padded
    depthwise convolutions, class attention) run unchanged in that content-chosen frame. Patch
    tokens are rolled back for ``forward_features`` and ``forward_intermediates``. Same parameters
    and state-dict keys as timm's.
    """

    def _anchored_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Embed, anchor the grid, add the position encoding: ``(tokens, offsets, height, width)``."""
        batch = x.shape[0]
        tokens, (height, width) = self.patch_embed(x)
        grid, offsets = anchor_patch_tokens(tokens.reshape(batch, height, width, -1), self.equivit_energy)
        tokens = grid.reshape(batch, height * width, -1)
        if self.pos_embed is not None:
            encoding = self.pos_embed(batch, height, width).reshape(batch, -1, tokens.shape[1]).permute(0, 2, 1)
            tokens = tokens + encoding
        return self.pos_drop(tokens), offsets, height, width

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The class token (if any), then the patch tokens in the image's frame, normed.

        Args:
            x: Images; ``H`` and ``W`` multiples of the patch size.

        Returns:
            The tokens.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, P + H W / p^2, D)`
        """
        x, offsets, height, width = self._anchored_tokens(x)
        for block in self.blocks:
            if not torch.jit.is_scripting() and self.grad_checkpointing:
                x = checkpoint(block, x, height, width)
            else:
                x = block(x, height, width)
        prefix = 0
        if self.cls_attn_blocks is not None:
            x = self.forward_cls(x)
            prefix = 1
        return roll_back_patch_tokens(self.norm(x), offsets, height, width, prefix)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs as maps that move with the image, as timm's ``forward_intermediates``.

        Args:
            x: Images; ``H`` and ``W`` multiples of the patch size.
            indices: The last ``n`` blocks if an int, else the block indices to return.
            norm: Apply the final norm to the intermediates.
            stop_early: Stop after the last block asked for.
            output_fmt: ``"NCHW"`` or ``"NLC"``.
            intermediates_only: Return the intermediates alone.

        Returns:
            The intermediates, or the final tokens (as :meth:`forward_features`) and the intermediates.

        Raises:
            ValueError: If ``output_fmt`` is neither ``"NCHW"`` nor ``"NLC"``.
        """
        if output_fmt != "NCHW" and output_fmt != "NLC":
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        x, offsets, height, width = self._anchored_tokens(x)
        maps: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            if stop_early and index > last:
                break
            if not torch.jit.is_scripting() and self.grad_checkpointing:
                x = checkpoint(block, x, height, width)
            else:
                x = block(x, height, width)
            if index in take:
                maps.append(patch_token_map(self.norm(x) if norm else x, offsets, height, width, 0, output_fmt))
        if intermediates_only:
            return maps
        prefix = 0
        if self.cls_attn_blocks is not None:
            x = self.forward_cls(x)
            prefix = 1
        return roll_back_patch_tokens(self.norm(x), offsets, height, width, prefix), maps


def convert_xcit(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``Xcit`` shift-equivariant, in place. No parameter is added or renamed.

    The strided convolutions of the patch embedding are anchored (period = their stride) and pad
    circularly (:func:`~equivit.cnn_policy.convert_convolutions`); the model becomes an
    :class:`EquivariantXcit`, which anchors the token grid with period = the grid. Inputs must be
    multiples of the patch size.

    Args:
        model: An ``Xcit``, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the patch embedding is not timm's ``ConvPatchEmbed``.
    """
    if type(model.patch_embed) is not ConvPatchEmbed:
        raise UnsupportedModelError(f"patch_embed: {type(model.patch_embed).__name__} is not timm's ConvPatchEmbed")
    stride = convert_convolutions(model.patch_embed, report, energy)
    report.input_multiple = (stride, stride)
    model.__class__ = EquivariantXcit
    model.equivit_energy = energy
    report.add(
        "",
        "Xcit",
        "EquivariantXcit (token grid anchored with period = grid; Fourier position encoding and local patch "
        "interaction kept; patch tokens rolled back)",
    )


FAMILY = Family(
    name="xcit",
    description="XCiT (xcit_*)",
    model_classes=(Xcit,),
    converted_classes=(EquivariantXcit,),
    convert=convert_xcit,  # type: ignore[arg-type]
    entry="patch_embed",
    accepted=module_types(timm_xcit),
    timm_modules=("xcit",),
    examples={
        "xcit": Example(
            "xcit_nano_12_p16_224",
            {"img_size": 64, "embed_dim": 32, "depth": 3, "num_heads": 2, "cls_attn_layers": 1},
            (64, 96),
            quick=False,  # the token-grid policy is tested on eva02
        ),
        "xcit_p8": Example(
            "xcit_nano_12_p8_224",
            {"img_size": 32, "embed_dim": 32, "depth": 3, "num_heads": 2, "cls_attn_layers": 1},
            (32, 48),
            quick=False,
        ),
    },
)
