"""The MaxViT family: timm ``MaxxVit`` (MaxViT, CoAtNet, CoAtNeXt, MaxxViT and their variants)."""

from __future__ import annotations

import math

import torch
from timm.models import maxxvit as timm_maxxvit
from timm.models._features import feature_take_indices
from timm.models.maxxvit import MaxxVit, Stem
from torch import nn

from equivit.cnn_policy import convert_convolutions
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import (
    GridAnchoredFeatureListNet,
    grid_anchored_entry,
    grid_anchored_entry_class,
    install_grid_anchored_model,
    roll_back_map,
)

__all__ = ["FAMILY", "EquivariantMaxxVit", "GridAnchoredMaxxVitStem", "convert_maxxvit"]


GridAnchoredMaxxVitStem = grid_anchored_entry_class(Stem)
"""timm's MaxViT stem (strided convolution anchored, circular padding), its map anchored with period = the map."""


@equivariant_layer(period="grid", anchored_children=("stages", "norm", "head"), fx="traced")
class EquivariantMaxxVit(MaxxVit):
    """timm's ``MaxxVit`` whose stages see the stem's map from an origin chosen by content.

    The stem's strided convolution is anchored (period 2) and pads circularly, so a circular
    shift of the image by an even number of pixels moves the stem's map by whole cells; the stem
    then anchors its map with period = the whole map (:data:`GridAnchoredMaxxVitStem`). timm's
    stages (MBConv and ConvNeXt blocks with their strided convolutions, window and grid attention
    with relative position biases) run unchanged on it and see the same map for every shift; the
    pooled output is invariant. Feature maps are rolled back (:func:`~equivit.token_grid.roll_back_map`).
    Same parameters and state-dict keys as timm's.
    """

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map, normed, in the image's frame.

        Args:
            x: Images; see ``model.equivit_report.input_multiple``.

        Returns:
            The map.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, D, H / 32, W / 32)`
        """
        x, offsets = self.stem(x)
        height, width = x.shape[-2], x.shape[-1]
        return roll_back_map(self.norm(self.stages(x)), offsets, height, width)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stem's and the stages' maps in the image's frame, as timm's ``forward_intermediates``.

        Args:
            x: Images.
            indices: The last ``n`` maps if an int, else their indices (0 is the stem).
            norm: Apply the final norm to the last stage's map.
            stop_early: Stop after the last map asked for.
            output_fmt: ``"NCHW"``.
            intermediates_only: Return the maps alone.

        Returns:
            The maps, or the final map (as :meth:`forward_features` when every stage ran) and the maps.

        Raises:
            ValueError: If ``output_fmt`` is not ``"NCHW"``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' for MaxxVit features, got {output_fmt!r}")
        take, last = feature_take_indices(len(self.stages) + 1, indices)
        x, offsets = self.stem(x)
        height, width = x.shape[-2], x.shape[-1]
        maps: list[torch.Tensor] = []
        if 0 in take:
            maps.append(roll_back_map(x, offsets, height, width))
        count = len(self.stages)
        index = 0
        for stage in self.stages:
            if stop_early and index >= last:
                break
            index += 1
            x = stage(x)
            if index in take:
                y = self.norm(x) if norm and index == count else x
                maps.append(roll_back_map(y, offsets, height, width))
        if intermediates_only:
            return maps
        if index == count:
            x = self.norm(x)
        return roll_back_map(x, offsets, height, width), maps


def _window_multiple(model: nn.Module) -> int:
    """The least common multiple of every stage's reduction times its partition (window and grid) size."""
    multiple = 32
    reductions = [int(entry["reduction"]) for entry in model.feature_info]
    for name, module in model.named_modules():
        size = getattr(module, "partition_size", None)
        parts = name.split(".")
        if size is None or "stages" not in parts:
            continue
        stage = int(parts[parts.index("stages") + 1])
        reduction = reductions[stage + 1]  # feature_info lists the stem first
        for side in size:
            multiple = math.lcm(multiple, reduction * int(side))
    return multiple


def convert_maxxvit(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``MaxxVit`` (or timm's ``features_only`` wrapper of one) shift-equivariant, in place.

    The stem's strided convolution is anchored with period 2 and every stem convolution pads
    circularly (:func:`~equivit.cnn_policy.convert_convolutions`); the stem becomes a
    :data:`GridAnchoredMaxxVitStem` and the model an :class:`EquivariantMaxxVit` (the wrapper a
    :class:`~equivit.token_grid.GridAnchoredFeatureListNet`). No parameter is added or renamed.

    Args:
        model: A ``MaxxVit``, or timm's ``features_only`` wrapper of one, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the stem is not timm's MaxxVit ``Stem``.
    """
    stem = model.stem
    if type(stem) is not Stem:
        raise UnsupportedModelError(f"stem: {type(stem).__name__} is not timm's MaxxVit Stem")
    convert_convolutions(stem, report, energy)
    anchored = grid_anchored_entry(stem, energy)
    model.stem = anchored
    report.add("stem", "Stem", "GridAnchoredStem (stem map anchored with period = the map)")
    # The full model knows its windows; timm's features wrapper keeps only the reductions.
    report.input_multiple = (_window_multiple(model),) * 2 if isinstance(model, MaxxVit) else (32, 32)
    install_grid_anchored_model(model, report, MaxxVit, EquivariantMaxxVit, "stem")


_TINY = {"embed_dim": (16, 16, 32, 32), "depths": (1, 1, 1, 1), "stem_width": 16, "transformer_dim_head": 8}

FAMILY = Family(
    name="maxxvit",
    description="MaxViT (maxvit_*), CoAtNet (coatnet_*), CoAtNeXt and MaxxViT (maxxvit*) of timm's maxxvit module",
    model_classes=(MaxxVit,),
    converted_classes=(EquivariantMaxxVit,),
    convert=convert_maxxvit,  # type: ignore[arg-type]
    entry="stem",
    feature_markers=(Stem, GridAnchoredMaxxVitStem),
    accepted=(*module_types(timm_maxxvit), GridAnchoredFeatureListNet),
    timm_modules=("maxxvit",),
    examples={
        "maxvit": Example("maxvit_pico_rw_256", {"img_size": 64, **_TINY}, (64, 128)),
        "coatnet": Example("coatnet_nano_rw_224", {"img_size": 64, **_TINY}, (64, 64), quick=False),
        "maxvit_tf": Example("maxvit_tiny_tf_224", {"img_size": 64, **_TINY}, (64, 64), quick=False),
    },
)
