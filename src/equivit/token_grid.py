"""Token sequences on a grid anchored with period = the whole grid (the canonical frame of a single-grid model).

A transformer whose blocks all see one token grid (EVA, BEiT, CaiT, ...) may hold any position
terms (absolute embeddings, rotary embeddings, relative biases over the whole grid): once the
patch tokens are rolled to an origin chosen from content (a polyphase anchor with period = the
grid), a circular shift of the image reaches the blocks as the same sequence, bit for bit, and
everything after that point is invariant. The patch tokens are rolled back at the end so that
token maps move with the image; prefix tokens (class, register) are left where they are.

A hierarchical model (MaxViT, Swin v2 CR, MetaFormer) anchors the map its stem produces the same
way (:class:`GridAnchoredEntry`); a feature map ``f`` times coarser is rolled back by the origin
divided by ``f`` (:func:`roll_back_map`). A family's converted class calls these around timm's own
blocks; :class:`GridAnchoredFeatureListNet` does it for timm's ``features_only`` wrapper.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict

import torch
from timm.layers import Format, PatchEmbed
from timm.models._features import FeatureListNet, feature_take_indices
from timm.models._manipulate import checkpoint
from torch import nn

from equivit.anchor_core import anchor, roll_back
from equivit.cnn_policy import convert_convolutions
from equivit.energy import Energy
from equivit.layers.declare import equivariant_layer
from equivit.layers.patch_embed import AnchoredPatchEmbed
from equivit.layers.sharing import parent_method, retype
from equivit.report import ConversionReport, UnsupportedModelError

__all__ = [
    "GridAnchoredEntry",
    "GridAnchoredFeatureListNet",
    "GridAnchoredStages",
    "anchor_patch_tokens",
    "anchored_grid_embedding",
    "check_grid_size",
    "convert_flattened_entry",
    "convert_grid_anchored",
    "flattened_entry",
    "grid_anchored_entry",
    "grid_anchored_entry_class",
    "install_grid_anchored_model",
    "patch_token_map",
    "roll_back_map",
    "roll_back_patch_tokens",
    "stage_block_indices",
]


def anchored_grid_embedding(
    patch_embed: nn.Module, report: ConversionReport, energy: Energy, *, name: str = "patch_embed"
) -> AnchoredPatchEmbed:
    """Timm's ``PatchEmbed`` anchored with period = patch size, returning the token grid ``(B, H, W, C)``.

    Shares the projection and norm (no copy); records the change and the input multiple.

    Args:
        patch_embed: The model's patch embedding.
        report: Where the change is recorded (``input_multiple`` = the patch size).
        energy: Energy that picks the anchor.
        name: Its path in the model, for the report and the messages.

    Returns:
        The anchored embedding, with output format ``NHWC``.

    Raises:
        UnsupportedModelError: If it is not timm's ``PatchEmbed`` with a ``Conv2d`` projection of
            non-overlapping patches (kernel = stride, no padding).
    """
    if type(patch_embed) is not PatchEmbed or type(patch_embed.proj) is not nn.Conv2d:
        raise UnsupportedModelError(
            f"{name}: {type(patch_embed).__name__} is not timm's PatchEmbed with a Conv2d projection"
        )
    proj = patch_embed.proj
    if tuple(proj.kernel_size) != tuple(proj.stride) or any(p != 0 for p in proj.padding):  # type: ignore[union-attr]
        raise UnsupportedModelError(
            f"{name}.proj: kernel {tuple(proj.kernel_size)}, stride {tuple(proj.stride)}: only non-overlapping "
            "patches (kernel = stride, no padding) are supported"
        )
    report.input_multiple = (int(proj.stride[0]), int(proj.stride[1]))
    anchored = AnchoredPatchEmbed.from_patch_embed(patch_embed, pos_conv=False, energy=energy)
    anchored.flatten = False
    anchored.output_fmt = Format.NHWC
    report.add(name, "PatchEmbed", "AnchoredPatchEmbed (anchored projection, period = patch size)")
    return anchored


def check_grid_size(grid: torch.Tensor, expected: tuple[int, int], patch: tuple[int, int], image: list[int]) -> None:
    """Refuse a token grid of another size than the model's fixed one, naming the image size it takes.

    Args:
        grid: The token grid.
        expected: The model's grid size.
        patch: The patch size.
        image: The input's ``[H, W]``.

    Raises:
        ValueError: If the grid is not ``expected``.

    Shape:
        - grid: :math:`(B, H, W, C)`
    """
    if grid.shape[1] != expected[0] or grid.shape[2] != expected[1]:
        raise ValueError(
            f"this model takes {expected[0] * patch[0]} x {expected[1] * patch[1]} images (its position terms "
            f"are fixed), got {image[0]} x {image[1]}; create it with img_size=(H, W) for another size"
        )


def anchor_patch_tokens(grid: torch.Tensor, energy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll a token grid so that its content-chosen origin comes first.

    Args:
        grid: Patch tokens on their grid.
        energy: ``"l1"`` or ``"l2"``, the energy that picks the origin.

    Returns:
        The pair ``(grid, offsets)``: the rolled grid, and each sample's origin ``(i, j)``.

    Raises:
        ValueError: If ``grid`` is not a 4-D floating-point map.

    Shape:
        - grid: :math:`(B, H, W, C)`
        - output: :math:`(B, H, W, C)` and :math:`(B, 2)`
    """
    return anchor(grid, grid.shape[1], grid.shape[2], energy, True)


