"""The vision towers of Qwen3 and DeepSeek: timm's ``qwen3_vit`` and ``deepseek_vit`` modules.

Both embed non-overlapping patches, take positions from a learned embedding resampled to the grid
(Qwen3) and axial rotary embeddings (both), run ViT blocks on one token grid, and may end in the
language model's projector: a ``k x k`` merge of neighbouring tokens (Qwen3's merger, DeepSeek's
aligner, zero-padded to whole blocks). The patch embedding is anchored with period = the patch and
the token grid with period = the grid, so everything after it, projector included, sees the same
grid for every circular shift of the image and runs as timm wrote it. Patch maps are rolled back
to the image's frame; the projector's tokens (for the language model) come from the anchored frame
and are the same for every shift. The encoders and timm's classifiers around them both convert; no
parameter is added or renamed.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from timm.models import deepseek_vit as timm_deepseek
from timm.models import qwen3_vit as timm_qwen3
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from timm.models.deepseek_vit import DeepseekVitClassifier, DeepseekVitEncoder
from timm.models.qwen3_vit import Qwen3VitClassifier, Qwen3VitEncoder
from torch import nn

from equivit.anchor_core import roll_back
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.layers.patch_embed import AnchoredPatchEmbed
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError
from equivit.token_grid import anchor_patch_tokens, anchored_grid_embedding

__all__ = [
    "DEEPSEEK",
    "QWEN3",
    "AnchoredTower",
    "EquivariantDeepseekVitClassifier",
    "EquivariantDeepseekVitEncoder",
    "EquivariantQwen3VitClassifier",
    "EquivariantQwen3VitEncoder",
    "checkpoint_filter_fn_classifier",
    "checkpoint_filter_fn_encoder",
    "convert_vision_tower",
]


class AnchoredTower(nn.Module):
    """``forward*`` of a vision tower whose token grid is anchored with period = the grid.

    For timm's Qwen3 and DeepSeek encoders: ``patch_embed`` returns the anchored-patch grid
    ``(B, H, W, C)``, ``_pos_embed`` flattens it and returns the rotary table, the blocks take
    ``rope=``. A converted class lists this first among its bases and says what follows the blocks
    (:meth:`_finish`) and what the encoder returns from its final map (:meth:`_pooled`: TorchScript
    cannot return a module from a method, so each class names its projector there).
    """

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder applies to the last block's tokens (nothing here)."""
        return x

    def _run(
        self, x: torch.Tensor, take: list[int], last: int, norm: bool
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The final map in the anchored frame ``(B, H, W, C)``, the origins and the maps of ``take`` rolled back."""
        grid, offsets = anchor_patch_tokens(self.patch_embed(x), self.equivit_energy)
        batch, height, width = grid.shape[0], grid.shape[1], grid.shape[2]
        x, rope = self._pos_embed(grid)
        maps: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):  # no break: TorchScript unrolls loops over modules
            if last < 0 or index <= last:
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    x = checkpoint(block, x, rope=rope)
                else:
                    x = block(x, rope=rope)
                if index in take:
                    y = self._finish(x) if norm else x
                    maps.append(roll_back(y.reshape(batch, height, width, -1), offsets, True))
        return self._finish(x).reshape(batch, height, width, -1), offsets, maps

    def _pooled(self, final: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """The encoder's output from its anchored final map (each class names its projector)."""
        return _unprojected(final, offsets, self.global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final patch map in the image's frame.

        Args:
            x: Images, ``H`` and ``W`` multiples of the patch size.

        Returns:
            The map, channels last as timm's.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, H / p, W / p, D)`
        """
        final, offsets, _ = self._run(x, [], -1, False)
        return roll_back(final, offsets, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The projector's tokens (from the anchored frame), the mean token, or the map in the image's frame.

        Args:
            x: Images, ``H`` and ``W`` multiples of the patch size.

        Returns:
            As timm's encoder, by its ``global_pool``.

        Shape:
            - x: :math:`(B, C, H, W)`
        """
        final, offsets, _ = self._run(x, [], -1, False)
        return self._pooled(final, offsets)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]] | dict[str, Any]:
        """The blocks' maps in the image's frame, as timm's ``forward_intermediates``.

        Args:
            x: Images.
            indices: The last ``n`` blocks if an int, else their indices.
            return_prefix_tokens: Unused (no prefix tokens), as in timm.
            norm: Apply the encoder's final norm to the maps (DeepSeek; Qwen3 has none).
            stop_early: Stop after the last block asked for.
            output_fmt: ``"NCHW"`` or ``"NLC"``.
            intermediates_only: Return the maps alone.
            output_dict: Return ``image_intermediates`` (and ``image_features``) in a dict.

        Returns:
            As timm's: the maps, the final map ``(B, H, W, D)`` and the maps, or a dict.

        Raises:
            ValueError: If ``output_fmt`` is another format.
        """
        return self._intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only, output_dict, False)

    def _intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None,
        norm: bool,
        stop_early: bool,
        fmt: str,
        intermediates_only: bool,
        output_dict: bool,
        pooled: bool,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]] | dict[str, Any]:
        """The maps in ``fmt`` and the final map (or, if ``pooled``, the output), as timm returns them."""
        if fmt not in ("NCHW", "NLC"):
            raise ValueError("output_fmt must be 'NCHW' or 'NLC', got '" + fmt + "'")
        take, last = feature_take_indices(len(self.blocks), indices)
        final, offsets, maps = self._run(x, take, last if stop_early else -1, norm)
        maps = [m.permute(0, 3, 1, 2) if fmt == "NCHW" else m.flatten(1, 2) for m in maps]
        if intermediates_only:
            return {"image_intermediates": maps} if output_dict else maps
        features = self._pooled(final, offsets) if pooled else roll_back(final, offsets, True)
        return {"image_features": features, "image_intermediates": maps} if output_dict else (features, maps)


