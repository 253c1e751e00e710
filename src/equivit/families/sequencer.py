"""The Sequencer family: timm's ``sequencer`` module (Sequencer2D).

Sequencer mixes tokens with bidirectional LSTMs that run along every row and every column of its
map: a recurrence has a first and a last token, so it is tied to where the map starts. The stem's
patch projection is anchored (period = patch size) and its map (channels last) is anchored with
period = the map, so the LSTMs see the same rows and columns for every circular shift of the image
and run as timm wrote them. Feature maps are rolled back to the image's frame. No parameter is
added or renamed.
"""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed
from timm.models import sequencer as timm_sequencer
from timm.models._features import FeatureListNet, feature_take_indices
from timm.models.sequencer import Sequencer2d
from torch import nn

from equivit.anchor_core import anchor
from equivit.cnn_policy import convert_convolutions
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import GridAnchoredFeatureListNet, roll_back_map

__all__ = ["FAMILY", "EquivariantSequencer2d", "convert_sequencer"]


@equivariant_layer(period="grid", anchored_children=("stages", "norm"), fx="traced")
class EquivariantSequencer2d(Sequencer2d):
    """timm's ``Sequencer2d`` whose stages see the stem's map from an origin chosen by content.

    Same parameters and state-dict keys as timm's. Maps are channels last, as in timm; feature
    maps are rolled back to the image's frame.
    """

    def _anchored_stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's map ``(B, H, W, C)`` rolled to its content-chosen origin, and that origin."""
        y = self.stem(x)
        return anchor(y, y.shape[1], y.shape[2], self.equivit_energy, True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's normed map in the image's frame, channels last.

        Args:
            x: Images; ``H`` and ``W`` multiples of ``equivit_report.input_multiple``.

        Returns:
            The map.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, H / r, W / r, D)`, ``r`` the total reduction
        """
        x, offsets = self._anchored_stem(x)
        height, width = x.shape[1], x.shape[2]
        x = self.stages(x)
        return roll_back_map(self.norm(x), offsets, height, width, True)

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
            x: Images.
            indices: The last ``n`` stages if an int, else their indices.
            norm: Apply the final norm to the last stage's map.
            stop_early: Stop after the last stage asked for.
            output_fmt: ``"NCHW"`` or ``"NHWC"``.
            intermediates_only: Return the maps alone.

        Returns:
            The maps, or the final map (channels last) and the maps.

        Raises:
            ValueError: If ``output_fmt`` is neither.
        """
        if output_fmt != "NCHW" and output_fmt != "NHWC":
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.stages), indices)
        x, offsets = self._anchored_stem(x)
        height, width = x.shape[1], x.shape[2]
        final = len(self.stages) - 1
        maps: list[torch.Tensor] = []
        for index, stage in enumerate(self.stages):
            if stop_early and index > last:
                break
            x = stage(x)
            if index in take:
                y = roll_back_map(self.norm(x) if norm and index == final else x, offsets, height, width, True)
                maps.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
        if intermediates_only:
            return maps
        if not stop_early or last == final:
            x = self.norm(x)
        return roll_back_map(x, offsets, height, width, True), maps


def convert_sequencer(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``Sequencer2d`` (or its ``features_only`` wrapper) shift-equivariant, in place.

    The stem's projection is anchored (period = patch size); the model becomes an
    :class:`EquivariantSequencer2d`, which anchors the stem's map with period = the map (timm's
    ``FeatureListNet`` of one a :class:`~equivit.token_grid.GridAnchoredFeatureListNet` that
    anchors after the stem). No parameter is added or renamed.

    Args:
        model: The model, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the stem is not timm's ``PatchEmbed``.
    """
    stem = model["stem"] if isinstance(model, FeatureListNet) else model.stem
    if type(stem) is not PatchEmbed:
        raise UnsupportedModelError(f"stem: {type(stem).__name__} is not timm's PatchEmbed")
    convert_convolutions(stem, report, energy)
    info = model.feature_info
    reduction = max(info.reduction() if hasattr(info, "reduction") else [int(i["reduction"]) for i in info])
    report.input_multiple = (reduction, reduction)
    if isinstance(model, Sequencer2d):
        model.__class__ = EquivariantSequencer2d
        model.equivit_energy = energy
        report.add("", "Sequencer2d", "EquivariantSequencer2d (stem's map anchored, period = map; maps rolled back)")
    elif type(model) is FeatureListNet:
        names = list(model.keys())
        model.__class__ = GridAnchoredFeatureListNet
        model.equivit_anchored_children = tuple(names[names.index("stem") + 1 :])
        model.equivit_anchor_after = "stem"
        model.equivit_energy = energy
        model.equivit_channels_last = True
        report.add("", "FeatureListNet", "GridAnchoredFeatureListNet (anchors after the stem; maps rolled back)")
    else:
        raise UnsupportedModelError(f"{type(model).__name__}: expected a Sequencer2d or timm's FeatureListNet of one")


FAMILY = Family(
    name="sequencer",
    description="Sequencer2D (sequencer2d_*)",
    model_classes=(Sequencer2d,),
    converted_classes=(EquivariantSequencer2d,),
    convert=convert_sequencer,  # type: ignore[arg-type]
    entry="stem",
    feature_markers=module_types(timm_sequencer),
    accepted=(*module_types(timm_sequencer), PatchEmbed, GridAnchoredFeatureListNet),
    timm_modules=("sequencer",),
    examples={
        "sequencer": Example(
            "sequencer2d_s",
            {"layers": [1, 1, 1, 1], "embed_dims": [16, 32, 32, 32], "hidden_sizes": [8, 16, 16, 16]},
            (56, 84),
            quick=False,
        ),
    },
)
