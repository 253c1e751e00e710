"""Stock timm checkpoints load into converted models; converted models round-trip through every save route."""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from torch import nn

import equivit
from equivit.testing import perturb_weights_
from zoo import NODE_CONFIGS

# (timm name, image size, timm arguments): the small configurations of the FX tests, every family.
MODELS = [(name, size, kwargs) for name, size, kwargs, _ in NODE_CONFIGS]
IDS = [m[0] for m in MODELS]


def _stock(name: str, kwargs: dict[str, object], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return perturb_weights_(timm.create_model(name, pretrained=False, **kwargs), seed=seed).eval()


def _images(size: tuple[int, int]) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))


def _outputs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images)


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        safetensors.torch.save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _check_rejects_bad_size(model: nn.Module, size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="not a multiple"):
        model(torch.randn(1, 3, size[0], size[1] + 2))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize(("name", "size", "kwargs"), MODELS, ids=IDS)
def test_load_stock_checkpoint(
    name: str, size: tuple[int, int], kwargs: dict[str, object], suffix: str, tmp_path: Path
) -> None:
    stock = _stock(name, kwargs)
    expected = _outputs(equivit.convert(stock), _images(size))
    path = _save(stock.state_dict(), tmp_path / f"stock{suffix}")
    model = equivit.convert(_stock(name, kwargs, seed=1))  # other weights, to be overwritten
    assert not torch.equal(_outputs(model, _images(size)), expected)
    result = equivit.load_stock_checkpoint(model, path)
    assert (list(result[0]), list(result[1])) == ([], [])
    assert torch.equal(_outputs(model, _images(size)), expected)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "resnet18"])
