"""The MLP-Mixer family: timm ``MlpMixer`` (MLP-Mixer, ResMLP, gMLP: MLPs across token positions)."""

from __future__ import annotations

import torch
from timm.models import mlp_mixer as timm_mixer
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint, checkpoint_seq
from timm.models.mlp_mixer import MlpMixer
from torch import nn

from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport
from equivit.token_grid import (
    anchor_patch_tokens,
    anchored_grid_embedding,
    check_grid_size,
    patch_token_map,
    roll_back_patch_tokens,
)

__all__ = ["FAMILY", "EquivariantMlpMixer", "convert_mlp_mixer"]


@equivariant_layer(period="grid", anchored_children=("blocks", "norm", "head"), fx="traced")
class EquivariantMlpMixer(MlpMixer):
    """timm's ``MlpMixer`` whose blocks see the patch tokens from an origin chosen by content.

    The token-mixing MLPs (and gMLP's spatial gating) weigh every token by its index in the
    sequence, so they depend on where the grid starts. After the image is anchored with period =
    patch size and the token grid with period = the whole grid (:mod:`equivit.token_grid`), a
    circular shift of the image reaches them as the same sequence. Tokens are rolled back for
    ``forward_features`` and ``forward_intermediates``. Same parameters and state-dict keys as timm's.
    """

    def _anchored_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Embed, check the grid, anchor it: ``(tokens, offsets, height, width)``."""
        grid = self.stem(x)  # (B, H, W, C)
        check_grid_size(grid, self.stem.grid_size, self.stem.patch_size, [x.shape[-2], x.shape[-1]])
        batch, height, width, channels = grid.shape
        grid, offsets = anchor_patch_tokens(grid, self.equivit_energy)
        return grid.reshape(batch, height * width, channels), offsets, height, width

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the blocks and the final norm, in the image's frame.

        Args:
            x: Images of the model's size.

        Returns:
            The tokens, row-major.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, H W / p^2, D)`
        """
        x, offsets, height, width = self._anchored_tokens(x)
        if not torch.jit.is_scripting() and self.grad_checkpointing:
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return roll_back_patch_tokens(self.norm(x), offsets, height, width, 0)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs as maps that move with the image, as timm's ``forward_intermediates``.

        Args:
            x: Images of the model's size.
            indices: The last ``n`` blocks if an int, else the block indices to return.
            norm: Apply the final norm to the intermediates.
            stop_early: Stop after the last block asked for.
            output_fmt: ``"NCHW"`` or ``"NLC"``.
            intermediates_only: Return the intermediates alone.

        Returns:
            The intermediates, or the final tokens and the intermediates.

        Raises:
            ValueError: If ``output_fmt`` is neither ``"NCHW"`` nor ``"NLC"``.
        """
        if output_fmt != "NCHW" and output_fmt != "NLC":
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        x, offsets, height, width = self._anchored_tokens(x)
        maps: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            if stop_early and index > last:
                break
            x = checkpoint(block, x) if not torch.jit.is_scripting() and self.grad_checkpointing else block(x)
            if index in take:
                maps.append(patch_token_map(self.norm(x) if norm else x, offsets, height, width, 0, output_fmt))
        if intermediates_only:
            return maps
        return roll_back_patch_tokens(self.norm(x), offsets, height, width, 0), maps


def convert_mlp_mixer(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``MlpMixer`` shift-equivariant, in place. No parameter is added or renamed.

    The patch projection (``stem``) is anchored (period = patch size) and the model becomes an
    :class:`EquivariantMlpMixer`, which anchors the token grid with period = the grid. Inputs
    must have the model's image size (its token-mixing weights are sized for its grid).

    Args:
        model: An ``MlpMixer``, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the stem is not timm's ``PatchEmbed`` with non-overlapping patches.
    """
    model.stem = anchored_grid_embedding(model.stem, report, energy, name="stem")
    model.__class__ = EquivariantMlpMixer
    model.equivit_energy = energy
    report.add(
        "",
        "MlpMixer",
        "EquivariantMlpMixer (token grid anchored with period = grid; token-mixing MLPs kept; tokens rolled back)",
    )


FAMILY = Family(
    name="mlp_mixer",
    description="MLP-Mixer (mixer_*), ResMLP (resmlp_*) and gMLP (gmlp_*)",
    model_classes=(MlpMixer,),
    converted_classes=(EquivariantMlpMixer,),
    convert=convert_mlp_mixer,  # type: ignore[arg-type]
    entry="stem",
    accepted=module_types(timm_mixer),
    timm_modules=("mlp_mixer",),
    empty_batch_ok=True,
    examples={
        # timm's mixer functions fix patch size, depth and width (no override): small images instead.
        "mixer": Example("mixer_s32_224", {"img_size": (64, 96)}, (64, 96), quick=False),
        "resmlp": Example("resmlp_12_224", {"img_size": (48, 64)}, (48, 64), quick=False),
        "gmlp": Example("gmlp_ti16_224", {"img_size": (48, 64)}, (48, 64), quick=False),
    },
)
