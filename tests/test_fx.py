"""FX tracing of converted models: node names, feature extractors equal to eager, maps that move with the image."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import is_notrace_function, is_notrace_module
from timm.models import get_graph_node_names
from torch import nn

import equivit
from equivit.fx import LEAF_MODULES, NOTRACE_FUNCTIONS, TRACED_MODULES, EquivariantFeatureGraphNet
from equivit.layers import AnchoredBasicBlock
from equivit.testing import assert_shift_equivariant, load_photos, perturb_weights_
from helpers import FeatureMap
from zoo import NODE_CONFIGS, TINY, Layout, heavy, tiny_pair

IDS = [f[0] for f in NODE_CONFIGS]

# Families whose stock timm model builds with ``features_only=True, feature_cls="fx"`` (timm's feature_info
# of Twins names modules that are not nodes, and distilled DeiT's has no entries to index).
FX_FEATURES = [f for f in NODE_CONFIGS if f[0] not in ("twins_svt_small", "deit_tiny_distilled_patch16_224")]


@functools.cache
def photos(size: tuple[int, int]) -> torch.Tensor:
    return load_photos(size)[:4]


@functools.cache
def _converted(name: str) -> nn.Module:
    torch.manual_seed(0)
    kwargs = next(f[2] for f in NODE_CONFIGS if f[0] == name)
    model = equivit.convert(perturb_weights_(timm.create_model(name, pretrained=False, **kwargs), seed=0)).eval()
    if model.equivit_report.new_parameters:  # the positional convolution too, so its circular padding matters
        perturb_weights_(model, seed=1, only=model.equivit_report.new_parameters)
    return model


def _to_map(value: torch.Tensor, layout: str, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """A node's output as a ``(B, C, H, W)`` map."""
    if layout == "nhwc":
        return value.permute(0, 3, 1, 2)
    if layout == "nlc":
        tokens = value[:, prefix:]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
    return value


class NodeMap(nn.Module):
    """One node of an FX feature extractor, as a ``(B, C, H, W)`` map."""

    def __init__(self, extractor: nn.Module, node: str, layout: str, prefix: int, stride: int) -> None:
        super().__init__()
        self.extractor, self.node, self.layout, self.prefix, self.stride = extractor, node, layout, prefix, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = (x.shape[-2] // self.stride, x.shape[-1] // self.stride)
        return _to_map(self.extractor(x)[self.node], self.layout, self.prefix, grid)


def test_every_layer_is_a_leaf_or_traced_through() -> None:
    """A new layer class must be placed: timm's registry knows every leaf and function."""
    exported = {getattr(equivit.layers, n) for n in equivit.layers.__all__}
    module_types = {t for t in exported if isinstance(t, type) and issubclass(t, nn.Module)}
    assert module_types == set(LEAF_MODULES) | set(TRACED_MODULES)
    assert all(is_notrace_module(t) for t in LEAF_MODULES)
    assert not any(is_notrace_module(t) for t in TRACED_MODULES)
    assert all(is_notrace_function(f) for f in NOTRACE_FUNCTIONS)


@pytest.mark.parametrize(("name", "size", "kwargs", "nodes"), NODE_CONFIGS, ids=IDS)
def test_graph_node_names(
    name: str, size: tuple[int, int], kwargs: dict[str, object], nodes: dict[str, tuple[str, int, int]]
) -> None:
    model = _converted(name)
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert train_nodes == eval_nodes
    # A module traced through is named by its nodes' prefix; create_feature_extractor accepts the prefix.
    for node in nodes:
        assert any(n == node or n.startswith(node + ".") for n in eval_nodes), node
    # Every outermost equivit leaf is one node, and nothing inside it is traced.
    leaves = [n for n, m in model.named_modules() if isinstance(m, LEAF_MODULES)]
    outermost = [n for n in leaves if not any(n.startswith(other + ".") for other in leaves)]
    assert outermost
    for leaf in outermost:
        assert leaf in eval_nodes, leaf
        assert not [n for n in eval_nodes if n.startswith(leaf + ".")], leaf


@pytest.mark.parametrize(("name", "size", "kwargs", "nodes"), NODE_CONFIGS, ids=IDS)
def test_feature_extractor_equals_eager_and_moves_with_the_image(
    name: str, size: tuple[int, int], kwargs: dict[str, object], nodes: dict[str, tuple[str, int, int]]
) -> None:
    model = _converted(name)
    extractor = equivit.fx.create_feature_extractor(model, list(nodes))
    images = photos(size)[:2]
    eager: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(node).register_forward_hook(
            lambda _m, _a, out, node=node: eager.__setitem__(node, out)  # type: ignore[misc]
        )
        for node in nodes
    ]
    try:
        with torch.no_grad():
            logits = model(images)
            traced = extractor(images)
    finally:
        for handle in handles:
            handle.remove()
    assert list(traced) == list(nodes)
    for node in nodes:
        assert torch.equal(traced[node], eager[node]), node
    assert torch.isfinite(logits).all()
    for node, (layout, prefix, stride) in nodes.items():
        feature = NodeMap(extractor, node, layout, prefix, abs(stride))
        assert_shift_equivariant(feature, images, output_stride=stride if stride > 0 else None, atol=1e-5)


