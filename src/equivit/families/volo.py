"""The VOLO family: timm's ``volo`` module (vision outlookers).

VOLO's outlookers gather each token's window with zero-padded unfolding, its second stage adds an
absolute position embedding, and its class-attention blocks follow. The patch embedding's strided
convolutions are anchored (circular padding) and its map is anchored with period = the map, so
every later part sees the same map for every circular shift of the image and runs as timm wrote
it. Maps and patch tokens are rolled back to the image's frame. No parameter is added or renamed.
"""

from __future__ import annotations

import torch
from timm.models import volo as timm_volo
from timm.models._manipulate import checkpoint
from timm.models.volo import VOLO
from torch import nn

from equivit.anchor_core import anchor
from equivit.cnn_policy import convert_convolutions
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import roll_back_map, stage_block_indices

__all__ = ["FAMILY", "EquivariantVOLO", "convert_volo"]


@equivariant_layer(
    period="grid", anchored_children=("network", "post_network", "norm", "aux_head", "head"), fx="traced"
)
class EquivariantVOLO(VOLO):
    """timm's ``VOLO`` whose outlookers and transformers see the embedded map from an origin chosen by content.

    Same parameters and state-dict keys as timm's; ``pos_embed`` is added in the anchored frame.
    Maps and patch tokens are rolled back to the image's frame.
    """

    def _anchored_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The patch embedding's map, channels last, rolled to its content-chosen origin, and that origin."""
        y = self.patch_embed(x).permute(0, 2, 3, 1)
        return anchor(y, y.shape[1], y.shape[2], self.equivit_energy, True)

    @torch.jit.unused
    def _block(self, index: int, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One block of ``network``, with timm's position embedding before the third."""
        if index == 2 and self.pos_embed is not None:
            x = self.pos_drop(x + self.pos_embed)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(block, x)
        return block(x)

    def _finish(self, x: torch.Tensor, offsets: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Class attention and the norm as timm runs them, then the patch tokens rolled back (class token first)."""
        batch, rows, columns, channels = x.shape
        x = x.reshape(batch, rows * columns, channels)
        prefix = 0
        if self.post_network is not None:
            x = self.forward_cls(x)
            prefix = 1
        x = self.norm(x)
        patches = x[:, prefix:].reshape(batch, rows, columns, x.shape[-1])
        patches = roll_back_map(patches, offsets, height, width, True).reshape(batch, rows * columns, x.shape[-1])
        return torch.cat([x[:, :prefix], patches], dim=1) if prefix > 0 else patches

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The class token (if the model has class attention), then the patch tokens in the image's frame, normed.

        Args:
            x: Images of the model's ``img_size``.

        Returns:
            The tokens.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, 1 + H W / 16^2, D)`
        """
        x, offsets = self._anchored_map(x)
        height, width = x.shape[1], x.shape[2]
        for index, block in enumerate(self.network):  # as timm's forward_tokens (TorchScript passes no modules)
            if index == 2 and self.pos_embed is not None:
                x = self.pos_drop(x + self.pos_embed)
            x = checkpoint(block, x) if not torch.jit.is_scripting() and self.grad_checkpointing else block(x)
        return self._finish(x, offsets, height, width)

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
            norm: Apply the final norm to the maps after the outlookers.
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
        take, last = stage_block_indices(self.stage_ends, len(self.network), indices)
        x, offsets = self._anchored_map(x)
        height, width = x.shape[1], x.shape[2]
        maps: list[torch.Tensor] = []
        index = 0
        for index, block in enumerate(self.network):
            if stop_early and index > last:
                break
            x = self._block(index, block, x)
            if index in take:
                y = self.norm(x) if norm and index >= 2 else x
                maps.append(roll_back_map(y, offsets, height, width, True).permute(0, 3, 1, 2))
        if intermediates_only:
            return maps
        if index == len(self.network) - 1:
            return self._finish(x, offsets, height, width), maps
        return roll_back_map(x, offsets, height, width, True), maps


def convert_volo(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``VOLO`` shift-equivariant, in place. No parameter is added or renamed.

    The patch embedding's strided convolutions are anchored and its padding made circular; the
    model becomes an :class:`EquivariantVOLO`, which anchors the embedded map with period = the map.
    Inputs must have the model's ``img_size``.

    Args:
        model: A ``VOLO`` (timm's ``features_only`` wrapper holds one), changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the model is not a ``VOLO``.
    """
    if not isinstance(model, VOLO):
        raise UnsupportedModelError(f"{type(model).__name__}: expected timm's VOLO")
    convert_convolutions(model.patch_embed, report, energy)
    model.__class__ = EquivariantVOLO
    model.equivit_energy = energy
    reduction = max(int(info["reduction"]) for info in model.feature_info)
    report.input_multiple = (reduction, reduction)
    report.add("", "VOLO", "EquivariantVOLO (embedded map anchored with period = the map; tokens rolled back)")


FAMILY = Family(
    name="volo",
    description="VOLO: vision outlookers (volo_*)",
    model_classes=(VOLO,),
    converted_classes=(EquivariantVOLO,),
    convert=convert_volo,  # type: ignore[arg-type]
    entry="patch_embed",
    feature_markers=module_types(timm_volo),
    accepted=module_types(timm_volo),
    timm_modules=("volo",),
    examples={
        "volo": Example("volo_d1_224", {"img_size": 64}, (64, 64), quick=False),
    },
)