@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_load_stock_checkpoint_unwraps_training_checkpoints(name: str, wrapper: str, tmp_path: Path) -> None:
    size, kwargs = next((m[1], m[2]) for m in MODELS if m[0] == name)
    stock = _stock(name, kwargs)
    wrapped = {wrapper: {f"module.{k}": v for k, v in stock.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "train.pth.tar")
    model = equivit.convert(_stock(name, kwargs, seed=1))
    equivit.load_stock_checkpoint(model, tmp_path / "train.pth.tar")
    assert torch.equal(_outputs(model, _images(size)), _outputs(equivit.convert(stock), _images(size)))


def test_vit_checkpoint_of_another_grid_loads(tmp_path: Path) -> None:
    """Only the prefix rows of pos_embed are used, so a checkpoint at another image size fits as it is."""
    stock = _stock("vit_tiny_patch16_224", {"depth": 2})  # 224 x 224: a 14 x 14 pos_embed grid
    path = _save(stock.state_dict(), tmp_path / "vit.safetensors")
    model = equivit.convert(_stock("vit_tiny_patch16_224", {"depth": 2, "img_size": (64, 96)}, seed=1))
    equivit.load_stock_checkpoint(model, path)
    images = _images((64, 96))
    assert torch.equal(_outputs(model, images), _outputs(equivit.convert(stock), images))


def test_load_stock_checkpoint_errors(tmp_path: Path) -> None:
    vit_kwargs = {"depth": 2, "img_size": (64, 96)}
    vit = equivit.convert(_stock("vit_tiny_patch16_224", vit_kwargs))
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        equivit.load_stock_checkpoint(vit, tmp_path / "absent.pth")
    stock_path = _save(_stock("vit_tiny_patch16_224", vit_kwargs).state_dict(), tmp_path / "vit.pth")
    with pytest.raises(TypeError, match="not converted"):
        equivit.load_stock_checkpoint(_stock("vit_tiny_patch16_224", vit_kwargs), stock_path)
    # A converted model's state dict given as a stock one.
    converted_path = _save(vit.state_dict(), tmp_path / "converted.pth")
    with pytest.raises(ValueError, match=r"converted model \(it has patch_embed\.pos_conv"):
        equivit.load_stock_checkpoint(vit, converted_path)
    # Another model: the keys are named.
    resnet_path = _save(_stock("resnet18", {}).state_dict(), tmp_path / "resnet18.pth")
    convnext = equivit.convert(_stock("convnext_atto", {}))
    with pytest.raises(
        ValueError, match=r"ConvNeXt \(missing from the file: head\.fc\.bias, .*; not in the model: bn1\.bias, "
    ):
        equivit.load_stock_checkpoint(convnext, resnet_path)
    # Another number of classes: the shapes are named.
    small_head = equivit.convert(_stock("resnet18", {"num_classes": 10}))
    with pytest.raises(ValueError, match=r"fc\.weight \(1000, 512\) in the file, \(10, 512\) in the model"):
        equivit.load_stock_checkpoint(small_head, resnet_path)
    # A file that needs code to unpickle is refused, not run.
    torch.save({"state_dict": _stock("resnet18", {}).state_dict(), "hook": Path("x")}, tmp_path / "unsafe.pth")
    with pytest.raises(RuntimeError, match="weights_only"):
        equivit.load_stock_checkpoint(small_head, tmp_path / "unsafe.pth")


def test_load_stock_checkpoint_not_strict(tmp_path: Path) -> None:
    state = _stock("resnet18", {}).state_dict()
    del state["fc.weight"], state["fc.bias"]
    state["extra"] = torch.zeros(1)
    path = _save(state, tmp_path / "partial.pth")
    model = equivit.convert(_stock("resnet18", {}, seed=1))
    with pytest.raises(ValueError, match=r"missing from the file: fc\.bias, fc\.weight; not in the model: extra"):
        equivit.load_stock_checkpoint(model, path)
    head = model.fc.weight.detach().clone()
    missing, unexpected = equivit.load_stock_checkpoint(model, path, strict=False)
    assert (sorted(missing), list(unexpected)) == (["fc.bias", "fc.weight"], ["extra"])
    assert torch.equal(model.fc.weight, head)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


@pytest.mark.parametrize("route", ["checkpoint_path", "pretrained_cfg_overlay"])
@pytest.mark.parametrize(("name", "size", "kwargs"), MODELS, ids=IDS)
def test_create_model_from_stock_file(
    name: str, size: tuple[int, int], kwargs: dict[str, object], route: str, tmp_path: Path
) -> None:
    stock = _stock(name, kwargs)
    path = _save(stock.state_dict(), tmp_path / "stock.safetensors")
    torch.manual_seed(1)
    if route == "checkpoint_path":
        model = equivit.create_model(name, checkpoint_path=str(path), **kwargs)
    else:
        model = equivit.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    assert equivit.is_converted(model)
    assert torch.equal(_outputs(model, _images(size)), _outputs(equivit.convert(stock), _images(size)))


def _whole_module_torch_save(model: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize(("name", "size", "kwargs"), MODELS, ids=IDS)
def test_converted_model_round_trips(
    name: str, size: tuple[int, int], kwargs: dict[str, object], tmp_path: Path
) -> None:
    model = equivit.convert(_stock(name, kwargs))
    if model.equivit_report.new_parameters:  # make the new parameters count
        perturb_weights_(model, seed=2, only=model.equivit_report.new_parameters)
    images = _images(size)
    expected = _outputs(model, images)

    torch.save(model.state_dict(), tmp_path / "converted.pth")
    fresh = equivit.convert(_stock(name, kwargs, seed=1))
    fresh.load_state_dict(torch.load(tmp_path / "converted.pth", weights_only=True), strict=True)
    copies = {
        "state_dict": fresh,
        "deepcopy": copy.deepcopy(model),
        "pickle": pickle.loads(pickle.dumps(model)),
        "torch.save": _whole_module_torch_save(model),
    }
    for route, other in copies.items():
        assert torch.equal(_outputs(other, images), expected), route
        assert other.equivit_report == model.equivit_report, route
        assert equivit.is_converted(other), route
        _check_rejects_bad_size(other, size)
    # The copies are independent of the original.
    with torch.no_grad():
        next(copies["pickle"].parameters()).add_(1.0)
    assert torch.equal(_outputs(model, images), expected)
