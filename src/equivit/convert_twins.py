"""Conversion of timm ``Twins`` (PCPVT and SVT)."""

from __future__ import annotations

from timm.models.twins import GlobalSubSampleAttn, LocallyGroupedAttn, Twins

from equivit.layers import AnchoredConv2d, AnchoredGlobalSubSampleAttn, AnchoredLocallyGroupedAttn, make_conv_circular
from equivit.polyphase import Energy
from equivit.report import ConversionReport, lcm_pair

__all__ = ["convert_twins"]


def convert_twins(model: Twins, report: ConversionReport, energy: Energy) -> None:
    """Make a timm Twins model shift-equivariant, in place. No parameter is added or renamed.

    Every stage's patch projection is anchored (periods 4, 2, 2, 2), every locally-grouped
    attention is anchored with its window, every global sub-sampled attention has its key/value
    reduction anchored with ``sr_ratio`` and its keys put in an order chosen from content (also
    with ``sr_ratio`` 1), and the ``PosConv`` convolutions pad circularly. The
    input must be a multiple of every stride and window on the path; ``report.input_multiple``
    says which (224 for SVT, 32 for PCPVT).

    Args:
        model: The model, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.
    """
    multiple = (1, 1)
    stride = (1, 1)
    for stage, patch_embed in enumerate(model.patch_embeds):
        proj = patch_embed.proj
        stride = (stride[0] * proj.stride[0], stride[1] * proj.stride[1])
        multiple = lcm_pair(multiple, stride)
        patch_embed.proj = AnchoredConv2d.from_conv(proj, energy=energy)
        report.add(f"patch_embeds.{stage}.proj", "Conv2d", f"AnchoredConv2d (period {proj.stride[0]})")
        for index, block in enumerate(model.blocks[stage]):
            name = f"blocks.{stage}.{index}.attn"
            attn = block.attn
            if isinstance(attn, LocallyGroupedAttn) and not isinstance(attn, AnchoredLocallyGroupedAttn):
                block.attn = AnchoredLocallyGroupedAttn.from_timm(attn, energy=energy)
                multiple = lcm_pair(multiple, (stride[0] * attn.ws, stride[1] * attn.ws))
                report.add(name, "LocallyGroupedAttn", f"AnchoredLocallyGroupedAttn (period {attn.ws})")
            elif isinstance(attn, GlobalSubSampleAttn) and not isinstance(attn, AnchoredGlobalSubSampleAttn):
                block.attn = AnchoredGlobalSubSampleAttn.from_timm(attn, energy=energy)
                if attn.sr is None:
                    report.add(
                        name,
                        "GlobalSubSampleAttn (all tokens as keys)",
                        "AnchoredGlobalSubSampleAttn (keys in content order)",
                    )
                else:
                    multiple = lcm_pair(multiple, (stride[0] * attn.sr_ratio, stride[1] * attn.sr_ratio))
                    report.add(name, "GlobalSubSampleAttn", f"AnchoredGlobalSubSampleAttn (period {attn.sr_ratio})")
        for index, conv in enumerate(model.pos_block[stage].proj):
            make_conv_circular(conv)
            report.add(f"pos_block.{stage}.proj.{index}", "Conv2d, zero padding", "Conv2d, circular padding")
    report.input_multiple = multiple
