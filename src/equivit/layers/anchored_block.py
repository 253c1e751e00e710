"""Anchored ResNet blocks: the main path and the downsample shortcut share one anchor."""

from __future__ import annotations

import copy
import itertools
from typing import Any, ClassVar, TypeVar

import torch
from timm.layers import BlurPool2d
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from equivit.anchor_core import anchor
from equivit.energy import Energy
from equivit.layers.anchored_downsample import make_pool_circular
from equivit.layers.anchored_pool import keeps_grid
from equivit.layers.checks import check_map as _check_input
from equivit.layers.circular_conv import CircularConv2d, make_circular
from equivit.layers.declare import equivariant_layer
from equivit.layers.pos_conv import make_conv_circular
from equivit.layers.sharing import parent_method

__all__ = ["AnchoredBasicBlock", "AnchoredBottleneck"]

BlockT = TypeVar("BlockT", bound=nn.Module)


def _prepare(block: nn.Module, stride: int, anchored: tuple[str, ...], energy: str) -> None:
    """Check that ``block`` can run on an anchored input, and switch its convolutions to circular padding.

    Every strided operator must sit in one of the ``anchored`` children (which run on the
    anchored input), have the block's stride and map ``H x W`` to ``H/s x W/s``; every stride-1
    convolution must have a "same" padding, which becomes circular.
    """
    name = type(block).__name__
    if energy not in ("l1", "l2"):
        raise ValueError(f"energy must be 'l1' or 'l2', got {energy!r}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"{name} needs a positive int stride, got {stride!r}")
    drop_block = getattr(block, "drop_block", None)
    if drop_block is not None and type(drop_block) is not nn.Identity:
        raise ValueError(
            f"{name} does not support DropBlock (it drops blocks at positions fixed to the image), got "
            f"{type(drop_block).__name__}; build the model with drop_block_rate=0"
        )
    for path, module in block.named_modules():
        inside = any(path == root or path.startswith(root + ".") for root in anchored)
        if isinstance(module, nn.Conv2d):
            if type(module) not in (nn.Conv2d, CircularConv2d) or isinstance(module.padding, str):
                raise ValueError(
                    f"{name}.{path}: only plain nn.Conv2d with explicit padding is supported, got "
                    f"{type(module).__name__} with padding {module.padding!r}"
                )
            if tuple(module.stride) == (1, 1):
                make_conv_circular(module)
                continue
            grid = keeps_grid(module.kernel_size, module.stride, module.padding, module.dilation)  # type: ignore[arg-type]
            if not inside or tuple(module.stride) != (stride, stride) or not grid:
                raise ValueError(
                    f"{name}.{path}: a strided convolution (kernel {tuple(module.kernel_size)}, stride "
                    f"{tuple(module.stride)}, padding {tuple(module.padding)}) must be one of {anchored}, have the "
                    f"block stride {stride} and map H x W to H/{stride} x W/{stride}"
                )
            make_circular(module)
        elif isinstance(module, BlurPool2d):
            if not inside or module.stride != stride:
                raise ValueError(
                    f"{name}.{path}: an anti-aliasing BlurPool2d (stride {module.stride}) must be one of {anchored} "
                    f"and have the block stride {stride}"
                )
            make_pool_circular(module)
        elif isinstance(module, nn.AvgPool2d | nn.MaxPool2d):
            kernel, step, pad = module.kernel_size, module.stride, module.padding
            if not inside or step not in (stride, (stride, stride)) or not keeps_grid(kernel, step, pad):  # type: ignore[arg-type]
                raise ValueError(
                    f"{name}.{path}: a pooling (kernel {kernel}, stride {step}, padding {pad}) must be one of "
                    f"{anchored}, have the block stride {stride} and no padding"
                )
            if pad not in (0, (0, 0)):
                raise ValueError(f"{name}.{path}: a padded pooling (padding {pad}) marks the image border")


class _AnchoredInput(nn.Module):
    """Anchor the block input once (period = the block's stride), then run the stock block's forward on it.

    Its attributes ``anchor_period`` (int), ``block_name`` and ``energy`` (str) are set per instance
    (by the hand-written blocks below and by :func:`~equivit.layers.anchored_residual`; TorchScript
    infers their types, class annotations would hide them).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anchor ``x`` with period = the block's stride, then run the stock block on it.

        Args:
            x: Input feature maps.

        Returns:
            The block output, on the grid of the anchored input divided by the stride.

        Raises:
            ValueError: If ``x`` is not 4-D or its size is not a multiple of the stride.
        """
        _check_input(x, self.anchor_period, self.block_name)
        anchored, _ = anchor(x, self.anchor_period, self.anchor_period, self.energy, False)
        return self._stock_forward(anchored)

    def _stock_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stock block's ``forward`` (each generated class refers to its stock parent's function)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        """The anchoring period and energy."""
        return f"period={self.anchor_period}, energy={self.energy}"


