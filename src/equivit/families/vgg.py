"""The VGG family: timm's ``vgg`` module.

VGG's convolutions pad with zeros and its max poolings stride by 2: the network input is anchored
once with period = the total stride, every pooling is anchored too and every padding made circular
(:func:`~equivit.cnn_policy.convert_network`), so the last map moves with the image. Its pre-logits
``ConvMlp`` is a 7 x 7 unpadded convolution over that map (after an average pooling up to 7 x 7 for
smaller maps): a fully connected layer tied to positions. It becomes a
:class:`GridAnchoredConvMlp`, which first anchors its input map with period = the map, so that it
reads the same map for every circular shift of the image. No parameter is added or renamed.
"""

from __future__ import annotations

import torch
from timm.models import vgg as timm_vgg
from timm.models.vgg import VGG, ConvMlp
from torch import nn

from equivit.anchor_core import anchor
from equivit.cnn_policy import convert_network
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.layers.sharing import parent_method, retype
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport

__all__ = ["FAMILY", "GridAnchoredConvMlp", "convert_vgg"]


@equivariant_layer(period="grid", anchored_children=("fc1", "fc2"), fx="leaf")
class GridAnchoredConvMlp(ConvMlp):
    """timm's ``ConvMlp`` (VGG's pre-logits) that anchors its input map with period = the map.

    Same parameters as timm's. A circular shift of the map reaches timm's convolutions as the same
    map, so their output, which depends on where each value sits, is the same.

    Shape:
        - input: :math:`(B, C, H, W)`
        - output: that of timm's ``ConvMlp``
    """

    equivit_energy = "l1"  # the energy that picks the origin (no annotation: TorchScript infers str)

    _stock_forward = parent_method(ConvMlp.forward, "_stock_forward")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anchor the map (a position chosen from content goes to the origin), then run timm's ``ConvMlp``."""
        x, _ = anchor(x, x.shape[-2], x.shape[-1], self.equivit_energy, False)
        return self._stock_forward(x)


def convert_vgg(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ``VGG`` (or its ``features_only`` wrapper) shift-equivariant, in place.

    Args:
        model: The model, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.
    """
    head = getattr(model, "pre_logits", None)
    convert_network(model, report, energy, entry="features.0")
    if type(head) is ConvMlp:
        anchored = retype(head, GridAnchoredConvMlp)
        anchored.equivit_energy = energy
        model.pre_logits = anchored
        report.add("pre_logits", "ConvMlp", "GridAnchoredConvMlp (input map anchored with period = the map)")


FAMILY = Family(
    name="vgg",
    description="VGG (vgg*)",
    model_classes=(VGG,),
    convert=convert_vgg,  # type: ignore[arg-type]
    entry="features.0",
    feature_markers=module_types(timm_vgg),
    accepted=module_types(timm_vgg, without=("ConvMlp",)),
    timm_modules=("vgg",),
    empty_batch_ok=True,
    examples={
        "vgg": Example("vgg11", {"mlp_ratio": 0.01}, (64, 96), quick=False),
        "vgg_bn": Example("vgg11_bn", {"mlp_ratio": 0.01}, (64, 64), quick=False),
    },
)
