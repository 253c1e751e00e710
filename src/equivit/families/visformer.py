"""The Visformer family: timm's ``visformer`` module.

Visformer adds an absolute position embedding to the map of each of its three stages
(``pos_embed1`` to ``pos_embed3``, fixed to ``img_size``). The stem's strided convolution and the
first patch embedding are anchored (circular padding) and the first stage's map is anchored with
period = the map, so the stages and their position embeddings see the same map for every circular
shift of the image and run as timm wrote them. Feature maps are rolled back to the image's frame.
No parameter is added or renamed.
"""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed
from timm.models import visformer as timm_visformer
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models.visformer import Visformer
from torch import nn

from equivit.anchor_core import anchor
from equivit.cnn_policy import convert_convolutions
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import roll_back_map

__all__ = ["FAMILY", "EquivariantVisformer", "convert_visformer"]


@equivariant_layer(
    period="grid",
    anchored_children=("stage1", "patch_embed2", "stage2", "patch_embed3", "stage3", "norm"),
    fx="traced",
)
class EquivariantVisformer(Visformer):
    """timm's ``Visformer`` whose stages see the first stage's map from an origin chosen by content.

    Same parameters and state-dict keys as timm's; the position embeddings are added in the
    anchored frame. Feature maps are rolled back to the image's frame.
    """

    @torch.jit.unused
    def _stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """Run one stage, with timm's gradient checkpointing when it is on."""
        return checkpoint_seq(stage, x) if self.grad_checkpointing else stage(x)

    @torch.jit.unused
    def _embedded(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Stage ``index``'s patch embedding (if any) and position embedding (if any), as timm adds them."""
        embed = (self.patch_embed1, self.patch_embed2, self.patch_embed3)[index]
        position = (self.pos_embed1, self.pos_embed2, self.pos_embed3)[index]
        if index > 0 and embed is not None:
            x = embed(x)
        if position is not None and (index == 0 or embed is not None):
            x = self.pos_drop(x + position)
        return x

    def _anchored_entry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem, then the first patch embedding's map rolled to its content-chosen origin, and that origin."""
        y = self.patch_embed1(self.stem(x))
        return anchor(y, y.shape[-2], y.shape[-1], self.equivit_energy, False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's normed map in the image's frame.

        Args:
            x: Images of the model's ``img_size``.

        Returns:
            The map.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, D, H / 32, W / 32)`
        """
        x, offsets = self._anchored_entry(x)
        height, width = x.shape[-2], x.shape[-1]
        if self.pos_embed1 is not None:
            x = self.pos_drop(x + self.pos_embed1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stage1, x)
        else:
            x = self.stage1(x)
        if self.patch_embed2 is not None:
            x = self.patch_embed2(x)
            if self.pos_embed2 is not None:
                x = self.pos_drop(x + self.pos_embed2)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stage2, x)
        else:
            x = self.stage2(x)
        if self.patch_embed3 is not None:
            x = self.patch_embed3(x)
            if self.pos_embed3 is not None:
                x = self.pos_drop(x + self.pos_embed3)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stage3, x)
        else:
            x = self.stage3(x)
        return roll_back_map(self.norm(x), offsets, height, width)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The three stages' maps in the image's frame, as timm's ``forward_intermediates``.

        Args:
            x: Images of the model's ``img_size``.
            indices: The last ``n`` stages if an int, else their indices.
            norm: Apply the final norm to the last stage's map.
            stop_early: Stop after the last stage asked for.
            output_fmt: ``"NCHW"``.
            intermediates_only: Return the maps alone.

        Returns:
            The maps, or the final map and the maps.

        Raises:
            ValueError: If ``output_fmt`` is not ``"NCHW"``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' for these feature maps, got {output_fmt!r}")
        take, last = feature_take_indices(3, indices)
        x, offsets = self._anchored_entry(x)
        height, width = x.shape[-2], x.shape[-1]
        maps: list[torch.Tensor] = []
        stages = (self.stage1, self.stage2, self.stage3)
        for index, stage in enumerate(stages):
            if stop_early and index > last:
                break
            x = self._stage(stage, self._embedded(x, index))
            if index in take:
                y = self.norm(x) if norm and index == 2 else x
                maps.append(roll_back_map(y, offsets, height, width))
        if intermediates_only:
            return maps
        if not stop_early or last == 2:
            x = self.norm(x)
        return roll_back_map(x, offsets, height, width), maps


def convert_visformer(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``Visformer`` shift-equivariant, in place. No parameter is added or renamed.

    The stem's strided convolution and the first patch embedding are anchored (circular padding),
    and the model becomes an :class:`EquivariantVisformer`, which anchors the first patch
    embedding's map with period = the map. Inputs must have the model's ``img_size``.

    Args:
        model: A ``Visformer`` (timm's ``features_only`` wrapper holds one), changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the model has no convolutional stem (``init_channels=None`` or
            ``vit_stem=True``) or its first patch embedding is not timm's ``PatchEmbed``.
    """
    if not isinstance(model, Visformer) or not isinstance(model.stem, nn.Sequential):
        raise UnsupportedModelError(
            f"{type(model).__name__}: only a Visformer with its convolutional stem converts (init_channels set, "
            "vit_stem=False, as in visformer_tiny and visformer_small)"
        )
    if type(model.patch_embed1) is not PatchEmbed:
        raise UnsupportedModelError(f"patch_embed1: {type(model.patch_embed1).__name__} is not timm's PatchEmbed")
    convert_convolutions(model.stem, report, energy)
    convert_convolutions(model.patch_embed1, report, energy)
    reduction = int(model.feature_info[-1]["reduction"])
    report.input_multiple = (reduction, reduction)
    model.__class__ = EquivariantVisformer
    model.equivit_energy = energy
    report.add("", "Visformer", "EquivariantVisformer (patch_embed1's map anchored, period = map; maps rolled back)")


FAMILY = Family(
    name="visformer",
    description="Visformer (visformer_*)",
    model_classes=(Visformer,),
    converted_classes=(EquivariantVisformer,),
    convert=convert_visformer,  # type: ignore[arg-type]
    entry="stem",
    feature_markers=module_types(timm_visformer),
    accepted=module_types(timm_visformer),
    timm_modules=("visformer",),
    examples={
        "visformer": Example(
            "visformer_tiny",
            {"img_size": (64, 96), "embed_dim": 48, "depth": (1, 1, 1), "num_heads": 2},
            (64, 96),
            quick=False,
        ),
    },
)