def _from_block(cls: type[BlockT], block: nn.Module, energy: Energy) -> BlockT:
    """A ``cls`` made of copies of ``block``'s modules that hold ``block``'s own parameters and buffers."""
    shared: dict[int, Any] = {id(t): t for t in itertools.chain(block.parameters(), block.buffers())}
    new = copy.deepcopy(block, memo=shared)  # new modules, the same tensors
    new.__class__ = cls  # cls adds methods and the anchoring attributes only
    new.energy = energy
    new.anchor_period = new.stride
    new.block_name = cls.__name__
    _prepare(new, new.stride, cls.equivit_anchored_children, energy)  # type: ignore[attr-defined]
    return new  # type: ignore[return-value]


class _AnchoredBlock(_AnchoredInput):
    """Anchor the block input once (period = block stride), then run timm's block on it."""

    equivit_anchored_children: ClassVar[tuple[str, ...]]
    timm_block: ClassVar[type[nn.Module]]

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 2,
        downsample: nn.Module | None = None,
        *,
        energy: Energy = "l1",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(inplanes, planes, stride, downsample, device=device, dtype=dtype, **kwargs)  # type: ignore[call-arg]
        self.energy = energy
        self.anchor_period = stride
        self.block_name = type(self).__name__
        _prepare(self, stride, self.equivit_anchored_children, energy)

    @classmethod
    def from_timm(cls: type[BlockT], block: nn.Module, *, energy: Energy = "l1") -> BlockT:
        """Build from timm's block, sharing its parameters and buffers (no copy).

        The new block has its own module objects (``block`` is left as it was) holding
        ``block``'s parameter and buffer tensors; its convolutions pad circularly.

        Args:
            block: The block to anchor (timm's ``BasicBlock`` or ``Bottleneck``, as the class).
            energy: Energy that picks the anchor.

        Returns:
            The anchored block.

        Raises:
            TypeError: If ``block`` is not of the timm type this class anchors.
            ValueError: As for the constructor.
        """
        expected = cls.timm_block  # type: ignore[attr-defined]
        if not isinstance(block, expected):
            raise TypeError(f"expected timm's {expected.__name__}, got {type(block).__name__}")
        return _from_block(cls, block, energy)


