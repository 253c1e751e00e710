"""The ByobNet family: timm's ``byobnet`` module.

Models built by ``ByobNet``. Its blocks (basic, bottleneck, dark, edge, RepVGG, MobileOne)
downsample in the main path and in a shortcut that may be a strided convolution or an average
pooling; so the network input is anchored once with period = the total stride and every strided
convolution and pooling is anchored too, with circular padding everywhere
(:func:`~equivit.cnn_policy.convert_network`): parallel paths stay aligned wherever they meet. No
parameter is added or renamed.

HaloNet, BoTNet, LambdaNet (timm's ``byoanet`` module) and BAT are ByobNets with self-attention
blocks whose terms are tied to positions (relative position embeddings over blocks or over a grid
of fixed size, a bilinear attention transform that samples blocks at fixed positions): they take
the stem-anchored policy instead (:func:`~equivit.token_grid.convert_grid_anchored`): the stem's
strided layers are anchored (circular padding), its map is anchored with period = the map, and
the stages run as timm wrote them on the same map for every circular shift of the image
(:class:`EquivariantByobNet`, feature maps rolled back).

CLIP's ResNets end in an attention pooling head (``AttentionPool2d``) that adds an absolute
position embedding to the final map: the head becomes a :class:`GridAnchoredAttentionPool2d`, which
rolls the map to its anchor with period = the map before timm's pooling, so that the head sees the
same map for every whole-cell shift (the rest as the convolutional ByobNets).

MobileViT v1 and v2 (timm's ``mobilevit`` module) are ByobNets with blocks that cut their map into
``p x p`` patches and attend across patches (no position terms): a shift by whole patches only
reorders the patches. A block at stride ``s`` needs shifts by multiples of ``s p``, so the period is
the total stride times ``p`` (64 for every named model).
"""

from __future__ import annotations

import math

import torch
from timm.layers import ConvNormAct
from timm.layers.attention_pool2d import AttentionPool2d
from timm.layers.bottleneck_attn import BottleneckAttn
from timm.layers.halo_attn import HaloAttn
from timm.layers.lambda_layer import LambdaLayer
from timm.layers.non_local_attn import BatNonLocalAttn
from timm.models import byobnet, mobilevit
from timm.models.byobnet import ByobNet
from torch import nn

from equivit.anchor_core import anchor, roll_back
from equivit.cnn_policy import convert_network
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.layers.sharing import parent_method
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport
from equivit.token_grid import GridAnchoredFeatureListNet, GridAnchoredStages, convert_grid_anchored

__all__ = ["FAMILY", "EquivariantByobNet", "GridAnchoredAttentionPool2d", "convert_byobnet"]

POSITIONAL_ATTENTION = (BottleneckAttn, HaloAttn, LambdaLayer, BatNonLocalAttn)
"""Attention layers of ByobNets whose terms are tied to positions: such models take the stem-anchored policy."""


@equivariant_layer(period="grid", anchored_children=("stages", "final_conv"), fx="traced")
class EquivariantByobNet(GridAnchoredStages, ByobNet):
    """timm's ``ByobNet`` whose stages see the stem's map from an origin chosen by content.

    For ByobNets with position-bound attention (HaloNet, BoTNet, LambdaNet, BAT). Same parameters
    and state-dict keys as timm's. Feature maps are rolled back
    (:class:`~equivit.token_grid.GridAnchoredStages`).
    """

    def anchored_entry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stem's anchored map and its origins."""
        return self.stem(x)

    def finish_features(self, x: torch.Tensor) -> torch.Tensor:
        """Timm's final convolution after the last stage."""
        return self.final_conv(x)


