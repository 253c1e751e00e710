"""The MViTv2 family: timm's ``mvitv2`` module (multiscale vision transformers).

MViTv2 pools its queries, keys and values with strided, zero-padded convolutions and adds relative
position terms over the whole grid (and, in some variants, an absolute embedding). The patch
embedding's strided convolution is anchored (circular padding) and its map is anchored with
period = the map, so the stages see the same tokens for every circular shift of the image and run
as timm wrote them. Patch tokens and feature maps are rolled back to the image's frame; the class
token is left where it is. No parameter is added or renamed.
"""

from __future__ import annotations

import torch
from timm.models import mvitv2 as timm_mvitv2
from timm.models._features import feature_take_indices
from timm.models.mvitv2 import MultiScaleVit

from equivit.anchor_core import anchor
from equivit.cnn_policy import convert_convolutions
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import roll_back_map

__all__ = ["FAMILY", "EquivariantMultiScaleVit", "convert_mvitv2"]


@equivariant_layer(period="grid", anchored_children=("stages", "norm", "head"), fx="traced")
class EquivariantMultiScaleVit(MultiScaleVit):
    """timm's ``MultiScaleVit`` whose stages see the embedded map from an origin chosen by content.

    Same parameters and state-dict keys as timm's; the class token and ``pos_embed`` are added in
    the anchored frame. Patch tokens and feature maps are rolled back to the image's frame.
    """

    def _anchored_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The embedded tokens from the anchored map (class token first), its origins and its size."""
        y = self.patch_embed.proj(x)
        y, offsets = anchor(y, y.shape[-2], y.shape[-1], self.equivit_energy, False)
        size = [y.shape[-2], y.shape[-1]]
        x = y.flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return x, offsets, size

    def _roll_back(self, x: torch.Tensor, offsets: torch.Tensor, size: list[int], grid: list[int]) -> torch.Tensor:
        """Tokens with the patch tokens of a ``size`` map rolled back to the image's frame (prefix first)."""
        prefix = self.num_prefix_tokens
        patches = x[:, prefix:].reshape(x.shape[0], size[0], size[1], x.shape[-1])
        patches = roll_back_map(patches, offsets, grid[0], grid[1], True).flatten(1, 2)
        return torch.cat([x[:, :prefix], patches], dim=1) if prefix > 0 else patches

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The class token (if the model has one), then the patch tokens in the image's frame, normed.

        Args:
            x: Images of the model's ``img_size``.

        Returns:
            The tokens.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, P + H W / 32^2, D)`, ``P`` the prefix tokens (0 or 1)
        """
        x, offsets, grid = self._anchored_tokens(x)
        size = grid
        for stage in self.stages:
            x, size = stage(x, size)
        return self._roll_back(self.norm(x), offsets, size, grid)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stages' outputs in the image's frame, as timm's ``forward_intermediates``.

        Args:
            x: Images of the model's ``img_size``.
            indices: The last ``n`` stages if an int, else their indices.
            norm: Apply the final norm to the last stage's output.
            stop_early: Stop after the last stage asked for.
            output_fmt: ``"NCHW"`` (maps, class token dropped) or ``"NLC"`` (tokens, class token first).
            intermediates_only: Return the intermediates alone.

        Returns:
            The intermediates, or the final tokens and the intermediates.

        Raises:
            ValueError: If ``output_fmt`` is neither ``"NCHW"`` nor ``"NLC"``.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.stages), indices)
        x, offsets, grid = self._anchored_tokens(x)
        size = grid
        intermediates: list[torch.Tensor] = []
        index = 0
        for index, stage in enumerate(self.stages):
            if stop_early and index > last:
                break
            x, size = stage(x, size)
            if index in take:
                y = self.norm(x) if norm and index == len(self.stages) - 1 else x
                y = self._roll_back(y, offsets, size, grid)
                if output_fmt == "NCHW":
                    y = y[:, self.num_prefix_tokens :].reshape(y.shape[0], size[0], size[1], -1).permute(0, 3, 1, 2)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        if index == len(self.stages) - 1:
            x = self.norm(x)
        return self._roll_back(x, offsets, size, grid), intermediates


def convert_mvitv2(model: MultiScaleVit, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``MultiScaleVit`` shift-equivariant, in place. No parameter is added or renamed.

    The patch embedding's strided convolution is anchored and its padding made circular; the model
    becomes an :class:`EquivariantMultiScaleVit`, which anchors the embedded map with period = the
    map. Inputs must have the model's ``img_size`` (timm's position terms are sized for it).

    Args:
        model: A ``MultiScaleVit`` (timm's ``features_only`` wrapper holds one), changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the model is not a ``MultiScaleVit``.
    """
    if not isinstance(model, MultiScaleVit):
        raise UnsupportedModelError(f"{type(model).__name__}: expected timm's MultiScaleVit")
    convert_convolutions(model.patch_embed, report, energy)
    model.__class__ = EquivariantMultiScaleVit
    model.equivit_energy = energy
    reduction = max(int(info["reduction"]) for info in model.feature_info)
    report.input_multiple = (reduction, reduction)
    report.add("", "MultiScaleVit", "EquivariantMultiScaleVit (embedded map anchored with period = the map)")


FAMILY = Family(
    name="mvitv2",
    description="MViTv2: multiscale vision transformers (mvitv2_*)",
    model_classes=(MultiScaleVit,),
    converted_classes=(EquivariantMultiScaleVit,),
    convert=convert_mvitv2,  # type: ignore[arg-type]
    entry="patch_embed.proj",
    feature_markers=module_types(timm_mvitv2),
    accepted=module_types(timm_mvitv2),
    timm_modules=("mvitv2",),
    examples={
        "mvitv2": Example("mvitv2_tiny", {"img_size": 64}, (64, 64), quick=False),
        "mvitv2_cls": Example("mvitv2_small_cls", {"img_size": 64, "global_pool": "avg"}, (64, 64), quick=False),
    },
)