def roll_back_patch_tokens(
    tokens: torch.Tensor, offsets: torch.Tensor, height: int, width: int, prefix: int
) -> torch.Tensor:
    """Roll the patch tokens of a sequence back to the frame of the image; prefix tokens stay first.

    Args:
        tokens: ``prefix`` tokens, then the patch tokens of an ``height x width`` grid, row-major.
        offsets: The origins :func:`anchor_patch_tokens` returned.
        height: Rows of the grid.
        width: Columns of the grid.
        prefix: How many tokens precede the patch tokens.

    Returns:
        The sequence with its patch tokens in the image's frame.

    Shape:
        - tokens: :math:`(B, P + H W, C)`
        - offsets: :math:`(B, 2)`
        - output: :math:`(B, P + H W, C)`
    """
    batch = tokens.shape[0]
    patches = tokens[:, prefix:].reshape(batch, height, width, tokens.shape[-1])
    patches = roll_back(patches, offsets, True).reshape(batch, height * width, tokens.shape[-1])
    if prefix == 0:
        return patches
    return torch.cat([tokens[:, :prefix], patches], dim=1)


def patch_token_map(
    tokens: torch.Tensor, offsets: torch.Tensor, height: int, width: int, prefix: int, output_fmt: str
) -> torch.Tensor:
    """The patch tokens of an anchored sequence as a map in the image's frame (an intermediate feature).

    Args:
        tokens: ``prefix`` tokens, then the patch tokens in the anchored frame.
        offsets: The origins :func:`anchor_patch_tokens` returned.
        height: Rows of the grid.
        width: Columns of the grid.
        prefix: How many tokens precede the patch tokens.
        output_fmt: ``"NCHW"`` for a map, ``"NLC"`` for a sequence.

    Returns:
        The patch tokens, rolled back.

    Shape:
        - tokens: :math:`(B, P + H W, C)`
        - output: :math:`(B, C, H, W)` for ``"NCHW"``, :math:`(B, H W, C)` for ``"NLC"``
    """
    batch, channels = tokens.shape[0], tokens.shape[-1]
    patches = roll_back(tokens[:, prefix:].reshape(batch, height, width, channels), offsets, True)
    if output_fmt == "NCHW":
        return patches.permute(0, 3, 1, 2).contiguous()
    return patches.reshape(batch, height * width, channels)


def stage_block_indices(
    stage_ends: list[int], blocks: int, indices: int | list[int] | None, coarse: bool = True
) -> tuple[list[int], int]:
    """The blocks to take and the last one to run, for indices over stages (``coarse``) or over blocks.

    For models whose ``forward_intermediates`` counts stages but runs a flat list of blocks (Hiera,
    HieraDet, VOLO): timm's ``feature_take_indices`` over the stages, mapped to each stage's last block.

    Args:
        stage_ends: The index of each stage's last block.
        blocks: The number of blocks.
        indices: The last ``n`` if an int, else the indices (``None``: all).
        coarse: Whether ``indices`` count stages (True) or blocks (False).

    Returns:
        The block indices to take, and the last block to run.
    """
    if not coarse:
        return feature_take_indices(blocks, indices)
    take, last = feature_take_indices(len(stage_ends), indices)
    return [stage_ends[i] for i in take], stage_ends[last]


