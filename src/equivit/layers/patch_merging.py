"""Anchored patch merging for Swin (2 x 2 neighbouring tokens concatenated, then projected)."""

from __future__ import annotations

import torch
from timm.models.swin_transformer import PatchMerging

from equivit.layers.sharing import retype
from equivit.polyphase import Energy, polyphase_anchor

__all__ = ["AnchoredPatchMerging"]


class AnchoredPatchMerging(PatchMerging):
    r"""timm's Swin ``PatchMerging`` that anchors its token grid with period 2 first.

    Merging concatenates each 2 x 2 block of tokens; a circular shift by an odd number of tokens
    changes which tokens share a block. Anchoring rolls the grid to its polyphase anchor first,
    so the merged grid of a shifted input is exactly a circular shift of the merged grid. timm
    pads odd sizes with zeros; here odd sizes are an error. Same parameters as timm's module.

    Build it with :meth:`from_timm`; the constructor is timm's.

    Shape:
        - x: :math:`(B, H, W, C)`, ``H`` and ``W`` even
        - output: :math:`(B, H/2, W/2, C_{out})`
    """

    energy: Energy

    @classmethod
    def from_timm(cls, module: PatchMerging, *, energy: Energy = "l1") -> AnchoredPatchMerging:
        """The same module (same parameter objects), anchored.

        Args:
            module: timm's ``PatchMerging``.
            energy: Energy that picks the anchor.

        Returns:
            The anchored patch merging.

        Raises:
            TypeError: If ``module`` is not a ``PatchMerging``.
        """
        if not isinstance(module, PatchMerging):
            raise TypeError(f"expected a timm PatchMerging, got {type(module).__name__}")
        new = retype(module, cls)
        new.energy = energy
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anchor with period 2, merge 2 x 2 tokens, normalise and project.

        Args:
            x: Token grid, channels last.

        Returns:
            The merged grid.

        Raises:
            ValueError: If ``x`` is not 4-D or its grid is not even.
        """
        x, _ = polyphase_anchor(x, 2, energy=self.energy, channels_last=True)
        batch, height, width, channels = x.shape
        x = x.reshape(batch, height // 2, 2, width // 2, 2, channels).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))
