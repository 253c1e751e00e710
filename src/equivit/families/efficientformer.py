"""The EfficientFormer (v1) family: timm's ``efficientformer`` module.

EfficientFormer's last stage flattens its map into tokens whose attention adds biases indexed by
the distance between positions on a fixed 7 x 7 grid (not circular), and its poolings and
downsampling convolutions pad with zeros. The stem's strided convolutions are anchored (circular
padding) and its map is anchored with period = the map
(:func:`~equivit.token_grid.convert_grid_anchored`), so the stages see the same map for every
circular shift of the image and run as timm wrote them. Maps and tokens are rolled back to the
image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import functools

import torch
from timm.models import efficientformer as timm_efficientformer
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models.efficientformer import EfficientFormer, Stem4

from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.token_grid import convert_grid_anchored, roll_back_map

__all__ = ["FAMILY", "EquivariantEfficientFormer"]


@equivariant_layer(period="grid", anchored_children=("stages", "norm"), fx="traced")
class EquivariantEfficientFormer(EfficientFormer):
    """timm's ``EfficientFormer`` whose stages see the stem's map from an origin chosen by content.

    Same parameters and state-dict keys as timm's. Feature maps and the last stage's tokens are
    rolled back to the image's frame.
    """

    def _rolled_back(self, x: torch.Tensor, offsets: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The last stage's row-major tokens in the image's frame.

        Every stage after the first halves the map, so the tokens of the last one lie on a grid
        ``2 ** (stages - 1)`` times coarser than the stem's ``height x width`` map. (No branch on
        ``x``'s shape: FX traces this, and timm's last stage always returns tokens.)
        """
        halvings = len(self.stages) - 1
        grid = x.reshape(x.shape[0], height >> halvings, width >> halvings, x.shape[-1]).permute(0, 3, 1, 2)
        return roll_back_map(grid, offsets, height, width).flatten(2).transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's normed tokens in the image's frame.

        Args:
            x: Images of 224 x 224 (the attention biases are fixed to a 7 x 7 grid).

        Returns:
            The tokens, row-major.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, H W / 32^2, D)`
        """
        x, offsets = self.stem(x)
        height, width = x.shape[-2], x.shape[-1]
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return self._rolled_back(self.norm(x), offsets, height, width)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stages' outputs as maps in the image's frame, as timm's ``forward_intermediates``.

        Args:
            x: Images of 224 x 224.
            indices: The last ``n`` stages if an int, else their indices.
            norm: Apply the final norm to the last stage's tokens.
            stop_early: Stop after the last stage asked for.
            output_fmt: ``"NCHW"``.
            intermediates_only: Return the maps alone.

        Returns:
            The maps, or the final tokens and the maps.

        Raises:
            ValueError: If ``output_fmt`` is not ``"NCHW"``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' for these feature maps, got {output_fmt!r}")
        take, last = feature_take_indices(len(self.stages), indices)
        x, offsets = self.stem(x)
        height, width = x.shape[-2], x.shape[-1]
        maps: list[torch.Tensor] = []
        final = len(self.stages) - 1
        for index, stage in enumerate(self.stages):
            if stop_early and index > last:
                break
            x = stage(x)
            if index in take:
                y = self.norm(x) if norm and index == final else x
                if y.ndim == 3:  # the last stage's tokens, as a map
                    y = self._rolled_back(y, offsets, height, width).transpose(1, 2)
                    maps.append(y.reshape(y.shape[0], y.shape[1], height >> final, width >> final))
                else:
                    maps.append(roll_back_map(y, offsets, height, width))
        if intermediates_only:
            return maps
        if x.ndim == 3:
            return self._rolled_back(self.norm(x), offsets, height, width), maps
        return roll_back_map(x, offsets, height, width), maps


FAMILY = Family(
    name="efficientformer",
    description="EfficientFormer (efficientformer_l*)",
    model_classes=(EfficientFormer,),
    converted_classes=(EquivariantEfficientFormer,),
    convert=functools.partial(
        convert_grid_anchored,
        entry="stem",
        entry_types=(Stem4,),
        stock=EfficientFormer,
        converted=EquivariantEfficientFormer,
        input_multiple=32,
    ),
    entry="stem",
    feature_markers=module_types(timm_efficientformer),
    accepted=module_types(timm_efficientformer),
    timm_modules=("efficientformer",),
    examples={
        "efficientformer": Example(
            "efficientformer_l1",
            {"depths": (1, 1, 1, 2), "embed_dims": (8, 16, 24, 32)},
            (224, 224),
            quick=False,
        ),
    },
)