@pytest.mark.parametrize(("name", "size", "kwargs", "nodes"), NODE_CONFIGS, ids=IDS)
def test_traced_graphs_script(
    name: str, size: tuple[int, int], kwargs: dict[str, object], nodes: dict[str, Layout]
) -> None:
    """Graphs traced from converted models script, as timm's own tests do with stock ones."""
    model = _converted(name)
    images = photos(size)[:2]
    checked = equivit.fx.create_feature_extractor(model, list(nodes))
    for extractor in (checked, timm.models.create_feature_extractor(model, list(nodes))):
        scripted = torch.jit.script(extractor)
        with torch.no_grad():
            expected, actual = extractor(images), scripted(images)
        assert list(actual) == list(expected)
        for node in nodes:
            torch.testing.assert_close(actual[node], expected[node], rtol=1e-5, atol=1e-5)
    # The input check of equivit's extractor is a Python hook: scripting copies the graph, the eager one keeps it.
    assert len(checked._forward_pre_hooks) == 1


def test_scripted_feature_graph_net_matches_and_rejects_bad_sizes() -> None:
    torch.manual_seed(0)
    net = equivit.create_model("resnet18", features_only=True, feature_cls=EquivariantFeatureGraphNet).eval()
    scripted = torch.jit.script(net)
    images = photos((64, 96))[:2]
    with torch.no_grad():
        for expected, actual in zip(net(images), scripted(images), strict=True):
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert len(net._forward_pre_hooks) == 1  # scripting copies the net; the eager one keeps its check
    with pytest.raises(ValueError, match="not a multiple of 32 x 32"):
        net(torch.randn(1, 3, 64, 80))
    with pytest.raises(Exception, match="not a"):  # TorchScript re-raises the layers' ValueError as its own type
        scripted(torch.randn(1, 3, 64, 80))


def test_feature_extractor_keeps_the_report_and_the_input_size_check() -> None:
    model = _converted("pvt_v2_b0")
    extractor = equivit.fx.create_feature_extractor(model, ["stages.3"])
    assert extractor.equivit_report is model.equivit_report
    with pytest.raises(ValueError, match="not a multiple of 32 x 32"):
        extractor(torch.randn(1, 3, 64, 80))
    # timm's own extractor traces the model's forward, not its hooks: the check is not there.
    plain = timm.models.create_feature_extractor(model, ["stages.3"])
    assert not plain._forward_pre_hooks


@pytest.mark.parametrize(("name", "size", "kwargs", "nodes"), FX_FEATURES, ids=[f[0] for f in FX_FEATURES])
def test_features_only_fx(
    name: str, size: tuple[int, int], kwargs: dict[str, object], nodes: dict[str, Layout]
) -> None:
    torch.manual_seed(0)
    net = equivit.create_model(name, features_only=True, feature_cls=EquivariantFeatureGraphNet, **kwargs).eval()
    assert isinstance(net, EquivariantFeatureGraphNet)
    assert equivit.is_converted(net)
    torch.manual_seed(0)
    model = equivit.create_model(name, **kwargs).eval()
    modules = net.feature_info.module_name()
    images = photos(size)[:2]
    eager: dict[str, torch.Tensor] = {}
    for module in modules:
        model.get_submodule(module).register_forward_hook(
            lambda _m, _a, out, module=module: eager.__setitem__(module, out)  # type: ignore[misc]
        )
    with torch.no_grad():
        model(images)
        maps = net(images)
    assert len(maps) == len(modules)
    for module, value in zip(modules, maps, strict=True):
        assert torch.equal(value, eager[module]), module
    if name.startswith("vit"):
        return  # token sequences; their grids are checked through the feature extractor above
    for index, (channels, reduction) in enumerate(
        zip(net.feature_info.channels(), net.feature_info.reduction(), strict=True)
    ):
        assert_shift_equivariant(FeatureMap(net, index, channels, False), images, output_stride=reduction, atol=1e-5)


