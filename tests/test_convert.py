"""equivit.convert, create_model and convert_state_dict: API behaviour, errors, weights."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.pvt_v2 import Attention
from timm.models.twins import GlobalSubSampleAttn, LocallyGroupedAttn
from torch import nn

import equivit
from equivit.families.twins import AnchoredTwins
from equivit.layers import AnchoredConv2d, AnchoredPatchEmbed, AnchoredPvtStage
from equivit.testing import perturb_weights_

TINY_VIT = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32)
TINY_TWINS = dict(
    embed_dims=(16, 32, 32, 32), num_heads=(1, 1, 1, 1), depths=(1, 2, 1, 1), sr_ratios=(2, 2, 1, 1), img_size=64
)


def _vit(**kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return perturb_weights_(timm.create_model("vit_tiny_patch16_224", **{**TINY_VIT, **kwargs})).eval()


def test_returns_a_copy_and_keeps_the_stock_model() -> None:
    stock = _vit()
    before = {name: value.clone() for name, value in stock.state_dict().items()}
    converted = equivit.convert(stock)
    assert converted is not stock
    assert isinstance(converted.patch_embed, AnchoredPatchEmbed)
    assert stock.pos_embed is not None
    assert all(torch.equal(before[name], value) for name, value in stock.state_dict().items())


def test_inplace_keeps_parameter_objects() -> None:
    stock = _vit()
    weight = stock.patch_embed.proj.weight
    converted = equivit.convert(stock, inplace=True)
    assert converted is stock
    assert converted.patch_embed.proj.weight is weight


def test_converting_twice_is_a_no_op() -> None:
    converted = equivit.convert(_vit())
    again = equivit.convert(converted, inplace=True)
    assert again is converted
    assert equivit.is_converted(again)
    assert len(again.patch_embed._forward_pre_hooks) == 1  # the input check, at the model's entry


def test_report_says_what_was_replaced(capsys: pytest.CaptureFixture[str]) -> None:
    converted = equivit.convert(_vit(reg_tokens=2), verbose=True)
    report = converted.equivit_report
    assert report.family == "vit"
    assert report.input_multiple == (8, 8)
    assert report.folded_prefix == ["cls_token", "reg_token"]
    assert report.new_parameters == ["patch_embed.pos_conv.proj.weight", "patch_embed.pos_conv.proj.bias"]
    printed = capsys.readouterr().out
    assert "AnchoredPatchEmbed" in printed
    assert "pos_embed" in printed


def test_unsupported_model_lists_what_is_supported() -> None:
    with pytest.raises(
        equivit.UnsupportedModelError, match=r"(?s)an InceptionV3\..*vit: ViT.*twins: Twins.*swin: Swin"
    ):
        equivit.convert(timm.create_model("inception_v3"))


def test_unknown_modules_are_listed_and_can_be_trusted() -> None:
    class Shuffle(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    model = _vit()
    model.blocks[1].mlp.act = Shuffle()
    with pytest.raises(equivit.UnsupportedModelError, match=r"blocks\.1\.mlp\.act \(Shuffle\): unknown module"):
        equivit.convert(model)
    assert equivit.is_converted(equivit.convert(model, trusted=(Shuffle,)))
    # A 1-D convolution over a token sequence mixes neighbouring tokens; a pointwise one (kernel 1)
    # acts on each token alone, as a Linear layer does.
    model.blocks[0].mlp.fc1 = nn.Sequential(nn.Conv1d(1, 1, 3, padding=1))
    with pytest.raises(equivit.UnsupportedModelError, match=r"Conv1d\): 1-D convolution \(kernel \(3,\)"):
        equivit.convert(model, trusted=(Shuffle,))
    model.blocks[0].mlp.fc1 = nn.Sequential(nn.Conv1d(1, 1, 1))
    assert not [v for v in equivit.audit.equivariance_violations(model, (Shuffle,)) if "Conv1d" in v[1]]


def test_zero_padded_or_strided_convolutions_are_refused() -> None:
    model = _vit()
    model.head = nn.Sequential(nn.Unflatten(1, (32, 1, 1)), nn.Conv2d(32, 10, 3, padding=1), nn.Flatten())
    with pytest.raises(equivit.UnsupportedModelError, match="zero padding"):
        equivit.convert(model, trusted=(nn.Unflatten,))


def test_input_size_errors_name_the_multiple() -> None:
    vit = equivit.convert(_vit())
    with pytest.raises(ValueError, match="36 x 32 is not a multiple of 8 x 8"):
        vit(torch.randn(1, 3, 36, 32))
    # Twins: the patch strides (4 to 32); windows and sub-sampling act on the anchored grid.
    twins = equivit.create_model("twins_svt_small", **TINY_TWINS)
    assert twins.equivit_report.input_multiple == (32, 32)
    with pytest.raises(ValueError, match="240 x 224 is not a multiple of 32 x 32"):
        twins(torch.randn(1, 3, 240, 224))
    pcpvt = equivit.create_model("twins_pcpvt_small", **TINY_TWINS)
    assert pcpvt.equivit_report.input_multiple == (32, 32)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="energy"):
        equivit.convert(_vit(), energy="l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not converted"):
        equivit.convert_state_dict({}, _vit())


def test_converted_vit_is_the_stock_model_on_the_anchored_image() -> None:
    """With the grid part of pos_embed zeroed, the converted ViT (zero-initialised positional conv)
    is exactly the stock ViT applied to the anchored image: the fold of the prefix rows is right."""
    for kwargs in ({}, {"reg_tokens": 3}, {"class_token": False, "global_pool": "avg"}, {"no_embed_class": True}):
        stock = _vit(**kwargs)
        prefix = 0 if stock.no_embed_class else stock.num_prefix_tokens
        with torch.no_grad():
            stock.pos_embed[:, prefix:] = 0
        converted = equivit.convert(stock)
        x = torch.randn(3, 3, 32, 32)
        anchored, _ = equivit.polyphase_anchor(x, 8)
        with torch.no_grad():
            assert torch.allclose(converted(x), stock(anchored), atol=1e-5, rtol=0), kwargs


def test_stock_state_dict_loads_into_converted_vit_through_the_mapping() -> None:
    for name, kwargs in (("vit_tiny_patch16_224", {"reg_tokens": 2}), ("deit_tiny_distilled_patch16_224", {})):
        torch.manual_seed(1)
        trained = perturb_weights_(timm.create_model(name, **{**TINY_VIT, **kwargs}), seed=1).eval()
        expected = equivit.convert(trained)
        fresh = equivit.convert(timm.create_model(name, **{**TINY_VIT, **kwargs})).eval()
        with pytest.raises(RuntimeError, match="pos_embed"):
            fresh.load_state_dict(trained.state_dict())
        fresh.load_state_dict(equivit.convert_state_dict(trained.state_dict(), fresh), strict=True)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(fresh(x), expected(x)), name


def test_stock_state_dict_loads_strictly_into_converted_twins() -> None:
    for name in ("twins_pcpvt_small", "twins_svt_small"):
        torch.manual_seed(2)
        trained = perturb_weights_(timm.create_model(name, **TINY_TWINS), seed=2).eval()
        fresh = equivit.create_model(name, **TINY_TWINS).eval()
        fresh.load_state_dict(trained.state_dict(), strict=True)
        assert equivit.convert_state_dict(trained.state_dict(), fresh).keys() == trained.state_dict().keys()
        x = torch.randn(2, 3, 224, 224) if "svt" in name else torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(fresh(x), equivit.convert(trained)(x)), name


def test_twins_conversion_anchors_every_stage_and_keeps_timm_attention() -> None:
    svt = equivit.create_model("twins_svt_small", **TINY_TWINS)
    assert isinstance(svt, AnchoredTwins)
    kinds = {type(block.attn) for stage in svt.blocks for block in stage}
    assert kinds == {LocallyGroupedAttn, GlobalSubSampleAttn}  # timm's own, run on the anchored grid
    assert all(isinstance(embed.proj, AnchoredConv2d) for embed in svt.patch_embeds)
    assert all(conv.padding_mode == "circular" for pos in svt.pos_block for conv in pos.proj)
    assert list(svt.state_dict()) == list(timm.create_model("twins_svt_small", **TINY_TWINS).state_dict())


@pytest.mark.parametrize("size", [(64, 96), (96, 64)])
def test_twins_windows_need_no_multiple(size: tuple[int, int]) -> None:
    """7 x 7 windows on 16 x 24 and 24 x 16 grids: timm pads them, at the same place in the anchored frame."""
    torch.manual_seed(0)
    kwargs = {**TINY_TWINS, "wss": (7, 7, 7, 7), "img_size": size}
    stock = perturb_weights_(timm.create_model("twins_svt_small", num_classes=10, **kwargs)).eval()
    converted = equivit.convert(stock).eval()
    images = torch.randn(4, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = converted(images)
        for shift in [(3, 5), (-13, 7), (32, 0)]:
            shifted = converted(torch.roll(images, shift, dims=(2, 3)))
            assert torch.equal(shifted.argmax(1), reference.argmax(1))
            torch.testing.assert_close(shifted, reference, rtol=0, atol=2e-5 * float(reference.abs().max()))
        moved = stock(torch.roll(images, (3, 5), dims=(2, 3)))
    assert not torch.allclose(moved, stock(images), atol=1e-4)  # the stock model is not invariant


def test_pvt_conversion_anchors_every_stage_and_keeps_timm_attention() -> None:
    model = equivit.convert(timm.create_model("pvt_v2_b0"))
    assert all(isinstance(stage, AnchoredPvtStage) for stage in model.stages)
    assert all(type(block.attn) is Attention for stage in model.stages for block in stage.blocks)
    assert model.equivit_report.input_multiple == (32, 32)
    assert equivit.convert(timm.create_model("pvt_v2_b2_li")).equivit_report.input_multiple == (32, 32)


def test_training_step_runs_and_reaches_new_parameters() -> None:
    model = equivit.convert(_vit()).train()
    x, target = torch.randn(4, 3, 32, 32), torch.randint(0, 1000, (4,))
    nn.functional.cross_entropy(model(x), target).backward()
    assert model.patch_embed.pos_conv.proj.weight.grad is not None
    assert model.patch_embed.pos_conv.proj.weight.grad.abs().sum() > 0


@pytest.mark.slow  # the per-policy compile tests of test_compile.py run by default; this adds Twins via AOT
def test_converted_models_compile_without_graph_breaks() -> None:
    vit = equivit.convert(_vit())
    x = torch.randn(2, 3, 32, 32)
    assert torch._dynamo.explain(vit)(x).graph_break_count == 0
    twins = equivit.create_model("twins_pcpvt_small", **TINY_TWINS).eval()
    y = torch.randn(2, 3, 64, 64)
    assert torch._dynamo.explain(twins)(y).graph_break_count == 0
    compiled = torch.compile(twins, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.allclose(compiled(y), twins(y), atol=1e-5, rtol=0)