def _unprojected(final: torch.Tensor, offsets: torch.Tensor, global_pool: str) -> torch.Tensor:
    """An encoder's output without its projector: the mean token, or the map rolled back to the image's frame."""
    if global_pool == "avg":
        return final.mean(dim=(1, 2))
    return roll_back(final, offsets, True)


class _AnchoredTowerClassifier(nn.Module):
    """``forward_intermediates`` of timm's classifier around an :class:`AnchoredTower` encoder."""

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]] | dict[str, Any]:
        """As :meth:`AnchoredTower.forward_intermediates`, with the classifier's features (its encoder's output).

        Args:
            x: Images.
            indices: The last ``n`` blocks if an int, else their indices.
            return_prefix_tokens: Unused (no prefix tokens), as in timm.
            norm: Apply the encoder's final norm to the maps (DeepSeek).
            stop_early: Stop after the last block asked for.
            output_fmt: ``"NCHW"`` or ``"NLC"``.
            intermediates_only: Return the maps alone.
            output_dict: Return ``image_intermediates`` (and ``image_features``) in a dict.

        Returns:
            The maps, or the features (:meth:`forward_features`) and the maps, or a dict.

        Raises:
            ValueError: If ``output_fmt`` is another format.
        """
        return self.encoder._intermediates(
            x, indices, norm, stop_early, output_fmt, intermediates_only, output_dict, True
        )


