"""The ByobNet family: timm's ``byobnet`` module.

Models built by ``ByobNet``. Its blocks (basic, bottleneck, dark, edge, RepVGG, MobileOne)
downsample in the main path and in a shortcut that may be a strided convolution or an average
pooling; so the network input is anchored once with period = the total stride and every strided
convolution and pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they meet. No
parameter is added or renamed.

MobileViT v1 and v2 (timm's ``mobilevit`` module) are ByobNets with blocks that cut their map into
``p x p`` patches and attend across patches (no position terms): a shift by whole patches only
reorders the patches. A block at stride ``s`` needs shifts by multiples of ``s p``, so the period is
the total stride times ``p`` (64 for every named model).
"""

from __future__ import annotations

import math

from timm.models import byobnet, mobilevit
from torch import nn

from equivit.cnn_policy import convert_network
from equivit.energy import Energy
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport

__all__ = ["FAMILY", "convert_byobnet"]


def convert_byobnet(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Convert a ByobNet with :func:`~equivit.cnn_policy.convert_network`, the period widened for MobileViT patches.

    Args:
        model: The model, or timm's ``features_only`` wrapper of one, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.
    """
    patches = [
        size
        for module in model.modules()
        if isinstance(module, mobilevit.MobileVitBlock | mobilevit.MobileVitV2Block)
        for size in module.patch_size
    ]
    convert_network(model, report, energy, entry="stem", period_factor=math.lcm(1, *patches))
    if patches:  # timm's patch unfolding reshapes with -1, which an empty batch leaves undetermined
        report.empty_batch_ok = False


FAMILY = Family(
    name="byobnet",
    description=(
        "ByobNet: RepVGG, MobileOne, GENet, ResNet/ResNeXt/RegNetZ/GCNet/ECA variants (*ts, *t, "
        "gernet_*, repvgg_*, mobileone_*) built from block specs, and MobileViT v1/v2 (mobilevit*)"
    ),
    model_classes=(byobnet.ByobNet,),
    convert=convert_byobnet,  # type: ignore[arg-type]
    entry="stem",
    feature_markers=(*module_types(byobnet), *module_types(mobilevit)),
    accepted=(*module_types(byobnet), *module_types(mobilevit)),
    timm_modules=("byobnet", "mobilevit"),
    excluded={
        "bat_*": "its bilinear attention transform (BatNonLocalAttn) samples blocks at fixed positions; not converted",
        "*_clip": "CLIP's attention pooling head (AttentionPool2d) adds an absolute position embedding",
    },
    empty_batch_ok=True,
    examples={
        "byobnet": Example("test_byobnet", {}, (64, 64), quick=False),
        "mobilevit": Example("mobilevit_xxs", {}, (64, 128), quick=False),
        "mobilevitv2": Example("mobilevitv2_050", {}, (64, 64), quick=False),
    },
)
