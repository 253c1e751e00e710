"""Anchored patch embedding for ViT and DeiT, with a circular convolutional positional encoding."""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import Format, PatchEmbed, nchw_to
from torch import nn

from equivit.energy import Energy
from equivit.layers.anchored_conv import AnchoredConv2d
from equivit.layers.declare import equivariant_layer
from equivit.layers.pos_conv import CircularPosConv

__all__ = ["AnchoredPatchEmbed"]


@equivariant_layer(period="stride")
class AnchoredPatchEmbed(PatchEmbed):
    """timm ``PatchEmbed`` whose projection is anchored, followed by an optional circular PEG.

    The image is rolled to its polyphase anchor with period = patch size, then cut into patches
    and projected (:class:`~equivit.layers.AnchoredConv2d`), then normalised as in timm, then
    given a :class:`~equivit.layers.CircularPosConv` positional encoding on the token grid
    (where ViT had an absolute position embedding). A circular shift of the image gives a
    circular shift of the token grid, so the output is exactly shift-equivariant at token
    resolution. Any ``H`` and ``W`` that are multiples of the patch size are accepted: there is
    no fixed image size and no padding.

    Parameter names are those of timm's ``PatchEmbed`` (``proj``, ``norm``) plus ``pos_conv``.

    Args:
        img_size: Nominal image size (kept for timm's bookkeeping; not enforced).
        patch_size: Patch size; the anchoring period.
        in_chans: Image channels.
        embed_dim: Token channels.
        norm_layer: Normalisation of the tokens, as in timm.
        flatten: Return ``(B, N, C)`` tokens (else see ``output_fmt``).
        output_fmt: ``"NCHW"``, ``"NHWC"``, ``"NLC"`` or ``"NCL"``, as in timm.
        bias: Whether the projection has a bias.
        pos_conv: Whether to add the circular positional encoding.
        energy: Energy that picks the anchor.
        device: Device of the parameters.
        dtype: Dtype of the parameters.

    Shape:
        - input: :math:`(B, C_{in}, H, W)`, ``H`` and ``W`` multiples of the patch size
        - output: :math:`(B, N, D)` with ``flatten``, else ``(B, H/p, W/p, D)`` for ``"NHWC"``, etc.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] | None = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm_layer: Callable[..., nn.Module] | None = None,
        flatten: bool = True,
        output_fmt: str | None = None,
        bias: bool = True,
        pos_conv: bool = True,
        energy: Energy = "l1",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, norm_layer=norm_layer,
            flatten=flatten, output_fmt=output_fmt, bias=bias, strict_img_size=False, dynamic_img_pad=False,
            device=device, dtype=dtype,
        )  # fmt: skip
        self.proj = AnchoredConv2d(
            in_chans, embed_dim, self.patch_size, self.patch_size, bias=bias, energy=energy, device=device, dtype=dtype
        )
        self.pos_conv = CircularPosConv(embed_dim, device=device, dtype=dtype) if pos_conv else None

    @classmethod
    def from_patch_embed(
        cls, patch_embed: PatchEmbed, *, pos_conv: bool = True, energy: Energy = "l1"
    ) -> AnchoredPatchEmbed:
        """Build from a timm ``PatchEmbed``, sharing its projection and norm (no copy).

        Args:
            patch_embed: The patch embedding to anchor. Its dynamic padding, if any, is dropped:
                the anchored version requires sizes that are multiples of the patch size.
            pos_conv: Whether to add a (new, zero-initialised) circular positional encoding.
            energy: Energy that picks the anchor.

        Returns:
            The anchored patch embedding.

        Raises:
            TypeError: If ``patch_embed`` is not a timm ``PatchEmbed`` with an ``nn.Conv2d`` projection.
        """
        if not isinstance(patch_embed, PatchEmbed) or not isinstance(patch_embed.proj, nn.Conv2d):
            raise TypeError(
                f"expected a timm PatchEmbed with an nn.Conv2d projection, got {type(patch_embed).__name__}"
            )
        proj = patch_embed.proj
        new = cls(
            img_size=patch_embed.img_size, patch_size=patch_embed.patch_size, in_chans=proj.in_channels,
            embed_dim=proj.out_channels, bias=proj.bias is not None, pos_conv=False, energy=energy, device="meta",
        )  # fmt: skip
        new.flatten = patch_embed.flatten
        new.output_fmt = patch_embed.output_fmt
        new.proj = proj if isinstance(proj, AnchoredConv2d) else AnchoredConv2d.from_conv(proj, energy=energy)
        new.norm = patch_embed.norm
        if pos_conv:
            new.pos_conv = CircularPosConv(proj.out_channels, device=proj.weight.device, dtype=proj.weight.dtype)
        new.train(patch_embed.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anchor, project, normalise, add the positional encoding, and lay out the tokens.

        Args:
            x: Images.

        Returns:
            Tokens in the configured layout.

        Raises:
            ValueError: If ``x`` is not 4-D or ``H``/``W`` is not a multiple of the patch size.
        """
        if x.dim() == 4 and (x.shape[-2] % self.patch_size[0] or x.shape[-1] % self.patch_size[1]):
            raise ValueError(
                f"input size H x W = {x.shape[-2]} x {x.shape[-1]} is not a multiple of the patch size "
                f"{self.patch_size[0]} x {self.patch_size[1]}; resize or crop the images to a multiple "
                "(padding would break shift equivariance)"
            )
        x = self.proj(x)
        if not isinstance(self.norm, nn.Identity):
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.pos_conv is not None:
            x = self.pos_conv(x)
        if self.flatten:
            return x.flatten(2).transpose(1, 2)
        if self.output_fmt != Format.NCHW:
            return nchw_to(x, self.output_fmt)
        return x