@equivariant_layer(period="grid", anchored_children=("blocks", "rope", "merger"), fx="traced")
class EquivariantQwen3VitEncoder(AnchoredTower, Qwen3VitEncoder):
    """timm's ``Qwen3VitEncoder`` whose blocks and merger see the token grid from an origin chosen by content."""

    def _pooled(self, final: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """The merger's tokens (from the anchored frame), the mean, or the map rolled back."""
        if self.merger is not None:
            return self.merger(final)
        return _unprojected(final, offsets, self.global_pool)


@equivariant_layer(period="grid", anchored_children=("blocks", "rope", "norm", "aligner"), fx="traced")
class EquivariantDeepseekVitEncoder(AnchoredTower, DeepseekVitEncoder):
    """timm's ``DeepseekVitEncoder`` whose blocks and aligner see the token grid from an origin chosen by content."""

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm."""
        return self.norm(x)

    def _pooled(self, final: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """The aligner's tokens (from the anchored frame), the mean, or the map rolled back."""
        if self.aligner is not None:
            return self.aligner(final)
        return _unprojected(final, offsets, self.global_pool)


@equivariant_layer(period="grid", anchored_children=("encoder", "norm", "head"), fx="traced")
class EquivariantQwen3VitClassifier(_AnchoredTowerClassifier, Qwen3VitClassifier):
    """timm's ``Qwen3VitClassifier`` around an :class:`EquivariantQwen3VitEncoder`."""


@equivariant_layer(period="grid", anchored_children=("encoder", "norm", "head"), fx="traced")
class EquivariantDeepseekVitClassifier(_AnchoredTowerClassifier, DeepseekVitClassifier):
    """timm's ``DeepseekVitClassifier`` around an :class:`EquivariantDeepseekVitEncoder`."""


def _timm_module(model: nn.Module) -> ModuleType:
    """The timm module of a Qwen3 or DeepSeek tower (converted or not), where its checkpoint filters are."""
    deepseek = isinstance(model, DeepseekVitEncoder | DeepseekVitClassifier)
    return timm_deepseek if deepseek else timm_qwen3


def checkpoint_filter_fn_classifier(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The ``checkpoint_filter_fn_classifier`` of the model's timm tower (conversion keeps its keys).

    Here so that code which looks the filter up in the module of the model's class (as timm's own
    tests do) finds it for a converted model.
    """
    return _timm_module(model).checkpoint_filter_fn_classifier(state_dict, model)


def checkpoint_filter_fn_encoder(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The ``checkpoint_filter_fn_encoder`` of the model's timm tower, as :func:`checkpoint_filter_fn_classifier`."""
    return _timm_module(model).checkpoint_filter_fn_encoder(state_dict, model)


_CONVERTED: dict[type[nn.Module], type[nn.Module]] = {
    Qwen3VitEncoder: EquivariantQwen3VitEncoder,
    DeepseekVitEncoder: EquivariantDeepseekVitEncoder,
    Qwen3VitClassifier: EquivariantQwen3VitClassifier,
    DeepseekVitClassifier: EquivariantDeepseekVitClassifier,
}


def convert_vision_tower(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm Qwen3 or DeepSeek vision tower (encoder or classifier) shift-equivariant, in place.

    The encoder's patch embedding is anchored with period = the patch and returns the token grid;
    the encoder anchors the grid with period = the grid before its position terms. No parameter is
    added or renamed. Inputs: multiples of the patch size.

    Args:
        model: An encoder or classifier of timm's ``qwen3_vit`` or ``deepseek_vit`` (timm's
            ``features_only`` wrapper holds one), changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: If the model is of another class, or its patch embedding pads images
            dynamically (``dynamic_img_pad=True``: zeros at the border).
    """
    converted = _CONVERTED.get(type(model))
    if converted is None:
        raise UnsupportedModelError(f"{type(model).__name__}: expected timm's Qwen3 or DeepSeek vision tower")
    encoder = model.encoder if hasattr(model, "encoder") else model
    prefix = "encoder." if encoder is not model else ""
    if getattr(encoder.patch_embed, "dynamic_img_pad", False):
        raise UnsupportedModelError(
            f"{prefix}patch_embed: dynamic_img_pad=True pads images with zeros; create the model without it"
        )
    if not isinstance(encoder.patch_embed, AnchoredPatchEmbed):
        encoder.patch_embed = anchored_grid_embedding(encoder.patch_embed, report, energy, name=f"{prefix}patch_embed")
    stock = type(encoder).__name__
    encoder.__class__ = _CONVERTED[type(encoder)]
    encoder.equivit_energy = energy
    model.__class__ = converted
    report.add(prefix.rstrip("."), stock, f"{type(encoder).__name__} (token grid anchored with period = the grid)")


_SMALL = {"embed_dim": 64, "depth": 3, "num_heads": 2}

QWEN3 = Family(
    name="qwen3_vit",
    description="Qwen3-VL / Qwen3.5 vision towers (qwen3_vit_*)",
    model_classes=(Qwen3VitClassifier, Qwen3VitEncoder),
    converted_classes=(EquivariantQwen3VitClassifier, EquivariantQwen3VitEncoder),
    convert=convert_vision_tower,
    entry=("encoder.patch_embed", "patch_embed"),
    feature_markers=module_types(timm_qwen3),
    accepted=(*module_types(timm_qwen3), AnchoredPatchEmbed),
    timm_modules=("qwen3_vit",),
    examples={
        "qwen3_vit": Example("qwen3_vit_88m", {**_SMALL, "pos_embed_grid_size": 4}, (64, 96), quick=False),
        "qwen3_vit_merge": Example(
            "qwen3_vit_88m_merge", {**_SMALL, "pos_embed_grid_size": 4, "out_features": 32}, (64, 64), quick=False
        ),
    },
)

DEEPSEEK = Family(
    name="deepseek_vit",
    description="DeepSeek vision towers (deepseek_vit_*)",
    model_classes=(DeepseekVitClassifier, DeepseekVitEncoder),
    converted_classes=(EquivariantDeepseekVitClassifier, EquivariantDeepseekVitEncoder),
    convert=convert_vision_tower,
    entry=("encoder.patch_embed", "patch_embed"),
    feature_markers=module_types(timm_deepseek),
    accepted=(*module_types(timm_deepseek), AnchoredPatchEmbed),
    timm_modules=("deepseek_vit",),
    float64_rtol=1e-5,  # its RmsNormFp32 normalises in float32 whatever the input dtype
    examples={
        "deepseek_vit": Example("deepseek_vit_412m", _SMALL, (56, 84), quick=False),
        "deepseek_vit_align": Example("deepseek_vit_412m_align", {**_SMALL, "out_features": 32}, (56, 56), quick=False),
    },
)