def roll_back_map(
    y: torch.Tensor, offsets: torch.Tensor, height: int, width: int, channels_last: bool = False
) -> torch.Tensor:
    """Roll a map computed from an anchored ``height x width`` grid back to the image's frame.

    A map of a coarser grid (a later stage, ``f`` times coarser along an axis) is rolled by the
    origin divided by ``f``, rounded down: a shift of the image by a multiple of ``f`` grid cells then
    moves the map by exactly ``shift / f`` cells, and any other shift by some whole number of cells.

    Args:
        y: The map, in the anchored frame.
        offsets: The origins chosen on the anchored grid (:func:`equivit.anchor_core.anchor`).
        height: Rows of the anchored grid (a multiple of the map's).
        width: Columns of the anchored grid (a multiple of the map's).
        channels_last: Whether ``y`` is laid out ``(B, H', W', C)`` (Sequencer's maps).

    Returns:
        ``y`` in the image's frame.

    Shape:
        - y: :math:`(B, C, H', W')`, or :math:`(B, H', W', C)` with ``channels_last=True``
        - offsets: :math:`(B, 2)`
        - output: same as ``y``
    """
    row_dim = 1 if channels_last else 2
    rows, columns = height // y.shape[row_dim], width // y.shape[row_dim + 1]
    if rows == 1 and columns == 1:
        return roll_back(y, offsets, channels_last)
    if rows == columns:
        return roll_back(y, torch.div(offsets, rows, rounding_mode="floor"), channels_last)
    coarse = torch.stack([offsets[:, 0] // rows, offsets[:, 1] // columns], dim=1)
    return roll_back(y, coarse, channels_last)


class GridAnchoredEntry(nn.Module):
    """Marks an entry module (a stem) that anchors its output map with period = the whole map.

    A subclass runs the stock entry, then rolls the map so that a position chosen from content
    sits at the origin; everything after it sees the same map for every circular shift of the
    image. Its ``forward`` returns the pair ``(map, origins)``: the origins roll feature maps back
    (:func:`roll_back_map`).
    """


_ENTRY_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}

_ENTRY_PREFIX = "_grid_anchored__"


def _anchored_entry_forward(self: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The entry's map rolled to its content-chosen origin, and that origin ``(i, j)`` per sample."""
    y = self._stock_forward(x)
    return anchor(y, y.shape[-2], y.shape[-1], self.equivit_energy, False)


def _entry_class_key(stock: type[nn.Module]) -> str:
    """The module-level name of a generated entry class, from which :func:`__getattr__` rebuilds it (for pickle)."""
    return f"{_ENTRY_PREFIX}{stock.__module__.replace('.', '_D_')}__{stock.__qualname__}"


def grid_anchored_entry_class(stock: type[nn.Module]) -> type[nn.Module]:
    """The class ``GridAnchored<Stock>``: a subclass of a stem class that anchors its output map (one per class).

    Its ``forward`` runs the stock ``forward``, then rolls the map so that a position chosen from
    content sits at the origin (period = the whole map) and returns ``(map, origins)``. The class
    is declared with period ``"grid"`` (:func:`~equivit.layers.equivariant_layer`) and can be
    pickled (it is rebuilt from its name in a new process).

    Args:
        stock: The stem's class; its ``forward`` takes images and returns a map :math:`(B, D, H', W')`.

    Returns:
        The subclass.
    """
    if stock not in _ENTRY_CLASSES:
        cls = type(
            f"GridAnchored{stock.__name__}",
            (GridAnchoredEntry, stock),
            {
                "__module__": __name__,
                "__doc__": (
                    f"{stock.__name__} (from {stock.__module__}) whose map is anchored with period = the map; "
                    "its forward returns (map, origins). Made by equivit.token_grid.grid_anchored_entry."
                ),
                "_stock_forward": parent_method(stock.forward, "_stock_forward"),
                "forward": parent_method(_anchored_entry_forward, "forward"),
            },
        )
        cls.__qualname__ = _entry_class_key(stock)
        globals()[cls.__qualname__] = cls
        _ENTRY_CLASSES[stock] = equivariant_layer(period="grid", fx="leaf")(cls)
    return _ENTRY_CLASSES[stock]


def __getattr__(name: str) -> type[nn.Module]:
    """Rebuild a generated entry class from its module-level name (for unpickling in a new process)."""
    if not name.startswith(_ENTRY_PREFIX):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, qualname = name[len(_ENTRY_PREFIX) :].split("__", 1)
    stock = importlib.import_module(module.replace("_D_", "."))
    for part in qualname.split("."):
        stock = getattr(stock, part)
    return grid_anchored_entry_class(stock)  # type: ignore[arg-type]


def grid_anchored_entry(module: nn.Module, energy: Energy) -> nn.Module:
    """A stem that anchors its output map with period = the map, sharing ``module``'s parameters.

    Convert the layers inside ``module`` first (anchored strided convolutions, circular padding),
    so that a circular shift of the image moves its map by a whole number of cells; the anchor then
    gives every later layer the same map. ``module`` is left as it was.

    Args:
        module: The stock stem (already converted inside); its ``forward`` returns a map.
        energy: Energy that picks the origin.

    Returns:
        A :func:`grid_anchored_entry_class` instance with ``module``'s parameters and children.

    Shape:
        - input: that of ``module``
        - output: :math:`(B, D, H', W')`, rolled to an origin chosen from content, and :math:`(B, 2)`
    """
    anchored = retype(module, grid_anchored_entry_class(type(module)))
    anchored.equivit_energy = energy
    return anchored


class GridAnchoredStages(nn.Module):
    """``forward_features`` and ``forward_intermediates`` of a model whose entry anchors its map, then runs ``stages``.

    For timm models that run an entry (``stem``, ``patch_embed``), then the modules of
    ``self.stages`` in order on a channels-first map, then at most one module of each position
    (a norm, a 1x1 convolution): a family's converted class lists this first among its bases and
    defines :meth:`anchored_entry` (and :meth:`finish_features` where a module follows the
    stages). The maps are rolled back to the image's frame (:func:`roll_back_map`).
    """

    def anchored_entry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The entry's anchored map and its origins (the family's class calls its grid-anchored entry)."""
        raise NotImplementedError

    def finish_features(self, x: torch.Tensor) -> torch.Tensor:
        """What timm's ``forward_features`` applies after the last stage (nothing here)."""
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map in the image's frame.

        Args:
            x: Images; ``H`` and ``W`` multiples of ``equivit_report.input_multiple``.

        Returns:
            The map.

        Shape:
            - x: :math:`(B, C, H, W)`
            - output: :math:`(B, D, H / r, W / r)`, ``r`` the total reduction
        """
        x, offsets = self.anchored_entry(x)
        height, width = x.shape[-2], x.shape[-1]
        for stage in self.stages:
            x = checkpoint(stage, x) if not torch.jit.is_scripting() and self.grad_checkpointing else stage(x)
        return roll_back_map(self.finish_features(x), offsets, height, width)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stages' maps in the image's frame, as timm's ``forward_intermediates``.

        Args:
            x: Images; ``H`` and ``W`` multiples of ``equivit_report.input_multiple``.
            indices: The last ``n`` stages if an int, else their indices.
            norm: Apply :meth:`finish_features` to the last stage's map, as timm does with its final norm.
            stop_early: Stop after the last stage asked for.
            output_fmt: ``"NCHW"``.
            intermediates_only: Return the maps alone.

        Returns:
            The maps, or the final map and the maps.

        Raises:
            ValueError: If ``output_fmt`` is not ``"NCHW"``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' for these feature maps, got {output_fmt!r}")
        take, last = feature_take_indices(len(self.stages), indices)
        x, offsets = self.anchored_entry(x)
        height, width = x.shape[-2], x.shape[-1]
        maps: list[torch.Tensor] = []
        for index, stage in enumerate(self.stages):
            if stop_early and index > last:
                break
            x = checkpoint(stage, x) if not torch.jit.is_scripting() and self.grad_checkpointing else stage(x)
            if index in take:
                y = self.finish_features(x) if norm and index == len(self.stages) - 1 else x
                maps.append(roll_back_map(y, offsets, height, width))
        if intermediates_only:
            return maps
        return roll_back_map(self.finish_features(x), offsets, height, width), maps


class GridAnchoredFeatureListNet(FeatureListNet):
    """timm's ``FeatureListNet`` of a model whose entry anchors its map (:class:`GridAnchoredEntry`).

    The modules run in order as in timm; each returned map is rolled back to the image's frame by
    the origin the entry chose (:func:`roll_back_map`), so that it moves with the image.
    """

    equivit_anchor_after: str = ""
    """The module after which the wrapper anchors the map itself, where timm flattened a sequential entry."""

    equivit_energy: str = "l1"
    """The energy of that anchor."""

    equivit_channels_last: bool = False
    """Whether the maps are laid out ``(B, H, W, C)`` (Sequencer's)."""

    def _collect(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the modules, anchoring at the entry, and collect the rolled-back maps."""
        out: dict[str, torch.Tensor] = OrderedDict()
        offsets = torch.zeros(x.shape[0], 2, dtype=torch.int64, device=x.device)
        height, width = 0, 0
        last = len(self) - 1
        channels_last = self.equivit_channels_last
        row_dim = 1 if channels_last else 2
        for index, (name, module) in enumerate(self.items()):
            if isinstance(module, GridAnchoredEntry):
                x, offsets = module(x)
                height, width = x.shape[row_dim], x.shape[row_dim + 1]
            elif not torch.jit.is_scripting() and self.grad_checkpointing and 0 < index < last:
                x = checkpoint(module, x)
            else:
                x = module(x)
            if name == self.equivit_anchor_after:
                height, width = x.shape[row_dim], x.shape[row_dim + 1]
                x, offsets = anchor(x, height, width, self.equivit_energy, channels_last)
            if name in self.return_layers:
                rolled = roll_back_map(x, offsets, height, width, channels_last) if height > 0 else x
                out[self.return_layers[name]] = rolled
        return out


def convert_grid_anchored(
    model: nn.Module,
    report: ConversionReport,
    energy: Energy,
    *,
    entry: str,
    entry_types: tuple[type[nn.Module], ...],
    stock: type[nn.Module],
    converted: type[nn.Module],
    input_multiple: int,
) -> None:
    """Convert a model whose entry can anchor its map: the entry's layers made equivariant, its map anchored.

    The stem-anchored policy: the entry's strided convolutions and poolings are anchored and every
    convolution in it pads circularly (:func:`~equivit.cnn_policy.convert_convolutions`), so a
    circular shift of the image moves its map by a whole number of cells; the entry then anchors
    its map with period = the map (:func:`grid_anchored_entry`), and everything after it runs as
    timm wrote it, on the same map for every shift. The model becomes ``converted`` (timm's
    ``FeatureListNet`` of one a :class:`GridAnchoredFeatureListNet`). A family file uses it
    through ``functools.partial``. No parameter is added or renamed.

    Args:
        model: The model, or timm's ``features_only`` wrapper of one, changed in place.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.
        entry: The entry's attribute name (``"stem"``, ``"patch_embed"``).
        entry_types: The timm classes the entry may have.
        stock: The timm model class.
        converted: Its converted subclass (rolls feature maps back, :class:`GridAnchoredStages`).
        input_multiple: What input sizes must be multiples of: the total stride, so that every
            map halves evenly and feature maps move by ``shift / reduction``.

    Raises:
        UnsupportedModelError: If the entry is of another class (a user's own stem), or the model
            is neither ``stock`` nor timm's ``FeatureListNet`` of one.
    """
    if isinstance(model, FeatureListNet) and entry not in model:
        # timm flattened a sequential entry (stem_0, stem_1, ...): the wrapper anchors after its last part.
        convert_flattened_entry(model, entry, report, energy)
        report.input_multiple = (input_multiple, input_multiple)
        install_grid_anchored_model(model, report, stock, converted, entry, energy)
        return
    module = getattr(model, entry)
    if type(module) not in entry_types:
        names = " or ".join(cls.__name__ for cls in entry_types)
        raise UnsupportedModelError(f"{entry}: {type(module).__name__} is not timm's {names} of this family")
    convert_convolutions(module, report, energy)
    setattr(model, entry, grid_anchored_entry(module, energy))
    name = type(module).__name__
    report.add(entry, name, f"GridAnchored{name} (its layers anchored; its map anchored with period = the map)")
    report.input_multiple = (input_multiple, input_multiple)
    install_grid_anchored_model(model, report, stock, converted, entry, energy)


def flattened_entry(model: FeatureListNet, entry: str) -> list[str]:
    """The names of the parts of a sequential entry that timm's ``FeatureListNet`` flattened (``stem_conv1``, ...).

    Args:
        model: timm's ``features_only`` wrapper.
        entry: The entry's name in the model (``"stem"``).

    Returns:
        The names, in order.

    Raises:
        UnsupportedModelError: If the wrapper has neither the entry nor flattened parts of it.
    """
    names = [name for name in model if name.startswith(f"{entry}_")]
    if not names:
        raise UnsupportedModelError(f"timm's FeatureListNet has no {entry!r} module, flattened or not")
    return names


def convert_flattened_entry(model: FeatureListNet, entry: str, report: ConversionReport, energy: Energy) -> int:
    """Convert the layers of a sequential entry that timm's ``FeatureListNet`` flattened, in place.

    Its strided convolutions and poolings are anchored and its convolutions pad circularly
    (:func:`~equivit.cnn_policy.convert_convolutions`), whether a flattened part is a convolution
    itself or holds some.

    Args:
        model: timm's ``features_only`` wrapper.
        entry: The entry's name in the model (``"stem"``).
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Returns:
        The entry's stride (the product of its convolutions' strides).
    """
    names = flattened_entry(model, entry)
    holder = nn.Sequential(OrderedDict((name, model[name]) for name in names))
    stride = 1
    for module in holder.modules():
        if isinstance(module, nn.Conv2d):
            stride *= int(module.stride[0])
    convert_convolutions(holder, report, energy)
    for name in names:
        model[name] = holder.get_submodule(name)
    return stride


def install_grid_anchored_model(
    model: nn.Module,
    report: ConversionReport,
    stock: type[nn.Module],
    converted: type[nn.Module],
    entry: str,
    energy: Energy = "l1",
) -> None:
    """Give a model whose ``entry`` now anchors its map its converted class, or its features wrapper ours.

    A model of class ``stock`` becomes ``converted`` (which rolls its feature maps back); timm's
    ``FeatureListNet`` of one becomes a :class:`GridAnchoredFeatureListNet`, whose modules after
    ``entry`` are declared to run on the anchored map (for the equivariance audit).

    Args:
        model: The model, or timm's ``features_only`` wrapper of one, changed in place.
        report: Where the change is recorded.
        stock: The timm model class.
        converted: Its converted subclass.
        entry: The name of the entry module (``"stem"``, ``"patch_embed"``).
        energy: Energy that picks the origin where the wrapper anchors itself (after a flattened
            sequential entry, :func:`flattened_entry`).

    Raises:
        UnsupportedModelError: If ``model`` is neither.
    """
    if isinstance(model, stock):
        model.__class__ = converted
        if not hasattr(model, "grad_checkpointing"):  # read by the converted forward (timm's models mostly have it)
            model.grad_checkpointing = False
        report.add("", stock.__name__, f"{converted.__name__} (feature maps rolled back)")
    elif type(model) is FeatureListNet:
        model.__class__ = GridAnchoredFeatureListNet
        names = list(model.keys())
        last = names.index(entry) if entry in names else names.index(flattened_entry(model, entry)[-1])
        model.equivit_anchored_children = tuple(names[last + 1 :])
        if entry not in names:  # a flattened sequential entry: the wrapper anchors after its last part
            model.equivit_anchor_after = names[last]
            model.equivit_energy = energy
        report.add("", "FeatureListNet", "GridAnchoredFeatureListNet (maps rolled back to the image's frame)")
    else:
        raise UnsupportedModelError(
            f"{type(model).__name__}: expected a {stock.__name__} or timm's FeatureListNet of one"
        )
