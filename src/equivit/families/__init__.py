"""The families equivit converts, one module each; importing this package registers them.

Each module ends with its :class:`~equivit.registry.Family` record, ``FAMILY``: the timm classes,
the converter, the entry module, the ``features_only`` markers, the accepted module types, the
timm names and small example configurations. See :mod:`equivit.registry` for registering a family
from outside the package.
"""

from __future__ import annotations

from equivit.families import convnext, efficientnet, pvt_v2, regnet, resnet, resnetv2, swin, twins, vit
from equivit.registry import Family, register_family

__all__ = ["BUILT_IN"]

BUILT_IN: tuple[Family, ...] = tuple(
    register_family(family, replace=True)
    for family in (
        vit.FAMILY, twins.FAMILY, swin.FAMILY, pvt_v2.FAMILY, resnet.FAMILY, convnext.FAMILY,
        efficientnet.EFFICIENTNET, efficientnet.MOBILENETV3, regnet.FAMILY,
        resnetv2.FAMILY,
    )
)  # fmt: skip
"""The families that ship with equivit, in the order they are listed."""
