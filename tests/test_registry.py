"""The family registry and the layer declarations: what the package derives from them."""

from __future__ import annotations

import inspect
import warnings

import pytest
import timm
import torch
from torch import nn

import equivit
from equivit import layers
from equivit.audit import equivariance_violations
from equivit.fx import LEAF_MODULES, TRACED_MODULES
from equivit.layers.declare import declared_layers, equivariant_layer
from equivit.registry import (
    Family,
    family_named,
    family_of,
    register_family,
    registered_families,
    supported_model_names,
    unregister_family,
)
from zoo import FAMILY_OF, TINY


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 2, 2)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x).mean(dim=(2, 3)))


def _convert_net(model: nn.Module, report: equivit.ConversionReport, energy: str) -> None:
    model.stem = layers.AnchoredConv2d.from_conv(model.stem, energy=energy)  # type: ignore[arg-type]
    report.input_multiple = (2, 2)


def test_built_in_families_are_registered_in_order() -> None:
    names = [family.name for family in registered_families()]
    assert names[:6] == ["vit", "twins", "swin", "pvt_v2", "resnet", "convnext"]
    assert set(equivit.SUPPORTED) >= {"VisionTransformer", "Twins", "ResNet", "ConvNeXt"}
    assert "EquivariantVisionTransformer" not in equivit.SUPPORTED  # converted classes are not offered


@pytest.mark.parametrize("example", list(TINY))
def test_each_example_builds_a_model_of_its_family(example: str) -> None:
    name, kwargs, _ = TINY[example]
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    found = family_of(model)
    assert found is not None
    assert found[0].name == FAMILY_OF[example]
    assert family_named(FAMILY_OF[example]).takes(name)


def test_register_a_family_from_outside() -> None:
    with pytest.raises(equivit.UnsupportedModelError, match=r"(?s)cannot convert a _Net.*check --list"):
        equivit.convert(_Net())
    register_family(Family("net", "a test net", (_Net,), _convert_net, entry="stem", empty_batch_ok=True))
    try:
        assert equivit.SUPPORTED["_Net"] == "a test net"
        model = equivit.convert(_Net().eval())
        assert model.equivit_report.family == "net"
        equivit.testing.assert_shift_invariant(model, torch.randn(3, 3, 8, 10))
        with pytest.raises(ValueError, match="is not a multiple of 2 x 2"):
            model(torch.randn(1, 3, 7, 8))
        with pytest.raises(ValueError, match="already registered"):
            register_family(Family("net", "again", (nn.Conv1d,), _convert_net))
        with pytest.raises(ValueError, match=r"_Net already belong\(s\) to family 'net'"):
            register_family(Family("net2", "again", (_Net,), _convert_net))
    finally:
        unregister_family("net")
    assert "_Net" not in equivit.SUPPORTED
    with pytest.raises(KeyError, match="no family named 'net'"):
        family_named("net")


def test_bad_records_fail_where_they_are_made() -> None:
    with pytest.raises(ValueError, match="identifier"):
        Family("my net", "x", (_Net,), _convert_net)
    with pytest.raises(TypeError, match="model_classes"):
        Family("net", "x", (), _convert_net)
    with pytest.raises(TypeError, match="convert must be callable"):
        Family("net", "x", (_Net,), None)  # type: ignore[arg-type]


def test_every_layer_of_the_package_is_declared() -> None:
    declared = {declaration.layer for declaration in declared_layers()}
    exported = {
        value
        for value in vars(layers).values()
        if inspect.isclass(value) and issubclass(value, nn.Module) and value.__module__.startswith("equivit.")
    }
    assert exported <= declared, exported - declared
    assert set(LEAF_MODULES) | set(TRACED_MODULES) == exported


def test_a_declared_layer_is_accepted_by_the_audit_and_is_an_fx_leaf() -> None:
    from timm.layers import is_notrace_module

    class Doubling(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    model = nn.Sequential(Doubling(), nn.Conv2d(3, 3, 1))
    assert equivariance_violations(model) == [("0", "Doubling", "unknown module type")]
    equivariant_layer(period="")(Doubling)
    assert equivariance_violations(model) == []
    assert is_notrace_module(Doubling)
    with pytest.raises(ValueError, match="fx must be"):
        equivariant_layer(period="", fx="node")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"nn\.Module classes"):
        equivariant_layer(period="")(int)  # type: ignore[type-var]


def test_check_list_names_only_registered_names() -> None:
    names = supported_model_names()
    assert "resnet32ts" not in names["resnet"]  # a ByobNet, in another timm module
    assert "vit_7b_patch16_dinov3" not in names["vit"]  # built by timm's Eva class, in its eva module
    assert "seresnet50" in names["resnet"]
    assert "resnetblur50" in names["resnet"]


@pytest.mark.slow
@pytest.mark.parametrize("family", [family.name for family in registered_families()])
def test_every_listed_name_converts_and_every_excluded_one_is_refused(family: str) -> None:
    """Built on the meta device (no memory, no weights): conversion and the audit only look at types."""
    record = family_named(family)
    failures = []
    for module in record.timm_modules:
        for name in timm.list_models(module=module):
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = timm.create_model(name, pretrained=False)
            try:
                equivit.convert(model, inplace=True)
                converts = True
            except equivit.UnsupportedModelError:
                converts = False
            if converts != record.takes(name):
                failures.append(f"{name}: listed {record.takes(name)}, converts {converts}")
    assert not failures, failures
