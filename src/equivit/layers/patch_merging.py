"""Anchored patch merging for Swin v1 and v2 (2 x 2 neighbouring tokens concatenated, then projected)."""

from __future__ import annotations

import torch
from timm.models import swin_transformer, swin_transformer_v2
from torch import nn

from equivit.anchor_core import anchor
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.layers.sharing import parent_method, retype

__all__ = ["AnchoredPatchMerging", "AnchoredPatchMergingV2", "anchored_patch_merging"]


class _AnchorFirst(nn.Module):
    """Anchor the channels-last grid with period 2, then run timm's merging (whose padding is then a no-op)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anchor with period 2, merge 2 x 2 tokens, project and normalise as timm does.

        Args:
            x: Token grid, channels last.

        Returns:
            The merged grid.

        Raises:
            ValueError: If ``x`` is not 4-D or its grid is not even.
        """
        x, _ = anchor(x, 2, 2, self.energy, True)
        return self._timm_forward(x)

    def _timm_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The merging of the timm module (each subclass refers to its timm parent's function)."""
        raise NotImplementedError


@equivariant_layer(period="stride")
class AnchoredPatchMerging(_AnchorFirst, swin_transformer.PatchMerging):
    r"""timm's Swin ``PatchMerging`` that anchors its token grid with period 2 first.

    Merging concatenates each 2 x 2 block of tokens; a circular shift by an odd number of tokens
    changes which tokens share a block. Anchoring rolls the grid to its polyphase anchor first,
    so the merged grid of a shifted input is exactly a circular shift of the merged grid. timm
    pads odd sizes with zeros; here odd sizes are an error. Same parameters as timm's module.

    Build it with :func:`anchored_patch_merging`; the constructor is timm's.

    Shape:
        - x: :math:`(B, H, W, C)`, ``H`` and ``W`` even
        - output: :math:`(B, H/2, W/2, C_{out})`
    """

    _timm_forward = parent_method(swin_transformer.PatchMerging.forward, "_timm_forward")


@equivariant_layer(period="stride")
class AnchoredPatchMergingV2(_AnchorFirst, swin_transformer_v2.PatchMerging):
    r"""Swin v2's ``PatchMerging`` (projection before the norm), anchored as :class:`AnchoredPatchMerging`.

    Shape:
        - x: :math:`(B, H, W, C)`, ``H`` and ``W`` even
        - output: :math:`(B, H/2, W/2, C_{out})`
    """

    _timm_forward = parent_method(swin_transformer_v2.PatchMerging.forward, "_timm_forward")


def anchored_patch_merging(
    module: nn.Module, *, energy: Energy = "l1"
) -> AnchoredPatchMerging | AnchoredPatchMergingV2:
    """The anchored version of a Swin v1 or v2 ``PatchMerging``, sharing its parameters (no copy).

    Args:
        module: timm's ``PatchMerging`` (``swin_transformer`` or ``swin_transformer_v2``).
        energy: Energy that picks the anchor.

    Returns:
        The anchored patch merging.

    Raises:
        TypeError: If ``module`` is neither.
    """
    if isinstance(module, swin_transformer.PatchMerging):
        new: AnchoredPatchMerging | AnchoredPatchMergingV2 = retype(module, AnchoredPatchMerging)
    elif isinstance(module, swin_transformer_v2.PatchMerging):
        new = retype(module, AnchoredPatchMergingV2)
    else:
        raise TypeError(f"expected a timm Swin PatchMerging, got {type(module).__name__}")
    new.energy = energy
    return new
