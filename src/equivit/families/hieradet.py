"""The HieraDet family: timm's ``hieradet_sam2`` module (Segment Anything 2's Hiera encoder).

HieraDet adds a position embedding interpolated to the grid plus one tiled per window, attends
within windows (zero-padded to whole windows) or globally, and pools queries with strided max
pooling; all tie it to positions on the grid. The patch embedding's strided convolution is
anchored (circular padding) and its map is anchored with period = the map, so the blocks see the
same map for every circular shift of the image and run as timm wrote them. The final map and
feature maps are rolled back to the image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import torch
from timm.models import hieradet_sam2 as timm_hieradet
from timm.models._manipulate import checkpoint
from timm.models.hieradet_sam2 import HieraDet

from equivit.anchor_core import anchor
from equivit.cnn_policy import convert_convolutions
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import roll_back_map, stage_block_indices

__all__ = ["FAMILY", "EquivariantHieraDet", "convert_hieradet"]


@equivariant_layer(period="grid", anchored_children=("blocks", "head"), fx="traced")
class EquivariantHieraDet(HieraDet):
    """timm's ``HieraDet`` whose blocks see the embedded map from an origin chosen by content.

    Same parameters and state-dict keys as timm's; position embeddings are added in the anchored
    frame. Maps, laid out ``(B, H, W, C)`` as timm's, are rolled back to the image's frame.
    """

    def _anchored_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedded map ``(B, H, W, D)`` anchored with period = the map, position terms added, and its origins."""
        y = self.patch_embed(x)
        y, offsets = anchor(y, y.shape[1], y.shape[2], self.equivit_energy, True)
        return self._pos_embed(y), offsets

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's map in the image's frame.

        Args:
            x: Images; ``H`` and ``W`` multiples of ``equivit_report.input_multiple``.

        Returns:
            The map.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, H / 32, W / 32, D)`
        """
        x, offsets = self._anchored_map(x)
        height, width = x.shape[1], x.shape[2]
        for block in self.blocks:
            x = checkpoint(block, x) if self.grad_checkpointing and not torch.jit.is_scripting() else block(x)
        return roll_back_map(x, offsets, height, width, True)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = True,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        coarse: bool = True,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stages' (or blocks') maps in the image's frame, as timm's ``forward_intermediates``.

        Args:
            x: Images, as for :meth:`forward_features`.
            indices: The last ``n`` stages (blocks if not ``coarse``) if an int, else their indices.
            norm: Must be False (timm's HieraDet has no norm for its maps).
            stop_early: Stop after the last map asked for.
            output_fmt: ``"NCHW"`` or ``"NHWC"``.
            intermediates_only: Return the maps alone.
            coarse: Index stages (True) or blocks (False).

        Returns:
            The maps, or the last block's map ``(B, H', W', D)`` and the maps.

        Raises:
            ValueError: If ``norm`` is True or ``output_fmt`` is another format.
        """
        if norm:
            raise ValueError("HieraDet has no norm for its feature maps: call with norm=False")
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, last = stage_block_indices(self.stage_ends, len(self.blocks), indices, coarse)
        x, offsets = self._anchored_map(x)
        height, width = x.shape[1], x.shape[2]
        maps: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            if stop_early and index > last:
                break
            x = checkpoint(block, x) if self.grad_checkpointing and not torch.jit.is_scripting() else block(x)
            if index in take:
                y = roll_back_map(x, offsets, height, width, True)
                maps.append(y.permute(0, 3, 1, 2) if output_fmt == "NCHW" else y)
        if intermediates_only:
            return maps
        return roll_back_map(x, offsets, height, width, True), maps


def convert_hieradet(model: HieraDet, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``HieraDet`` shift-equivariant, in place. No parameter is added or renamed.

    The patch embedding's strided convolution is anchored and its padding made circular; the model
    becomes an :class:`EquivariantHieraDet`, which anchors the embedded map with period = the map.

    Args:
        model: A ``HieraDet`` (timm's ``features_only`` wrapper holds one), changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the model is not a ``HieraDet``.
    """
    if not isinstance(model, HieraDet):
        raise UnsupportedModelError(f"{type(model).__name__}: expected timm's HieraDet")
    convert_convolutions(model.patch_embed, report, energy)
    model.__class__ = EquivariantHieraDet
    model.equivit_energy = energy
    reduction = max(int(info["reduction"]) for info in model.feature_info)
    report.input_multiple = (reduction, reduction)
    report.add("", "HieraDet", "EquivariantHieraDet (embedded map anchored with period = the map; maps rolled back)")


FAMILY = Family(
    name="hieradet",
    description="Segment Anything 2's Hiera (sam2_hiera_*, hieradet_*)",
    model_classes=(HieraDet,),
    converted_classes=(EquivariantHieraDet,),
    convert=convert_hieradet,  # type: ignore[arg-type]
    entry="patch_embed.proj",
    feature_markers=module_types(timm_hieradet),
    accepted=module_types(timm_hieradet),
    timm_modules=("hieradet_sam2",),
    examples={
        "hieradet": Example(
            "sam2_hiera_tiny",
            {"embed_dim": 32, "stages": (1, 1, 2, 1), "global_att_blocks": (3,), "window_spec": (4, 2, 2, 2)},
            (64, 96),
            quick=False,
        ),
    },
)
