"""The CoaT family: timm's ``coat`` module (co-scale conv-attentional image transformers).

CoaT adds zero-padded depthwise convolutions as position encodings (``ConvPosEnc``) and as
relative position terms on the values (``ConvRelPosEnc``), and its parallel blocks (CoaT, not
CoaT-Lite) exchange information between scales by bilinear resizing; all tie it to positions on
the grid. The first patch embedding's strided convolution is anchored (period = the patch) and its
token grid is anchored with period = the grid, so every later part sees the same tokens for every
circular shift of the image and runs as timm wrote it. Patch tokens and maps are rolled back to the
image's frame; the class tokens are left where they are. No parameter is added or renamed.
"""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed
from timm.models import coat as timm_coat
from timm.models._features import feature_take_indices
from timm.models.coat import CoaT
from torch import nn

from equivit.anchor_core import anchor
from equivit.cnn_policy import convert_convolutions
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import roll_back_map

__all__ = ["FAMILY", "EquivariantCoaT", "convert_coat"]


def _patch_map(tokens: torch.Tensor, size: list[int]) -> torch.Tensor:
    """A scale's patch tokens (after its class token) as a map ``(B, C, H, W)``, for the next patch embedding."""
    return tokens[:, 1:].reshape(tokens.shape[0], size[0], size[1], -1).permute(0, 3, 1, 2).contiguous()


_AFTER_ANCHOR = (
    *(f"{part}{scale}" for scale in (1, 2, 3, 4) for part in ("cpe", "crpe", "serial_blocks")),
    *(f"patch_embed{scale}" for scale in (2, 3, 4)),
    *(f"norm{scale}" for scale in (2, 3, 4)),
    "parallel_blocks",
    "aggregate",
    "head",
)
"""CoaT's modules that run on the anchored grid: everything after the first patch embedding."""