@equivariant_layer(period="stride", anchored_children=("conv1", "aa", "downsample"))
class AnchoredBasicBlock(_AnchoredBlock, BasicBlock):
    """timm ``BasicBlock`` that anchors its input once, for both the main path and the shortcut.

    A strided residual block has two strided paths: ``conv1`` (3x3, stride ``s``) and the
    ``downsample`` shortcut (1x1 convolution of stride ``s``, or 2x2 average pooling then 1x1
    convolution). Both must sample the same phase of the block input, or their sum is
    misaligned. Here the block input is rolled once to its polyphase anchor (period = block
    stride) and the whole block runs on the anchored input, with circular padding in every
    convolution: a circular shift of the input gives an exact circular shift of the output (by
    the shift divided by the stride, when the shift is a multiple of the stride).

    Anti-aliased blocks (``aa_layer``: ``conv1`` of stride 1, then a ``BlurPool2d`` or a 2 x 2
    average pooling ``aa`` of stride ``s``) keep their blur, made circular, on the anchored input.
    Squeeze-excitation and ECA layers (``attn_layer``) pool over the whole grid and are kept.

    The parameter names are those of timm's ``BasicBlock`` (``conv1``, ``bn1``, ``conv2``,
    ``bn2``, ``downsample.0``, ...), so stock state dicts load with ``strict=True``.

    Args:
        inplanes: Input channels.
        planes: Output channels.
        stride: Block stride; the anchoring period.
        downsample: The shortcut projection (for example ``Sequential(Conv2d 1x1 stride s, BatchNorm2d)``),
            or None for an identity shortcut.
        energy: Energy that picks the anchor, ``"l1"`` (default) or ``"l2"``.
        device: Device of the parameters.
        dtype: Dtype of the parameters.
        **kwargs: Further arguments of timm's ``BasicBlock`` (``dilation``, ``act_layer``,
            ``norm_layer``, ``drop_path``, ...).

    Raises:
        ValueError: If the block has a DropBlock layer, a convolution that cannot be made
            circular, or a strided operator outside ``conv1``, ``aa`` and ``downsample`` or one
            whose output is not the input size divided by the stride.

    Shape:
        - input: :math:`(B, C_{in}, H, W)`, ``H`` and ``W`` multiples of the stride
        - output: :math:`(B, C_{out}, H / s, W / s)`
    """

    timm_block: ClassVar[type[nn.Module]] = BasicBlock
    _stock_forward = parent_method(BasicBlock.forward, "_stock_forward")


@equivariant_layer(period="stride", anchored_children=("conv2", "aa", "downsample"))
class AnchoredBottleneck(_AnchoredBlock, Bottleneck):
    r"""timm ``Bottleneck`` that anchors its input once, for both the main path and the shortcut.

    As :class:`AnchoredBasicBlock`, for the bottleneck block of ResNet-50 and deeper: the strided
    operators are ``conv2`` (3x3, stride ``s``) and the ``downsample`` shortcut (1x1 convolution
    of stride ``s``, or 2x2 average pooling then 1x1 convolution). ``conv2`` sees the output of
    ``conv1``, not the block input, so anchoring the two paths each on its own input could pick
    different phases; here both run on the input anchored once with period ``s``, and every
    convolution pads circularly. Anti-aliasing (``aa`` after ``conv2``), squeeze-excitation and
    ECA layers are kept, as in :class:`AnchoredBasicBlock`.

    The parameter names are those of timm's ``Bottleneck``, so stock state dicts load with
    ``strict=True``.

    Args:
        inplanes: Input channels.
        planes: Bottleneck channels; the output has ``4 * planes``.
        stride: Block stride; the anchoring period.
        downsample: The shortcut projection, or None for an identity shortcut.
        energy: Energy that picks the anchor, ``"l1"`` (default) or ``"l2"``.
        device: Device of the parameters.
        dtype: Dtype of the parameters.
        **kwargs: Further arguments of timm's ``Bottleneck`` (``cardinality``, ``base_width``,
            ``dilation``, ``act_layer``, ``norm_layer``, ``drop_path``, ...).

    Raises:
        ValueError: If the block has a DropBlock layer, a convolution that cannot be made
            circular, or a strided operator outside ``conv2``, ``aa`` and ``downsample`` or one
            whose output is not the input size divided by the stride.

    Shape:
        - input: :math:`(B, C_{in}, H, W)`, ``H`` and ``W`` multiples of the stride
        - output: :math:`(B, 4 \cdot planes, H / s, W / s)`
    """

    timm_block: ClassVar[type[nn.Module]] = Bottleneck
    _stock_forward = parent_method(Bottleneck.forward, "_stock_forward")
