"""The families equivit converts, one module each; importing this package registers them.

Each module ends with its :class:`~equivit.registry.Family` record, ``FAMILY``: the timm classes,
the converter, the entry module, the ``features_only`` markers, the accepted module types, the
timm names and small example configurations. See :mod:`equivit.registry` for registering a family
from outside the package.
"""

from __future__ import annotations

import sys

from equivit.families import (
    beit,
    byobnet,
    cait,
    coat,
    convit,
    convmixer,
    convnext,
    cpubone,
    csatv2,
    cspnet,
    cspnext,
    davit,
    densenet,
    dla,
    dpn,
    edgenext,
    efficientformer,
    efficientformer_v2,
    efficientnet,
    efficientvim,
    efficientvit_mit,
    efficientvit_msra,
    eva,
    fasternet,
    fastvit,
    focalnet,
    gcvit,
    gemma4_vit,
    ghostnet,
    hgnet,
    hiera,
    hieradet,
    hrnet,
    iformer,
    inception_next,
    lcnetv2,
    levit,
    lowformer,
    mambaout,
    maxxvit,
    metaformer,
    mlp_mixer,
    mobilenetv5,
    mvitv2,
    naflexvit,
    nest,
    nextvit,
    nfnet,
    pvt_v2,
    rdnet,
    regnet,
    repghost,
    repvit,
    resnet,
    resnetv2,
    rexnet,
    selecsls,
    senet,
    sequencer,
    shvit,
    starnet,
    swiftformer,
    swin,
    swin_v2_cr,
    tiny_vit,
    tnt,
    tresnet,
    twins,
    vgg,
    visformer,
    vision_towers,
    vit,
    vit_relpos,
    vit_sam,
    volo,
    vovnet,
    xception_aligned,
    xcit,
)
from equivit.fx import record_helper_calls
from equivit.registry import Family, register_family

__all__ = ["BUILT_IN"]

BUILT_IN: tuple[Family, ...] = tuple(
    register_family(family, replace=True)
    for family in (
        vit.FAMILY, twins.FAMILY, swin.FAMILY, pvt_v2.FAMILY, resnet.FAMILY, convnext.FAMILY,
        efficientnet.EFFICIENTNET, efficientnet.MOBILENETV3, regnet.FAMILY,
        resnetv2.FAMILY,
        # Transformers on one token grid: the grid anchored with period = the grid.
        eva.FAMILY, vit_relpos.FAMILY, beit.FAMILY, cait.FAMILY, mlp_mixer.FAMILY, xcit.FAMILY, convit.FAMILY,
        vit_sam.FAMILY, naflexvit.FAMILY, vision_towers.QWEN3, vision_towers.DEEPSEEK,
        tnt.FAMILY, coat.FAMILY, gemma4_vit.FAMILY,
        # Hierarchical transformers: the stem's map anchored with period = the map.
        maxxvit.FAMILY, swin_v2_cr.FAMILY, metaformer.FAMILY, levit.FAMILY, tiny_vit.FAMILY,
        davit.FAMILY, gcvit.FAMILY, edgenext.FAMILY, nextvit.FAMILY, efficientformer_v2.FAMILY,
        efficientvit_msra.FAMILY, lowformer.FAMILY, cpubone.FAMILY,
        visformer.FAMILY, efficientformer.FAMILY, nest.FAMILY, sequencer.FAMILY,
        volo.FAMILY, csatv2.FAMILY, mvitv2.FAMILY, hiera.FAMILY, hieradet.FAMILY,
        # Networks whose branches meet at different resolutions: one anchor at the input.
        byobnet.FAMILY, cspnet.FAMILY, dla.FAMILY, hrnet.FAMILY, densenet.FAMILY, dpn.FAMILY,
        vovnet.FAMILY, ghostnet.FAMILY, rexnet.FAMILY, senet.FAMILY, selecsls.FAMILY, xception_aligned.FAMILY,
        hgnet.FAMILY, repghost.FAMILY, fasternet.FAMILY, starnet.FAMILY, inception_next.FAMILY,
        rdnet.FAMILY, mambaout.FAMILY, tresnet.FAMILY, nfnet.FAMILY, cspnext.FAMILY, lcnetv2.FAMILY, convmixer.FAMILY,
        vgg.FAMILY,
        # Mobile and hybrid networks without position terms: one anchor at the input.
        fastvit.FAMILY, repvit.FAMILY, efficientvit_mit.FAMILY, swiftformer.FAMILY, focalnet.FAMILY, shvit.FAMILY,
        iformer.FAMILY, efficientvim.FAMILY, mobilenetv5.FAMILY,
    )
)  # fmt: skip
"""The families that ship with equivit, in the order they are listed."""

# Converted classes call the token-grid helpers from their own methods under timm's ``forward``:
# FX must record those calls as nodes in every family file (and in the shared stage loops).
for _name, _module in list(sys.modules.items()):
    if _name.startswith(f"{__name__}.") or _name == "equivit.token_grid":
        record_helper_calls(_module)
