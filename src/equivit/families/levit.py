"""The LeViT family: timm's ``levit`` module (LeViT and its convolutional form, distilled or not).

LeViT's attention adds biases indexed by the absolute distance between token positions on a
grid of fixed size (not circular), and its shrinking attention samples every second token: both
tie the blocks to positions. The stem's strided convolutions are anchored (circular padding) and
its map is anchored with period = the map (:func:`~equivit.token_grid.grid_anchored_entry`), so
the stages see the same grid for every circular shift of the image and run as timm wrote them.
Feature maps are rolled back to the image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import torch
from timm.models import levit as timm_levit
from timm.models._features import FeatureListNet, feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.levit import Levit, LevitDistilled, Stem8, Stem16
from torch import nn

from equivit.cnn_policy import convert_convolutions
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import (
    GridAnchoredFeatureListNet,
    check_grid_size,
    convert_flattened_entry,
    grid_anchored_entry,
    grid_anchored_entry_class,
    install_grid_anchored_model,
    roll_back_map,
)

__all__ = ["FAMILY", "EquivariantLevit", "EquivariantLevitDistilled", "convert_levit"]


class _GridAnchoredLevit(nn.Module):
    """``forward_features`` and ``forward_intermediates`` of a LeViT whose stem anchors its map."""

    def _anchored_stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's anchored map and origins; the grid must be the model's (its attention biases are fixed)."""
        y, offsets = self.stem(x)
        stride = self.equivit_stem_stride
        check_grid_size(y.permute(0, 2, 3, 1), self.equivit_grid, (stride, stride), [x.shape[-2], x.shape[-1]])
        return y, offsets

    def _to_map(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """A stage's output as a channels-first map (the token form is row-major)."""
        if self.use_conv:
            return x
        return x.reshape(x.shape[0], height, width, x.shape[-1]).permute(0, 3, 1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output in the image's frame: a map (convolutional form) or tokens.

        Args:
            x: Images of the model's ``img_size``.

        Returns:
            The features.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, D, h, w)` (convolutional form) or :math:`(B, h w, D)`
        """
        x, offsets = self._anchored_stem(x)
        height, width = x.shape[-2], x.shape[-1]
        rows, columns = height, width
        if not self.use_conv:
            x = x.flatten(2).transpose(1, 2)
        for index, stage in enumerate(self.stages):
            x = checkpoint(stage, x) if not torch.jit.is_scripting() and self.grad_checkpointing else stage(x)
            if index > 0:
                rows, columns = (rows + 1) // 2, (columns + 1) // 2
        y = roll_back_map(self._to_map(x, rows, columns), offsets, height, width)
        return y if self.use_conv else y.flatten(2).transpose(1, 2)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stages' maps in the image's frame, as timm's ``forward_intermediates``.

        Args:
            x: Images of the model's ``img_size``.
            indices: The last ``n`` stages if an int, else their indices.
            norm: Unused, as in timm.
            stop_early: Stop after the last stage asked for.
            output_fmt: ``"NCHW"``.
            intermediates_only: Return the maps alone.

        Returns:
            The maps, or the final output (as timm's, in the anchored frame's layout rolled back) and the maps.

        Raises:
            ValueError: If ``output_fmt`` is not ``"NCHW"``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' for LeViT features, got {output_fmt!r}")
        take, last = feature_take_indices(len(self.stages), indices)
        x, offsets = self._anchored_stem(x)
        height, width = x.shape[-2], x.shape[-1]
        rows, columns = height, width
        if not self.use_conv:
            x = x.flatten(2).transpose(1, 2)
        maps: list[torch.Tensor] = []
        for index, stage in enumerate(self.stages):
            if stop_early and index > last:
                break
            x = checkpoint(stage, x) if not torch.jit.is_scripting() and self.grad_checkpointing else stage(x)
            if index > 0:
                rows, columns = (rows + 1) // 2, (columns + 1) // 2
            if index in take:
                maps.append(roll_back_map(self._to_map(x, rows, columns), offsets, height, width))
        if intermediates_only:
            return maps
        y = roll_back_map(self._to_map(x, rows, columns), offsets, height, width)
        return (y if self.use_conv else y.flatten(2).transpose(1, 2)), maps


@equivariant_layer(period="grid", anchored_children=("stages", "head"), fx="traced")
class EquivariantLevit(_GridAnchoredLevit, Levit):
    """timm's ``Levit`` whose stages see the stem's map from an origin chosen by content.

    Same parameters and state-dict keys as timm's; inputs of the model's ``img_size`` (its
    attention biases are fixed to the grid, as in timm).
    """


@equivariant_layer(period="grid", anchored_children=("stages", "head", "head_dist"), fx="traced")
class EquivariantLevitDistilled(_GridAnchoredLevit, LevitDistilled):
    """timm's ``LevitDistilled`` (two heads) whose stages see the stem's map from an origin chosen by content."""


def convert_levit(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``Levit`` (or ``LevitDistilled``, or timm's ``features_only`` wrapper of one) shift-equivariant.

    The stem's strided convolutions are anchored and pad circularly; the stem then anchors its map
    with period = the map; the model becomes an :class:`EquivariantLevit` (or
    :class:`EquivariantLevitDistilled`; timm's ``FeatureListNet`` of the convolutional form a
    :class:`~equivit.token_grid.GridAnchoredFeatureListNet`). No parameter is added or renamed.

    Args:
        model: The model, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the stem is a CNN backbone given by the user rather than timm's.
    """
    if isinstance(model, FeatureListNet) and "stem" not in model:
        # timm flattens the convolutional form's stem into stem_conv1, stem_act1, ...: the wrapper anchors after it.
        stride = convert_flattened_entry(model, "stem", report, energy)
        report.input_multiple = (stride, stride)
        install_grid_anchored_model(model, report, Levit, EquivariantLevit, "stem", energy)
        return
    stem = model.stem
    if type(stem) not in (Stem16, Stem8):
        raise UnsupportedModelError(f"stem: {type(stem).__name__} is not timm's LeViT Stem16 or Stem8")
    convert_convolutions(stem, report, energy)
    model.stem = grid_anchored_entry(stem, energy)
    report.add("stem", type(stem).__name__, f"GridAnchored{type(stem).__name__} (stem map anchored, period = map)")
    report.input_multiple = (stem.stride, stem.stride)
    if isinstance(model, Levit):
        # timm sizes the attention biases for img_size; read the grid back from the first stage.
        first = model.stages[0].blocks[0].attn
        model.equivit_grid = (int(first.resolution[0]), int(first.resolution[1]))
        model.equivit_stem_stride = int(stem.stride)
        converted = EquivariantLevitDistilled if isinstance(model, LevitDistilled) else EquivariantLevit
        install_grid_anchored_model(model, report, type(model), converted, "stem")
    else:
        install_grid_anchored_model(model, report, Levit, EquivariantLevit, "stem")


_TINY = {"img_size": 64, "embed_dim": (32, 48, 64), "num_heads": (2, 3, 4), "depth": (1, 1, 1), "key_dim": 8}

FAMILY = Family(
    name="levit",
    description="LeViT (levit_*, levit_conv_*)",
    model_classes=(Levit, LevitDistilled),
    converted_classes=(EquivariantLevit, EquivariantLevitDistilled),
    convert=convert_levit,  # type: ignore[arg-type]
    entry="stem",
    feature_markers=(*module_types(timm_levit), grid_anchored_entry_class(Stem16), grid_anchored_entry_class(Stem8)),
    accepted=(*module_types(timm_levit), GridAnchoredFeatureListNet),
    timm_modules=("levit",),
    examples={
        "levit": Example("levit_128s", _TINY, (64, 64), quick=False),  # policy tested on maxvit
        "levit_conv": Example("levit_conv_128s", _TINY, (64, 64), quick=False),
    },
)