@equivariant_layer(period="grid", anchored_children=_AFTER_ANCHOR, fx="traced")
class EquivariantCoaT(CoaT):
    """timm's ``CoaT`` whose scales see the first embedded grid from an origin chosen by content.

    Same parameters and state-dict keys as timm's. Patch tokens and maps are rolled back to the
    image's frame (class tokens first, as timm's).
    """

    def _scales(self, x: torch.Tensor, stages: int) -> tuple[list[torch.Tensor], list[list[int]], torch.Tensor]:
        """The tokens (class token first) of the first ``stages`` scales, after the parallel blocks if all ran.

        Returns the tokens of each scale, each scale's grid size and the first grid's origins.
        """
        batch = x.shape[0]
        tokens = self.patch_embed1(x)
        rows, columns = x.shape[-2] // self.patch_embed1.patch_size[0], x.shape[-1] // self.patch_embed1.patch_size[1]
        grid, offsets = anchor(tokens.reshape(batch, rows, columns, -1), rows, columns, self.equivit_energy, True)
        size = [rows, columns]
        x = torch.cat((self.cls_token1.expand(batch, -1, -1), grid.flatten(1, 2)), dim=1)
        for block1 in self.serial_blocks1:  # a name per loop: TorchScript types each loop's modules apart
            x = block1(x, size=(size[0], size[1]))
        xs, sizes = [x], [size]
        # Written out per scale: TorchScript cannot index a Python list of modules.
        if stages > 1 and self.patch_embed2 is not None:  # None after timm's prune_intermediate_layers
            x = self.patch_embed2(_patch_map(x, size))
            size = [size[0] // self.patch_embed2.patch_size[0], size[1] // self.patch_embed2.patch_size[1]]
            x = torch.cat((self.cls_token2.expand(batch, -1, -1), x), dim=1)
            for block2 in self.serial_blocks2:
                x = block2(x, size=(size[0], size[1]))
            xs.append(x)
            sizes.append(size)
        if stages > 2 and self.patch_embed3 is not None:
            x = self.patch_embed3(_patch_map(x, size))
            size = [size[0] // self.patch_embed3.patch_size[0], size[1] // self.patch_embed3.patch_size[1]]
            x = torch.cat((self.cls_token3.expand(batch, -1, -1), x), dim=1)
            for block3 in self.serial_blocks3:
                x = block3(x, size=(size[0], size[1]))
            xs.append(x)
            sizes.append(size)
        if stages > 3 and self.patch_embed4 is not None:
            x = self.patch_embed4(_patch_map(x, size))
            size = [size[0] // self.patch_embed4.patch_size[0], size[1] // self.patch_embed4.patch_size[1]]
            x = torch.cat((self.cls_token4.expand(batch, -1, -1), x), dim=1)
            for block4 in self.serial_blocks4:
                x = block4(x, size=(size[0], size[1]))
            xs.append(x)
            sizes.append(size)
        if self.parallel_blocks is not None and len(xs) == 4:
            x1, x2, x3, x4 = xs
            shapes = [(s[0], s[1]) for s in sizes]
            for parallel in self.parallel_blocks:
                x2, x3, x4 = self.cpe2(x2, shapes[1]), self.cpe3(x3, shapes[2]), self.cpe4(x4, shapes[3])
                x1, x2, x3, x4 = parallel(x1, x2, x3, x4, sizes=shapes)
            xs = [x1, x2, x3, x4]
        return xs, sizes, offsets

    def _rolled_back(
        self, x: torch.Tensor, size: list[int], offsets: torch.Tensor, grid: list[int], with_class: bool
    ) -> torch.Tensor:
        """One scale's patch tokens in the image's frame: the tokens (class token first) or the map ``(B, C, H, W)``."""
        patches = x[:, 1:].reshape(x.shape[0], size[0], size[1], -1)
        patches = roll_back_map(patches, offsets, grid[0], grid[1], True)
        if with_class:
            return torch.cat([x[:, :1], patches.flatten(1, 2)], dim=1)
        return patches.permute(0, 3, 1, 2).contiguous()

    def _norms(self) -> list[nn.Module | None]:
        """The final norm of each scale (none for the first)."""
        return [None, self.norm2, self.norm3, self.norm4]

    @torch.jit.unused
    def _interm_maps(
        self, xs: list[torch.Tensor], sizes: list[list[int]], offsets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The dict of maps timm returns for detection (``return_interm_layers``), in the image's frame."""
        return {
            f"x{i + 1}_nocls": self._rolled_back(x, sizes[i], offsets, sizes[0], False)
            for i, x in enumerate(xs)
            if f"x{i + 1}_nocls" in self.out_features
        }

    def forward_features(self, x0: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """As timm's: the normed last scale's tokens (CoaT-Lite) or those of scales 2-4 (CoaT), in the image's frame.

        With ``return_interm_layers``, timm's dict of maps, in the image's frame.

        Args:
            x0: Images of the model's ``img_size``.

        Returns:
            The tokens (class token first), a list of them, or the dict of maps.

        Shape:
            - x0: :math:`(B, C, H, W)`
        """
        xs, sizes, offsets = self._scales(x0, 4)
        grid = sizes[0]
        if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips only this exact condition; a dict return)
            if self.return_interm_layers:
                return self._interm_maps(xs, sizes, offsets)  # type: ignore[return-value]
        if len(xs) < 4:  # pruned by timm's prune_intermediate_layers: the last scale's tokens, as timm returns them
            return self._rolled_back(xs[-1], sizes[-1], offsets, grid, True)
        if self.parallel_blocks is None:
            return self._rolled_back(self.norm4(xs[3]), sizes[3], offsets, grid, True)
        return [
            self._rolled_back(self.norm2(xs[1]), sizes[1], offsets, grid, True),
            self._rolled_back(self.norm3(xs[2]), sizes[2], offsets, grid, True),
            self._rolled_back(self.norm4(xs[3]), sizes[3], offsets, grid, True),
        ]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> object:
        """The four scales' maps in the image's frame, as timm's ``forward_intermediates``.

        Args:
            x: Images of the model's ``img_size``.
            indices: The last ``n`` scales if an int, else their indices.
            norm: Apply the matching scale's final norm to its map.
            stop_early: Stop after the last scale asked for (CoaT-Lite, or scale 0).
            output_fmt: ``"NCHW"``.
            intermediates_only: Return the maps alone.

        Returns:
            The maps, or the final tokens (as :meth:`forward_features`) and the maps.

        Raises:
            ValueError: If ``output_fmt`` is not ``"NCHW"``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' for CoaT, got {output_fmt!r}")
        take, last = feature_take_indices(4, indices)
        stages = last + 1 if stop_early and (self.parallel_blocks is None or last == 0) else 4
        xs, sizes, offsets = self._scales(x, stages)
        grid = sizes[0]
        norms = self._norms()
        maps: list[torch.Tensor] = []
        for i, tokens in enumerate(xs):
            if i in take:
                final_norm = norms[i]
                y = final_norm(tokens) if norm and final_norm is not None else tokens
                maps.append(self._rolled_back(y, sizes[i], offsets, grid, False))
        if intermediates_only:
            return maps
        if len(xs) < 4:
            return self._rolled_back(xs[-1], sizes[-1], offsets, grid, True), maps
        if self.parallel_blocks is None:  # CoaT-Lite: the last scale, normed (it has no norm2, norm3)
            return self._rolled_back(self.norm4(xs[3]), sizes[3], offsets, grid, True), maps
        return [self._rolled_back(norms[i](xs[i]), sizes[i], offsets, grid, True) for i in range(1, 4)], maps


def convert_coat(model: CoaT, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``CoaT`` shift-equivariant, in place. No parameter is added or renamed.

    The first patch embedding's convolution is anchored (period = the patch); the model becomes an
    :class:`EquivariantCoaT`, which anchors its token grid with period = the grid. Inputs must
    have the model's ``img_size`` (its patch embeddings are built for it).

    Args:
        model: A ``CoaT`` (timm's ``features_only`` wrapper holds one), changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the model is not a ``CoaT`` or was pruned (a patch embedding removed).
    """
    if not isinstance(model, CoaT):
        raise UnsupportedModelError(f"{type(model).__name__}: expected timm's CoaT")
    embeds = [model.patch_embed1, model.patch_embed2, model.patch_embed3, model.patch_embed4]
    if any(type(embed) is not PatchEmbed for embed in embeds):
        raise UnsupportedModelError("CoaT with a pruned or replaced patch embedding: convert the full model")
    convert_convolutions(model.patch_embed1, report, energy)
    model.__class__ = EquivariantCoaT
    model.equivit_energy = energy
    stride = int(model.patch_embed1.patch_size[0]) * 8
    report.input_multiple = (stride, stride)
    report.add("", "CoaT", "EquivariantCoaT (first token grid anchored with period = the grid; tokens rolled back)")


_SMALL = {"embed_dims": (16, 32, 32, 48), "num_heads": 2, "crpe_window": {3: 1, 5: 1}}

FAMILY = Family(
    name="coat",
    description="CoaT and CoaT-Lite (coat_*)",
    model_classes=(CoaT,),
    converted_classes=(EquivariantCoaT,),
    convert=convert_coat,  # type: ignore[arg-type]
    entry="patch_embed1",
    feature_markers=module_types(timm_coat),
    accepted=(*module_types(timm_coat), PatchEmbed),
    timm_modules=("coat",),
    examples={
        "coat_lite": Example("coat_lite_tiny", {**_SMALL, "img_size": (64, 96)}, (64, 96), quick=False),
        "coat": Example(
            "coat_tiny",
            {**_SMALL, "img_size": 64, "embed_dims": (16, 24, 24, 24), "serial_depths": (1, 1, 1, 1)},
            (64, 64),
            quick=False,
        ),
    },
)
