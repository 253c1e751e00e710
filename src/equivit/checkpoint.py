"""Loading a stock timm checkpoint file into a converted model."""

from __future__ import annotations

import os

import torch
from timm.models import load_state_dict
from torch import nn

from equivit.convert import convert_state_dict, is_converted
from equivit.report import ConversionReport

__all__ = ["load_stock_checkpoint"]

_LISTED = 8


def _listed(keys: list[str]) -> str:
    """At most ``_LISTED`` keys, and how many more."""
    shown = ", ".join(keys[:_LISTED])
    return shown + (f", ... ({len(keys) - _LISTED} more)" if len(keys) > _LISTED else "")


def load_stock_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    strict: bool = True,
    use_ema: bool = False,
    map_location: str | torch.device = "cpu",
) -> tuple[list[str], list[str]]:
    """Load a checkpoint of the stock timm model into a model converted by :func:`equivit.convert`.

    Reads a ``torch.save`` file (``.pth``, ``.pt``, ``.bin``, with ``torch.load(weights_only=True)``:
    no code in the file is run) or a ``.safetensors`` file with timm's ``load_state_dict``, which
    also unwraps a training checkpoint (its ``"state_dict"`` or ``"model"`` entry) and strips
    ``module.`` and ``_orig_mod.`` prefixes. The state dict is then mapped onto the converted model
    with :func:`equivit.convert_state_dict`: for a ViT or DeiT, the rows of ``pos_embed`` that
    belong to the prefix tokens are added to them and its grid part is dropped (the grid size of
    the checkpoint does not matter), and the new ``patch_embed.pos_conv`` keeps its current
    values. Other families load as they are.

    Args:
        model: A converted model.
        path: The checkpoint file, as saved from the stock model.
        strict: Require every key of the model and no other (as ``nn.Module.load_state_dict``);
            the parameters new in the converted model are never required.
        use_ema: Take the EMA weights of a training checkpoint when it has them.
        map_location: Device the tensors are read onto.

    Returns:
        ``nn.Module.load_state_dict``'s result: the missing and unexpected keys (empty when
        ``strict``).

    Raises:
        FileNotFoundError: If ``path`` is not a file.
        TypeError: If ``model`` was not converted by :func:`equivit.convert`.
        ValueError: If the file holds a converted model's state dict (load it with
            ``model.load_state_dict``), or its keys or shapes do not match the model (the message
            names them: usually another model or another ``num_classes``).
        RuntimeError: If ``torch.load(weights_only=True)`` refuses the file (it pickles code).

    Examples:
        >>> model = equivit.create_model("vit_small_patch16_224")  # doctest: +SKIP
        >>> equivit.load_stock_checkpoint(model, "vit_small_patch16_224.safetensors")  # doctest: +SKIP
    """
    if not is_converted(model):
        raise TypeError(
            f"model ({type(model).__name__}) was not converted by equivit.convert; load a stock checkpoint into "
            "the stock model with timm.models.load_checkpoint, or convert the model first"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {os.fspath(path)!r}")
    state = load_state_dict(os.fspath(path), use_ema=use_ema, device=map_location, weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{os.fspath(path)!r} does not hold a state dict (a mapping of names to tensors)")
    report: ConversionReport = model.equivit_report  # type: ignore[assignment]
    converted_keys = sorted(set(report.new_parameters) & set(state))
    if converted_keys:
        raise ValueError(
            f"{os.fspath(path)!r} is a checkpoint of a converted model (it has {_listed(converted_keys)}, which "
            "stock timm models do not have); load it with model.load_state_dict(torch.load(path, weights_only=True))"
        )
    if strict and report.folded_prefix and "pos_embed" not in state:
        raise ValueError(
            f"{os.fspath(path)!r} has no pos_embed, but the stock model had one (its prefix rows are folded into "
            f"{', '.join(report.folded_prefix)}); is it a checkpoint of another model?"
        )
    absent = [name for name in report.folded_prefix if name not in state]
    if "pos_embed" in state and absent:
        raise ValueError(
            f"{os.fspath(path)!r} has a pos_embed but no {', '.join(absent)}: not a checkpoint of this model"
        )
    mapped = convert_state_dict(state, model)
    own = model.state_dict()
    mismatched = [
        f"{key} {tuple(mapped[key].shape)} in the file, {tuple(own[key].shape)} in the model"
        for key in own
        if key in mapped and mapped[key].shape != own[key].shape
    ]
    if mismatched:
        raise ValueError(
            f"{os.fspath(path)!r} does not fit the {type(model).__name__}: shapes differ for {_listed(mismatched)} "
            "(another model size, or another num_classes: create the model with the checkpoint's num_classes, or "
            "reset the classifier after loading)"
        )
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing from the file: {_listed(missing)}")
        if unexpected:
            parts.append(f"not in the model: {_listed(unexpected)}")
        raise ValueError(
            f"{os.fspath(path)!r} does not fit the converted {type(model).__name__} ({'; '.join(parts)}); is it a "
            "checkpoint of another model? (strict=False loads the keys that match)"
        )
    return model.load_state_dict(mapped, strict=strict)
