"""The ``equivit check`` command."""

from __future__ import annotations

import pytest
import timm
import torch

from equivit.cli import main

SMALL = ["--img-size", "64", "--shifts", "1", "--repeats", "1", "--batch", "2", "--no-progress"]


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--list"]) == 0
    out = capsys.readouterr().out
    assert "VisionTransformer" in out
    assert "twins_svt_small" in out


def test_check_prints_stock_and_converted(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "vit_tiny_patch16_224", *SMALL]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("vit_tiny_patch16_224")]
    assert [line.split()[1] for line in lines] == ["stock", "equivit"]
    assert "16/16 (100.0 %)" in lines[1]  # the converted model keeps every top-1 class
    for header in ("circular shift", "crop shift", "max logit change", "speed vs stock"):
        assert header in out


def test_adversarial_adds_the_worst_case_columns(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "vit_tiny_patch16_224", *SMALL, "--adversarial", "1"]) == 0
    out = capsys.readouterr().out
    for header in ("every circular <= 1 px", "every crop <= 1 px", "every fractional <= 1 px"):
        assert header in out
    converted = next(line for line in out.splitlines() if line.startswith("vit_tiny_patch16_224  equivit"))
    # Random shifts (one per image) and then every shift within 1 px: the converted model holds all of them.
    assert converted.count("16/16 (100.0 %)") == 2


def test_header_names_the_weights_and_speed_shows_its_range(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["check", "vit_tiny_patch16_224", "--img-size", "64", "--shifts", "1", "--batch", "2", "--no-progress"]
    assert main([*argv, "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "weights: random (timm's initialisation, seed 0); --checkpoint FILE" in out
    speed = next(line for line in out.splitlines() if line.startswith("vit_tiny") and "equivit" in line).split()[-2:]
    assert float(speed[0]) > 0
    low, high = (float(v) for v in speed[1].strip("()").split("-"))
    assert low <= float(speed[0]) <= high


def test_size_error_names_the_option_to_use(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "resnet18", "--img-size", "200", "--no-progress"]) == 2
    assert "try --img-size 192 192" in capsys.readouterr().err


def test_check_loads_a_local_checkpoint(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(1)
    stock = timm.create_model("vit_tiny_patch16_224", img_size=64)
    path = tmp_path / "vit_tiny.pth"
    torch.save(stock.state_dict(), path)
    assert main(["check", "vit_tiny_patch16_224", "--checkpoint", str(path), *SMALL]) == 0
    assert "equivit" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "inception_v3"], "cannot convert an InceptionV3"),
        (["check", "no_such_model_anywhere"], "no model named 'no_such_model_anywhere'; equivit check --list"),
        (["check", "resnet18", "--img-size", "200"], "--img-size 200 200 is not a multiple of 32 x 32"),
        (["check", "vit_tiny_patch16_224", "twins_svt_small", "--checkpoint", "x.pth"], "exactly one MODEL"),
        (["check", "--img-size", "1", "2", "3"], "H or H W"),
        (["check", "--adversarial", "-1"], "--adversarial takes a radius"),
        (["check", "vit_tiny_patch16_224", "--checkpoint", "/no/such/file.pth"], "no/such/file"),
    ],
)
def test_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--no-progress"]) == 2
    assert message in capsys.readouterr().err
