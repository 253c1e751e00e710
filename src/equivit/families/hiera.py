"""The Hiera family: timm's ``hiera`` module (hierarchical vision transformers).

Hiera adds an absolute position embedding, attends within mask units (fixed windows of the token
grid) and pools queries over fixed groups of tokens; all tie it to positions on the grid. The patch
embedding's strided convolution is anchored (circular padding) and its map is anchored with
period = the map, so the blocks see the same tokens for every circular shift of the image and run
as timm wrote them. Tokens and feature maps are rerolled to spatial order and rolled back to the
image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import torch
from timm.models import hiera as timm_hiera
from timm.models._manipulate import checkpoint
from timm.models.hiera import Hiera

from equivit.anchor_core import anchor
from equivit.cnn_policy import convert_convolutions
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import roll_back_map, stage_block_indices

__all__ = ["FAMILY", "EquivariantHiera", "convert_hiera"]


def _refuse_mask(mask: torch.Tensor | None) -> None:
    """Refuse a mask of mask units: they name places in the image, the blocks see an anchored frame."""
    if mask is not None and not isinstance(mask, torch.fx.Proxy):  # FX traces the argument: the unmasked path
        raise ValueError(
            "a converted Hiera takes no mask: mask units name places in the image's frame and the blocks see "
            "an anchored frame; run the stock model for masked pretraining"
        )


@equivariant_layer(period="grid", anchored_children=("blocks", "head"), fx="traced")
class EquivariantHiera(Hiera):
    """timm's ``Hiera`` whose blocks see the embedded map from an origin chosen by content.

    Same parameters and state-dict keys as timm's; position embeddings are added in the anchored
    frame. The final tokens (spatial order) and feature maps are rolled back to the image's frame.
    """

    def _anchored_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The unrolled tokens of the anchored map, with position embeddings, its origins and its size."""
        y = self.patch_embed.proj(x)
        y, offsets = anchor(y, y.shape[-2], y.shape[-1], self.equivit_energy, False)
        grid = [y.shape[-2], y.shape[-1]]
        x = self._pos_embed(y.flatten(2).transpose(1, 2))
        return self.unroll(x), offsets, grid

    def _spatial(self, x: torch.Tensor, index: int, offsets: torch.Tensor, grid: list[int]) -> torch.Tensor:
        """Block ``index``'s tokens rerolled to a map ``(B, H', W', C)`` in the image's frame."""
        return roll_back_map(self.reroll(x, index), offsets, grid[0], grid[1], True)

    def forward_features(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, return_intermediates: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """The last block's tokens in spatial order, in the image's frame.

        Args:
            x: Images of the model's ``img_size``.
            mask: Must be ``None`` (no masked pretraining).
            return_intermediates: Also return each stage's map ``(B, H', W', C)``, as timm does.

        Returns:
            The tokens (row-major over the last map), and the maps if asked.

        Raises:
            ValueError: If a mask is given.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, H W / 32^2, D)`
        """
        _refuse_mask(mask)
        x, offsets, grid = self._anchored_tokens(x)
        maps: list[torch.Tensor] = []
        index = 0
        for index, block in enumerate(self.blocks):
            x = checkpoint(block, x) if self.grad_checkpointing and not torch.jit.is_scripting() else block(x)
            if return_intermediates and index in self.stage_ends:
                maps.append(self._spatial(x, index, offsets, grid))
        tokens = self._spatial(x, index, offsets, grid).flatten(1, 2)
        if return_intermediates:
            return tokens, maps
        return tokens

    def forward_intermediates(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = True,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        coarse: bool = True,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stages' (or blocks') maps in the image's frame, as timm's ``forward_intermediates``.

        Args:
            x: Images of the model's ``img_size``.
            mask: Must be ``None``.
            indices: The last ``n`` stages (blocks if not ``coarse``) if an int, else their indices.
            norm: Must be False (timm's Hiera has no norm for its maps).
            stop_early: Stop after the last map asked for.
            output_fmt: ``"NCHW"`` or ``"NHWC"``.
            intermediates_only: Return the maps alone.
            coarse: Index stages (True) or blocks (False).

        Returns:
            The maps, or the last block's tokens (spatial order, image's frame) and the maps.

        Raises:
            ValueError: If a mask is given, ``norm`` is True or ``output_fmt`` is another format.
        """
        _refuse_mask(mask)
        if norm:
            raise ValueError("Hiera has no norm for its feature maps: call with norm=False")
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, last = stage_block_indices(self.stage_ends, len(self.blocks), indices, coarse)
        x, offsets, grid = self._anchored_tokens(x)
        maps: list[torch.Tensor] = []
        index = 0
        for index, block in enumerate(self.blocks):
            if stop_early and index > last:
                break
            x = checkpoint(block, x) if self.grad_checkpointing and not torch.jit.is_scripting() else block(x)
            if index in take:
                y = self._spatial(x, index, offsets, grid)
                maps.append(y.permute(0, 3, 1, 2) if output_fmt == "NCHW" else y)
        if intermediates_only:
            return maps
        return self._spatial(x, index, offsets, grid).flatten(1, 2), maps

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits, invariant to circular shifts of ``x``.

        Args:
            x: Images of the model's ``img_size``.
            mask: Must be ``None``.

        Returns:
            The logits.

        Raises:
            ValueError: If a mask is given.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, K)`
        """
        _refuse_mask(mask)
        return self.forward_head(self.forward_features(x))


def convert_hiera(model: Hiera, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``Hiera`` shift-equivariant, in place. No parameter is added or renamed.

    The patch embedding's strided convolution is anchored and its padding made circular; the model
    becomes an :class:`EquivariantHiera`, which anchors the embedded map with period = the map.
    Inputs must have the model's ``img_size`` (its position embedding and mask units are sized for it).

    Args:
        model: A ``Hiera`` (timm's ``features_only`` wrapper holds one), changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the model is not a ``Hiera``, or drops mask units in training
            (``patch_drop_rate > 0``: mask units are places in the image).
    """
    if not isinstance(model, Hiera):
        raise UnsupportedModelError(f"{type(model).__name__}: expected timm's Hiera")
    if model.patch_drop_rate > 0:
        raise UnsupportedModelError(
            f"patch_drop_rate={model.patch_drop_rate}: dropping mask units picks places in the image; "
            "create the model with patch_drop_rate=0"
        )
    if len(model.patch_stride) != 2:
        raise UnsupportedModelError(f"patch_stride {tuple(model.patch_stride)}: only 2-D Hiera (images) converts")
    convert_convolutions(model.patch_embed, report, energy)
    model.__class__ = EquivariantHiera
    model.equivit_energy = energy
    reduction = max(int(info["reduction"]) for info in model.feature_info)
    report.input_multiple = (reduction, reduction)
    report.add("", "Hiera", "EquivariantHiera (embedded map anchored with period = the map; tokens rolled back)")


FAMILY = Family(
    name="hiera",
    description="Hiera (hiera_*)",
    model_classes=(Hiera,),
    converted_classes=(EquivariantHiera,),
    convert=convert_hiera,  # type: ignore[arg-type]
    entry="patch_embed.proj",
    feature_markers=module_types(timm_hiera),
    accepted=module_types(timm_hiera),
    timm_modules=("hiera",),
    examples={
        "hiera": Example("hiera_tiny_224", {"img_size": (64, 96)}, (64, 96), quick=False),
        "hiera_abswin": Example(
            "hiera_small_abswin_256", {"img_size": 64, "global_pos_size": (4, 4)}, (64, 64), quick=False
        ),
    },
)
