"""AnchoredPatchEmbed: anchored ViT patch embedding with a circular positional encoding."""

from __future__ import annotations

import pytest
import torch
from contract import LayerContract
from hypothesis import given
from hypothesis import strategies as st
from timm.layers import PatchEmbed
from torch import nn

from equivit.layers import AnchoredConv2d, AnchoredPatchEmbed
from equivit.testing import FAMILIES, make_images
from helpers import is_some_roll


def _embed(output_fmt: str | None = None, seed: int = 0) -> AnchoredPatchEmbed:
    torch.manual_seed(seed)
    embed = AnchoredPatchEmbed(img_size=None, patch_size=4, in_chans=3, embed_dim=6, output_fmt=output_fmt)
    with torch.no_grad():
        embed.pos_conv.proj.weight.normal_()  # type: ignore[union-attr]
    return embed


class TestAnchoredPatchEmbed(LayerContract):
    """ViT's patch embedding (patch 4, maps out) with a trained-like circular position encoding."""

    channels, stride, output_channels = 3, 4, 6

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        embed = AnchoredPatchEmbed.from_patch_embed(self.make_stock().to(dtype))
        with torch.no_grad():
            weight = embed.pos_conv.proj.weight  # type: ignore[union-attr]
            weight.copy_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)))
        return embed

    def make_stock(self) -> nn.Module:
        torch.manual_seed(0)
        return PatchEmbed(img_size=None, patch_size=4, in_chans=3, embed_dim=6, output_fmt="NCHW").eval()

    def parameters_shared(self, layer: nn.Module, stock: nn.Module) -> bool:
        return torch.equal(layer.proj.weight, stock.proj.weight) and torch.equal(layer.proj.bias, stock.proj.bias)


def test_smoke_layouts_and_shared_weights() -> None:
    stock = PatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=16)
    embed = AnchoredPatchEmbed.from_patch_embed(stock)
    assert isinstance(embed.proj, AnchoredConv2d)
    assert embed.proj.weight is stock.proj.weight
    assert embed(torch.randn(2, 3, 32, 48)).shape == (2, 24, 16)  # any multiple of the patch, not only 32 x 32
    assert _embed("NHWC")(torch.randn(2, 3, 8, 12)).shape == (2, 2, 3, 6)
    assert _embed("NCHW")(torch.randn(2, 3, 8, 12)).shape == (2, 6, 2, 3)
    assert AnchoredPatchEmbed.from_patch_embed(stock, pos_conv=False).pos_conv is None


def test_errors() -> None:
    with pytest.raises(ValueError, match="30 x 32 is not a multiple of the patch size 8 x 8"):
        AnchoredPatchEmbed(patch_size=8, embed_dim=4)(torch.randn(1, 3, 30, 32))
    with pytest.raises(TypeError, match="PatchEmbed"):
        AnchoredPatchEmbed.from_patch_embed(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


@given(
    family=st.sampled_from(FAMILIES),
    blocks=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    shift=st.tuples(st.integers(-16, 16), st.integers(-16, 16)),
    seed=st.integers(0, 2**16),
)
def test_tokens_of_shifted_image_are_a_roll(
    family: str, blocks: tuple[int, int], shift: tuple[int, int], seed: int
) -> None:
    embed = _embed("NHWC")
    x = make_images(family, (2, 3, 4 * blocks[0], 4 * blocks[1]), seed=seed)
    with torch.no_grad():
        reference, shifted = embed(x), embed(torch.roll(x, shift, dims=(2, 3)))
    scale = max(1.0, float(reference.abs().max()))  # rounding may differ between output positions
    for b in range(2):
        assert is_some_roll(shifted[b], reference[b], dims=(0, 1), atol=1e-5 * scale), f"{family}, sample {b}"
