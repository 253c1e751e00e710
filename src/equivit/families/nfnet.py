"""The NFNet family: timm's ``nfnet`` module.

Models built by ``NormFreeNet``: NFNet-F (``dm_nfnet_*``), NFNet-L, ECA-NFNet, NF-RegNet and
NF-ResNet. Their convolutions standardise their weights in ``forward`` (``ScaledStdConv2d``, and
the TensorFlow "same" variant of NFNet-F); each becomes its circular subclass, anchored with period
= stride where strided (:func:`~equivit.layers.circular_std_conv`), with the same parameters. Their
blocks downsample in the main path and in an average-pooled shortcut, so the network input is
anchored once with period = the total stride (:func:`~equivit.cnn_policy.convert_network`). No
parameter is added or renamed. The input anchor sits in the stem's first convolution, since timm's
``forward_intermediates`` runs the stem's children one by one.
"""

from __future__ import annotations

from timm.models import nfnet
from torch import nn

from equivit.cnn_policy import convert_network
from equivit.energy import Energy
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport

__all__ = ["FAMILY", "convert_nfnet"]


def convert_nfnet(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Convert a ``NormFreeNet`` (or timm's ``features_only`` wrapper of one) in place.

    :func:`~equivit.cnn_policy.convert_network` with the input anchor in the stem's first module:
    ``forward`` calls the stem, but ``forward_intermediates`` calls its children one by one.

    Args:
        model: The model.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.
    """
    stem = getattr(getattr(model, "model", model), "stem", None)  # FeatureGetterNet holds the model
    first = next(iter(stem._modules), None) if isinstance(stem, nn.Sequential) else None
    convert_network(model, report, energy, entry=f"stem.{first}" if first else "stem")


FAMILY = Family(
    name="nfnet",
    description="NFNet: normalizer-free networks (dm_nfnet_*, nfnet_*, eca_nfnet_*, nf_regnet_*, nf_resnet*)",
    model_classes=(nfnet.NormFreeNet,),
    convert=convert_nfnet,
    entry="stem",
    feature_markers=module_types(nfnet),
    accepted=module_types(nfnet),
    timm_modules=("nfnet",),
    empty_batch_ok=True,
    examples={
        "nfnet": Example("nf_regnet_b0", {}, (64, 64), quick=False),
    },
)
