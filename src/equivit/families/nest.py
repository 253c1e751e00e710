"""The NesT family: timm's ``nest`` module (nested hierarchical transformers).

NesT cuts its map into blocks at fixed positions, adds an absolute position embedding within each
block, and aggregates blocks with a zero-padded convolution and pooling. The patch embedding is
anchored (period = patch size) and its map is anchored with period = the map
(:func:`~equivit.token_grid.convert_grid_anchored`), so the levels see the same map for every
circular shift of the image and run as timm wrote them. Feature maps are rolled back to the image's
frame. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

import torch
from timm.layers import PatchEmbed
from timm.models import nest as timm_nest
from timm.models._features import feature_take_indices
from timm.models.nest import Nest

from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.token_grid import GridAnchoredFeatureListNet, convert_grid_anchored, roll_back_map

__all__ = ["FAMILY", "EquivariantNest"]


@equivariant_layer(period="grid", anchored_children=("levels", "norm"), fx="traced")
class EquivariantNest(Nest):
    """timm's ``Nest`` whose levels see the patch embedding's map from an origin chosen by content.

    Same parameters and state-dict keys as timm's. Feature maps are rolled back to the image's frame.
    """

    def _normed(self, x: torch.Tensor) -> torch.Tensor:
        """Timm's final layer norm over the channels of a map."""
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last level's normed map in the image's frame.

        Args:
            x: Images of the model's (square) ``img_size``.

        Returns:
            The map.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, D, H / r, W / r)`, ``r`` the total reduction
        """
        x, offsets = self.patch_embed(x)
        height, width = x.shape[-2], x.shape[-1]
        x = self.levels(x)
        return roll_back_map(self._normed(x), offsets, height, width)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The levels' maps in the image's frame, as timm's ``forward_intermediates``.

        Args:
            x: Images of the model's ``img_size``.
            indices: The last ``n`` levels if an int, else their indices.
            norm: Apply the final norm to the last level's map.
            stop_early: Stop after the last level asked for.
            output_fmt: ``"NCHW"``.
            intermediates_only: Return the maps alone.

        Returns:
            The maps, or the final map and the maps.

        Raises:
            ValueError: If ``output_fmt`` is not ``"NCHW"``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' for these feature maps, got {output_fmt!r}")
        take, last = feature_take_indices(len(self.levels), indices)
        x, offsets = self.patch_embed(x)
        height, width = x.shape[-2], x.shape[-1]
        final = len(self.levels) - 1
        maps: list[torch.Tensor] = []
        for index, level in enumerate(self.levels):
            if stop_early and index > last:
                break
            x = level(x)
            if index in take:
                y = self._normed(x) if norm and index == final else x
                maps.append(roll_back_map(y, offsets, height, width))
        if intermediates_only:
            return maps
        if not stop_early or last == final:
            x = self._normed(x)
        return roll_back_map(x, offsets, height, width), maps


FAMILY = Family(
    name="nest",
    description="NesT: nested hierarchical transformers (nest_*, nest_*_jx)",
    model_classes=(Nest,),
    converted_classes=(EquivariantNest,),
    convert=functools.partial(
        convert_grid_anchored,
        entry="patch_embed",
        entry_types=(PatchEmbed,),
        stock=Nest,
        converted=EquivariantNest,
        input_multiple=16,
    ),
    entry="patch_embed",
    feature_markers=module_types(timm_nest),
    accepted=(*module_types(timm_nest), GridAnchoredFeatureListNet),
    timm_modules=("nest",),
    examples={
        "nest": Example("nest_tiny", {"img_size": 64}, (64, 64), quick=False),
    },
)
