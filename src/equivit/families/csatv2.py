"""The CSATv2 family: timm's ``csatv2`` module (vision in the frequency domain).

CSATv2's stem takes a discrete cosine transform of each 8 x 8 block of the image
(``LearnableDct2d``), exact under shifts by multiples of 8 only; its stages then use zero-padded
convolutions, unpadded strided downsampling, convolutional position encodings and attention over
a map pooled to a fixed size. The image is anchored with period 8 before the stem
(:func:`~equivit.layers.anchored_entry`), so a circular shift reaches the stem as a shift by whole
blocks; the stem's map is then anchored with period = the map
(:func:`~equivit.token_grid.grid_anchored_entry`), and the stages run as timm wrote them on the
same map for every shift. Feature maps are rolled back to the image's frame. No parameter is
added or renamed.
"""

from __future__ import annotations

import importlib

import torch
from timm.models._features import FeatureListNet, feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.csatv2 import CSATv2, LearnableDct2d

from equivit.anchor_core import anchor
from equivit.energy import Energy
from equivit.layers import anchored_entry
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import (
    GridAnchoredFeatureListNet,
    GridAnchoredStages,
    install_grid_anchored_model,
    roll_back_map,
)

__all__ = ["FAMILY", "EquivariantCSATv2", "convert_csatv2"]

# ``from timm.models import csatv2`` is the model function of that name, not the module.
timm_csatv2 = importlib.import_module("timm.models.csatv2")

BLOCK = 8
"""The side of the stem's DCT blocks: the period of its input anchor."""


@equivariant_layer(period="grid", anchored_children=("stages", "head"), fx="traced")
class EquivariantCSATv2(GridAnchoredStages, CSATv2):
    """timm's ``CSATv2`` whose stages see the DCT stem's map from an origin chosen by content.

    Same parameters and state-dict keys as timm's. Feature maps are rolled back
    (:class:`~equivit.token_grid.GridAnchoredStages`); ``forward_intermediates`` counts the stem as
    map 0, as timm's does.
    """

    def anchored_entry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's map (on the image anchored with period 8) anchored with period = the map, and its origins."""
        y = self.stem_dct(x)
        return anchor(y, y.shape[-2], y.shape[-1], self.equivit_energy, False)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stem's map (index 0) and the stages' maps (1 to 4) in the image's frame, as timm's.

        Args:
            x: Images; ``H`` and ``W`` multiples of ``equivit_report.input_multiple``.
            indices: The last ``n`` maps if an int, else their indices.
            norm: Unused (CSATv2 has no final norm), as in timm.
            stop_early: Stop after the last map asked for.
            output_fmt: ``"NCHW"``.
            intermediates_only: Return the maps alone.

        Returns:
            The maps, or the final map and the maps.

        Raises:
            ValueError: If ``output_fmt`` is not ``"NCHW"``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' for CSATv2, got {output_fmt!r}")
        take, last = feature_take_indices(len(self.stages) + 1, indices)
        x, offsets = self.anchored_entry(x)
        height, width = x.shape[-2], x.shape[-1]
        maps = [roll_back_map(x, offsets, height, width)] if 0 in take else []
        for index, stage in enumerate(self.stages):
            if stop_early and index + 1 > last:
                break
            x = checkpoint(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
            if index + 1 in take:
                maps.append(roll_back_map(x, offsets, height, width))
        if intermediates_only:
            return maps
        return roll_back_map(x, offsets, height, width), maps


def convert_csatv2(model: CSATv2 | FeatureListNet, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``CSATv2`` shift-equivariant, in place. No parameter is added or renamed.

    The stem becomes an ``AnchoredLearnableDct2d`` (the image anchored with period 8, its DCT
    blocks, then the stem as timm's); the model becomes an :class:`EquivariantCSATv2`, which anchors
    the stem's map with period = the map (timm's ``features_only`` wrapper a
    :class:`~equivit.token_grid.GridAnchoredFeatureListNet` that anchors after the stem). Inputs:
    multiples of 64.

    Args:
        model: A ``CSATv2`` or timm's ``features_only`` wrapper of one, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the stem is not timm's ``LearnableDct2d``.
    """
    stem = model["stem_dct"] if isinstance(model, FeatureListNet) else model.stem_dct
    if type(stem) is not LearnableDct2d:
        raise UnsupportedModelError(f"stem_dct: {type(stem).__name__} is not timm's LearnableDct2d")
    if isinstance(stem.permutation, list):
        # timm indexes with a Python list, which copies it to the device on every call (a host copy
        # per forward on a GPU); the same indices as a non-persistent buffer give the same values.
        order = torch.tensor(stem.permutation, dtype=torch.long, device=stem.mean.device)
        del stem.permutation
        stem.register_buffer("permutation", order, persistent=False)
    anchored = anchored_entry(stem, BLOCK, energy=energy)
    if isinstance(model, FeatureListNet):
        model["stem_dct"] = anchored
    else:
        model.stem_dct = anchored
    report.add(
        "stem_dct",
        "LearnableDct2d",
        "AnchoredLearnableDct2d (image anchored with period 8), then its map anchored with period = the map",
    )
    if isinstance(model, FeatureListNet):
        reduction = max(model.feature_info.reduction())
    else:
        reduction = max(int(info["reduction"]) for info in model.feature_info)
    report.input_multiple = (reduction, reduction)
    report.in_channels = 3  # the stem converts RGB to YCbCr (its first convolution reads DCT coefficients)
    install_grid_anchored_model(model, report, CSATv2, EquivariantCSATv2, "stem_dct", energy)
    if isinstance(model, GridAnchoredFeatureListNet):
        model.equivit_anchor_after = "stem_dct"
    model.equivit_energy = energy


FAMILY = Family(
    name="csatv2",
    description="CSATv2: vision in the frequency domain (csatv2*)",
    model_classes=(CSATv2,),
    converted_classes=(EquivariantCSATv2,),
    convert=convert_csatv2,  # type: ignore[arg-type]
    entry="stem_dct",
    feature_markers=module_types(timm_csatv2),
    accepted=(*module_types(timm_csatv2), GridAnchoredFeatureListNet),
    timm_modules=("csatv2",),
    examples={
        "csatv2": Example(
            "csatv2", {"dims": (16, 24, 32, 48), "depths": (1, 1, 2, 2), "transformer_depths": (0, 0, 1, 1)},
            (64, 128), quick=False,
        ),
    },
)  # fmt: skip