@equivariant_layer(period="grid", anchored_children=("qkv", "q", "k", "v", "proj"))
class GridAnchoredAttentionPool2d(AttentionPool2d):
    """timm's ``AttentionPool2d`` (CLIP's head) run on its input rolled to the anchor with period = the map.

    timm adds a learned position embedding to the final map's tokens before attending from their
    mean (or a class token): a map that moved by whole cells would meet other embeddings. Anchored
    with period = the map, every such shift gives the head the same map, so the pooled output is
    the same; a spatial output (``pool_type=''``) is rolled back to the input's frame.

    Shape:
        - x: :math:`(B, C, H, W)`
        - output: :math:`(B, D)` pooled, or :math:`(B, D, H, W)`
    """

    equivit_energy = "l1"
    _stock_forward = parent_method(AttentionPool2d.forward, "_stock_forward")

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Anchor the map, pool as timm does, roll a spatial output back.

        Args:
            x: The final feature map.
            pre_logits: Return the pooled features before the output projection, as timm's.

        Returns:
            The pooled features (or map).
        """
        anchored, offsets = anchor(x, x.shape[-2], x.shape[-1], self.equivit_energy, False)
        out = self._stock_forward(anchored, pre_logits)
        if out.dim() == 4:
            out = roll_back(out, offsets, False)
        return out


def convert_byobnet(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Convert a ByobNet: one anchor at the input, or at the stem's map where attention is tied to positions.

    Networks of convolutions and MobileViT blocks take :func:`~equivit.cnn_policy.convert_network`
    (the period widened for MobileViT patches); networks with a :data:`POSITIONAL_ATTENTION`
    layer take :func:`~equivit.token_grid.convert_grid_anchored`.

    Args:
        model: The model, or timm's ``features_only`` wrapper of one, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.
    """
    if any(isinstance(module, POSITIONAL_ATTENTION) for module in model.modules()):
        convert_grid_anchored(
            model,
            report,
            energy,
            entry="stem",
            entry_types=(byobnet.Stem, ConvNormAct),
            stock=ByobNet,
            converted=EquivariantByobNet,
            input_multiple=32,
        )
        report.empty_batch_ok = False  # timm's halo, bottleneck and lambda attention reshape with -1
        return
    patches = [
        size
        for module in model.modules()
        if isinstance(module, mobilevit.MobileVitBlock | mobilevit.MobileVitV2Block)
        for size in module.patch_size
    ]
    convert_network(model, report, energy, entry="stem", period_factor=math.lcm(1, *patches))
    for name, module in model.named_modules():
        if type(module) is AttentionPool2d:
            module.__class__ = GridAnchoredAttentionPool2d
            module.equivit_energy = energy
            report.add(name, "AttentionPool2d (absolute position embedding)", "GridAnchoredAttentionPool2d")
            report.empty_batch_ok = False  # timm's attention pooling reshapes with -1
    if patches:  # timm's patch unfolding reshapes with -1, which an empty batch leaves undetermined
        report.empty_batch_ok = False


FAMILY = Family(
    name="byobnet",
    description=(
        "ByobNet: RepVGG, MobileOne, GENet, ResNet/ResNeXt/RegNetZ/GCNet/ECA variants (*ts, *t, "
        "gernet_*, repvgg_*, mobileone_*) built from block specs, MobileViT v1/v2 (mobilevit*), "
        "HaloNet, BoTNet, LambdaNet (halonet*, botnet*, lambda_resnet*, ...) and BAT (bat_*)"
    ),
    model_classes=(ByobNet,),
    converted_classes=(EquivariantByobNet,),
    convert=convert_byobnet,  # type: ignore[arg-type]
    entry="stem",
    feature_markers=(*module_types(byobnet), *module_types(mobilevit)),
    accepted=(*module_types(byobnet), *module_types(mobilevit), GridAnchoredFeatureListNet),
    timm_modules=("byobnet", "mobilevit", "byoanet"),
    empty_batch_ok=True,
    examples={
        "byobnet": Example("test_byobnet", {}, (64, 64), quick=False),
        "mobilevit": Example("mobilevit_xxs", {}, (64, 128), quick=False),
        "halonet": Example("haloregnetz_b", {}, (224, 224), quick=False),  # halo blocks of 7 at /32
        "botnet": Example("botnet26t_256", {"img_size": 64}, (64, 64), quick=False),
        "lambda_resnet": Example("lambda_resnet26t", {}, (64, 64), quick=False),
        "mobilevitv2": Example("mobilevitv2_050", {}, (64, 64), quick=False),
        # CLIP's attention pooling head, its position embedding resampled to the 2 x 3 map.
        "resnet_clip": Example("resnet50_clip", {"img_size": 64}, (64, 96), quick=False),
    },
)