def test_create_model_with_fx_string_converts_before_tracing() -> None:
    net = equivit.create_model("resnet18", features_only=True, feature_cls="fx", out_indices=(2, 3), energy="l2")
    assert isinstance(net, EquivariantFeatureGraphNet)
    assert net.equivit_report.input_multiple == (32, 32)
    blocks = [m for m in net.modules() if "Block" in type(m).__name__]
    assert blocks
    assert all(isinstance(m, AnchoredBasicBlock) and m.energy == "l2" for m in blocks)
    images = photos((64, 96))[:2]
    for index, (channels, reduction) in enumerate(
        zip(net.feature_info.channels(), net.feature_info.reduction(), strict=True)
    ):
        assert_shift_equivariant(FeatureMap(net, index, channels, False), images, output_stride=reduction, atol=1e-5)


@pytest.mark.parametrize(
    "spelling", [{"feature_cls": "fx"}, {"feature_cls": "FX"}, {"feature_cfg": {"feature_cls": "fx"}}], ids=str
)
def test_create_model_takes_every_spelling_of_fx_features(spelling: dict[str, object]) -> None:
    """timm's tests ask for FX features with ``feature_cfg={"feature_cls": "fx"}``."""
    net = equivit.create_model("resnet18", features_only=True, out_indices=(3,), **spelling)
    assert isinstance(net, EquivariantFeatureGraphNet)
    assert equivit.is_converted(net)


def test_stock_fx_features_cannot_be_converted() -> None:
    """A graph traced from the stock model has the stock operations baked in: convert refuses it."""
    stock = timm.create_model("resnet18", features_only=True, feature_cls="fx")
    with pytest.raises(equivit.UnsupportedModelError, match="Convert the model first, then trace it"):
        equivit.convert(stock)
    with pytest.raises(equivit.UnsupportedModelError, match="baked in"):
        equivit.convert(timm.models.create_feature_extractor(timm.create_model("resnet18"), ["layer2"]))


def test_fx_example_in_the_checkpoints_guide() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "checkpoints.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL) if "get_graph_node_names" in b]
    assert len(blocks) == 1
    namespace: dict[str, object] = {"torch": torch, "equivit": equivit}
    exec(compile(blocks[0], "docs/checkpoints.md", "exec"), namespace)
    assert {"patch_embed", "layers.1.blocks.0"} <= set(namespace["eval_nodes"])  # type: ignore[arg-type]
    features = namespace["features"]
    assert {k: tuple(v.shape) for k, v in features.items()} == {  # type: ignore[attr-defined]
        "layers.1": (1, 16, 32, 192),
        "layers.3": (1, 4, 8, 768),
    }


def _traced_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The output node of timm's feature extractor on ``model``, or None where FX cannot trace it."""
    try:
        _, nodes = get_graph_node_names(model)
        graph = timm.models.create_feature_extractor(model, return_nodes=[nodes[-1]])
        with torch.no_grad():
            return next(iter(graph(x).values()))
    except Exception:  # the stock model's FX failure, whatever it is, excuses the converted one
        return None


@pytest.mark.parametrize("example", heavy(list(TINY)))
def test_every_example_traces_wherever_the_stock_model_does(example: str) -> None:
    """timm's FX tools trace each converted model whose stock model they trace, to the same logits.

    A converted class that keeps timm's ``forward`` calls the token-grid helpers from its own
    methods; FX records them as calls (``equivit.fx.record_helper_calls``) instead of tracing
    into their size checks.
    """
    stock, converted, images = tiny_pair(example)
    if _traced_output(stock, images) is None:
        pytest.skip("timm's FX tools do not trace the stock model either")
    traced = _traced_output(converted, images)
    assert traced is not None, f"{example}: the stock model traces, the converted one does not"
    with torch.no_grad():
        torch.testing.assert_close(traced, converted(images), rtol=0, atol=1e-5)
