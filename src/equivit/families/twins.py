"""Conversion of timm ``Twins`` (PCPVT and SVT): one anchor per stage, its blocks run in the anchored frame."""

from __future__ import annotations

from typing import ClassVar, get_type_hints

import torch
from timm.models import twins as timm_twins
from timm.models._features import feature_take_indices
from timm.models.twins import LocallyGroupedAttn, Twins

from equivit.anchor_core import anchor, roll_back
from equivit.energy import Energy
from equivit.layers import AnchoredConv2d, make_conv_circular
from equivit.registry import Example, Family
from equivit.report import ConversionReport, lcm_pair

__all__ = ["FAMILY", "AnchoredTwins", "convert_twins"]


class AnchoredTwins(Twins):
    r"""timm's Twins whose stages see their token grid from an origin chosen by content.

    Each stage embeds its input with an anchored patch projection (:class:`AnchoredConv2d`,
    period = its stride), then rolls the token grid to its polyphase anchor with period = the
    whole grid (:func:`~equivit.polyphase_anchor`), as :class:`~equivit.layers.AnchoredPvtStage`
    does. A circular shift of the stage input then reaches the blocks as the same grid, bit for
    bit, so the blocks need no anchoring of their own: the locally-grouped (window) attention
    groups the same tokens, the global sub-sampled attention reduces the same phase, and a grid
    that is not a multiple of the window is padded at the same place. The stage output is rolled
    back to the input's frame. The position convolutions (``PosConv``) pad circularly.

    One anchor and one roll back per stage replace an anchor in every attention (4 instead of 33
    in ``twins_pcpvt_small``). Same parameters and state-dict keys as timm's model. Build it with
    :func:`convert_twins` (through :func:`equivit.convert`).

    Shape:
        - x: :math:`(B, C, H, W)`, ``H`` and ``W`` multiples of the product of the patch strides
        - output: as timm's ``Twins``
    """

    equivit_anchored_children: ClassVar[tuple[str, ...]] = ("blocks",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r"""The model's ``forward`` as in timm: :meth:`forward_features`, then the head.

        Defined here so that FX, tracing the model from this module, records the anchoring
        functions as single calls (timm's FX registry wraps them in the traced function's module).

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, \text{classes})`
        """
        if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips only this exact condition)
            if torch.onnx.is_in_onnx_export():
                return self._forward_for_onnx(x)
        return self.forward_head(self.forward_features(x))

    def _forward_for_onnx(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with the window attention's plain path, which ONNX export translates.

        timm's locally-grouped attention hands 5-D tensors to the fused attention kernel, which
        the ONNX translation takes only in 4-D (stock timm Twins SVT does not export either); its
        plain path (``fused_attn=False``, the same arithmetic) exports.
        """
        windows = [module for module in self.modules() if isinstance(module, LocallyGroupedAttn) and module.fused_attn]
        for module in windows:
            module.fused_attn = False
        try:
            return self.forward_head(self.forward_features(x))
        finally:
            for module in windows:
                module.fused_attn = True

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every stage: anchored embedding, anchor the grid, blocks, roll back; then the final norm.

        Args:
            x: Images.

        Returns:
            The last stage's tokens after the norm, in the input's frame.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, N, C')`
        """
        last = len(self.blocks) - 1
        for i in range(len(self.blocks)):
            grid = self._stage(x, i)
            # Maps between stages (NCHW, as timm), tokens after the last one.
            x = grid.permute(0, 3, 1, 2).contiguous() if i < last else grid.reshape(grid.shape[0], -1, grid.shape[3])
        return self.norm(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The ``forward_intermediates`` of timm, with the anchored stages of :meth:`forward_features`.

        Args:
            x: Images.
            indices: Take the last ``n`` stages if an int, all if None, else the listed ones.
            norm: Apply the final norm to the last stage's map (timm: only that one can be normed).
            stop_early: Stop after the last stage asked for.
            output_fmt: ``"NCHW"`` only.
            intermediates_only: Return only the maps.

        Returns:
            The maps (each in the input's frame), or the final tokens and the maps.
        """
        if output_fmt != "NCHW":
            raise ValueError("output_fmt must be 'NCHW' for Twins, got '" + output_fmt + "'")
        intermediates: list[torch.Tensor] = []
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        last = len(self.blocks) - 1
        stop = max_index if stop_early else last
        for i in range(len(self.blocks)):
            if i <= stop:
                grid = self._stage(x, i)
                if i < last:
                    x = grid.permute(0, 3, 1, 2).contiguous()
                    if i in take_indices:
                        intermediates.append(x)
                else:
                    x = grid.reshape(grid.shape[0], -1, grid.shape[3])
                    if i in take_indices:
                        feature = self.norm(grid) if norm else grid
                        intermediates.append(feature.permute(0, 3, 1, 2).contiguous())
                        if intermediates_only:
                            return intermediates
                    x = self.norm(x)  # the final norm is sized for (and applied to) the last stage only
        if intermediates_only:
            return intermediates
        return x, intermediates

    def _stage(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Stage ``stage``: anchored embedding, anchor the grid, blocks, roll back to the input's frame.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, H', W', C')`, the stage's token grid
        """
        batch = x.shape[0]
        for i, (embed, drop, blocks, pos_blk) in enumerate(
            zip(self.patch_embeds, self.pos_drops, self.blocks, self.pos_block)  # noqa: B905 (TorchScript)
        ):
            if i == stage:  # (TorchScript indexes module lists only by constants)
                tokens, size = embed(x)
                tokens = drop(tokens)
                channels = tokens.shape[-1]
                grid, offsets = anchor(
                    tokens.reshape(batch, size[0], size[1], channels), size[0], size[1], self.energy, True
                )
                tokens = grid.reshape(batch, size[0] * size[1], channels)
                for j, blk in enumerate(blocks):
                    tokens = blk(tokens, size)
                    if j == 0:
                        tokens = pos_blk(tokens, size)  # position encoding after the first block, as in timm
                return roll_back(tokens.reshape(batch, size[0], size[1], channels), offsets, True)
        raise IndexError(f"Twins has {len(self.blocks)} stages, asked for stage {stage}")


# FX copies the root forward's annotations into a traced graph's code, where TorchScript reads
# them; postponed annotations are strings there that it cannot resolve. Evaluate them here.
AnchoredTwins.forward.__annotations__.update(get_type_hints(AnchoredTwins.forward))


def convert_twins(model: Twins, report: ConversionReport, energy: Energy) -> None:
    """Make a timm Twins model shift-equivariant, in place. No parameter is added or renamed.

    The model becomes an :class:`AnchoredTwins` (the same object, its class changed): every
    stage's patch projection is anchored (periods 4, 2, 2, 2), every stage anchors its token grid
    once with period = the grid and runs its blocks in that frame, and the ``PosConv``
    convolutions pad circularly. The input must be a multiple of the product of the patch strides
    (``report.input_multiple``: 32 for both PCPVT and SVT); the windows and sub-sampling ratios
    need no multiple, as they act on the anchored grid.

    Args:
        model: The model, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.
    """
    multiple = (1, 1)
    stride = (1, 1)
    for stage, patch_embed in enumerate(model.patch_embeds):
        proj = patch_embed.proj
        if not isinstance(proj, AnchoredConv2d):
            stride = (stride[0] * proj.stride[0], stride[1] * proj.stride[1])
            multiple = lcm_pair(multiple, stride)
            patch_embed.proj = AnchoredConv2d.from_conv(proj, energy=energy)
            report.add(f"patch_embeds.{stage}.proj", "Conv2d", f"AnchoredConv2d (period {proj.stride[0]})")
        report.add(f"blocks.{stage}", "stage blocks", "run on the token grid anchored with period = the grid")
        for index, conv in enumerate(model.pos_block[stage].proj):
            if isinstance(conv, torch.nn.Conv2d) and conv.padding_mode != "circular":
                make_conv_circular(conv)
                report.add(f"pos_block.{stage}.proj.{index}", "Conv2d, zero padding", "Conv2d, circular padding")
    model.__class__ = AnchoredTwins
    model.energy = energy
    report.input_multiple = multiple


_WIDE_HEADS = {"num_heads": (1, 1, 1, 1), "depths": (1, 1, 1, 1)}

FAMILY = Family(
    name="twins",
    description="Twins-PCPVT and Twins-SVT (twins_*)",
    model_classes=(Twins,),
    converted_classes=(AnchoredTwins,),
    convert=convert_twins,  # type: ignore[arg-type]
    entry="patch_embeds.0",
    accepted=(Twins, timm_twins.Block, timm_twins.PosConv, timm_twins.PatchEmbed),
    checks={
        LocallyGroupedAttn: lambda module: "window attention without anchoring",
        timm_twins.GlobalSubSampleAttn: lambda module: (
            None if module.sr is None else "sub-sampled keys/values without anchoring"
        ),
    },
    timm_modules=("twins",),
    examples={
        "twins_pcpvt": Example(
            "twins_pcpvt_small", {"embed_dims": (16, 32, 32, 32), "sr_ratios": (2, 2, 1, 1), **_WIDE_HEADS}, (64, 96)
        ),
        "twins_svt": Example(
            "twins_svt_small",
            {"embed_dims": (16, 32, 32, 32), "sr_ratios": (2, 2, 1, 1), "wss": (2, 2, 2, 2), **_WIDE_HEADS},
            (64, 64),
        ),
    },
)
