"""The ResNet family: timm ``ResNet`` (resnet*, resnext*, wide_resnet*; Res2Net, ResNeSt and SK-ResNet blocks)."""

from __future__ import annotations

from timm.models import res2net, resnest, sknet
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from equivit.cnn_policy import convert_network, convert_sequence, pad_circularly
from equivit.energy import Energy
from equivit.layers import AnchoredBasicBlock, AnchoredBottleneck
from equivit.registry import Example, Family, module_types
from equivit.report import ConversionReport, UnsupportedModelError

__all__ = ["FAMILY", "convert_resnet"]


def _resnet_stages(model: nn.Module) -> list[str]:
    """The ``layer1`` to ``layer4`` that ``model`` holds (a ``features_only`` wrapper may stop early)."""
    return [stage for stage in _STAGES if isinstance(getattr(model, stage, None), nn.Sequential)]


def _check_resnet(model: nn.Module) -> None:
    blocks = [
        (f"{stage}.{index}", block)
        for stage in _resnet_stages(model)
        for index, block in enumerate(getattr(model, stage))
    ]
    known = (BasicBlock, Bottleneck, *_OTHER_BLOCKS)
    for name, block in blocks:
        if type(block) not in known:
            raise UnsupportedModelError(
                f"{name}: timm's ResNet blocks ({', '.join(b.__name__ for b in known)}) are supported, got "
                f"{type(block).__name__}"
            )
        if type(getattr(block, "drop_block", nn.Identity())) is not nn.Identity:
            raise UnsupportedModelError(
                f"{name}: DropBlock (drop_block_rate > 0) is not supported; build the model with drop_block_rate=0"
            )


_STAGES = ("layer1", "layer2", "layer3", "layer4")

# The blocks of Res2Net, ResNeSt and SK-ResNet (timm's ResNet with another block type): their
# strided paths sit in several children (scales, splits, kernels), so those networks anchor their
# input once instead (convert_network).
_OTHER_BLOCKS = (*module_types(res2net), *module_types(resnest), *module_types(sknet))


def convert_resnet(model: nn.Module, report: ConversionReport, energy: Energy) -> None:
    """Make a timm ResNet shift-equivariant, in place. No parameter is added or renamed.

    The stem's strided convolution (7x7 stride 2, or the first 3x3 of a deep stem) becomes an
    :class:`~equivit.layers.AnchoredConv2d` with circular padding, the stem max pooling an
    :class:`~equivit.layers.AnchoredMaxPool2d`, and every strided residual block an
    :class:`~equivit.layers.AnchoredBasicBlock` or :class:`~equivit.layers.AnchoredBottleneck`,
    which anchors its input once for both its main path and its downsample shortcut. Every other
    padded convolution pads circularly. Deep stems (``resnet*c``, ``*d``, ``*s``...), average-pool
    shortcuts (``avg_down``), a convolution in place of the stem pooling and dilated stages
    (``output_stride`` 8 or 16) are handled. Squeeze-excitation and ECA layers pool over the whole
    grid and are kept. Anti-aliased models (``aa_layer``: ``resnetblur*``, ``resnetaa*``) keep their
    blur, made circular, on an anchored input: in the blocks, and in the stem as an
    :class:`~equivit.layers.AnchoredDownsample` after a circular stride-1 max pooling. DropBlock
    is refused. Res2Net, ResNeSt and SK-ResNet blocks, whose strided paths sit in several
    children, are converted by :func:`~equivit.cnn_policy.convert_network` instead (one anchor at
    the input, period 32). ``report.input_multiple`` is the product of the strides (32).

    Args:
        model: The model, changed in place: a ``ResNet``, or timm's ``features_only`` wrapper of one.
        report: Where the changes are recorded.
        energy: Energy that picks the anchors.

    Raises:
        UnsupportedModelError: For the variants above that are not supported.
    """
    _check_resnet(model)
    if any(isinstance(module, _OTHER_BLOCKS) for module in model.modules()):
        convert_network(model, report, energy, entry="conv1")
        # timm's split attention reshapes with -1, which an empty batch leaves ambiguous.
        report.empty_batch_ok = not any(type(module).__name__ == "SplitAttn" for module in model.modules())
        return
    stride = convert_sequence(model, "conv1", "", report, energy)
    stride *= convert_sequence(model, "maxpool", "", report, energy)
    for stage in _resnet_stages(model):
        for index, block in enumerate(getattr(model, stage)):
            name = f"{stage}.{index}"
            if block.stride == 1:
                for path, module in block.named_modules():
                    if isinstance(module, nn.Conv2d):
                        pad_circularly(module, f"{name}.{path}", report)
                continue
            anchored = AnchoredBasicBlock if isinstance(block, BasicBlock) else AnchoredBottleneck
            try:
                getattr(model, stage)[index] = anchored.from_timm(block, energy=energy)
            except ValueError as error:
                raise UnsupportedModelError(f"{name}: {error}") from error
            report.add(
                name,
                type(block).__name__,
                f"{anchored.__name__} (period {block.stride}, one anchor for the main path and the shortcut, "
                "circular padding)",
            )
            stride *= block.stride
    report.input_multiple = (stride, stride)


FAMILY = Family(
    name="resnet",
    description=(
        "ResNet (resnet*, resnext*, wide_resnet*, SE/ECA variants seresnet*, ecaresnet*, resnetrs*, senet154, "
        "anti-aliased resnetblur*, resnetaa*; res2net*, res2next*, resnest*, skresnet*) built by timm's ResNet"
    ),
    model_classes=(ResNet,),
    convert=convert_resnet,
    entry="conv1",
    feature_markers=(BasicBlock, Bottleneck, *_OTHER_BLOCKS),
    accepted=(ResNet, BasicBlock, Bottleneck, *_OTHER_BLOCKS),
    timm_modules=("resnet", "res2net", "resnest", "sknet"),
    empty_batch_ok=True,
    examples={
        "resnet": Example("resnet18", {"layers": (1, 1, 1, 1)}, (64, 96)),
        "resnet_bottleneck": Example("resnet26d", {"layers": (1, 1, 1, 1)}, (64, 64), quick=False),
        "resnet_blur": Example("resnetblur18", {"layers": (1, 1, 1, 1)}, (64, 96), quick=False),
        "resnet_se_aa": Example("seresnetaa50d", {"layers": (1, 1, 1, 1)}, (64, 64)),
        "res2net": Example("res2net50_14w_8s", {"layers": (1, 1, 1, 1)}, (64, 64), quick=False),
        "resnest": Example("resnest14d", {"layers": (1, 1, 1, 1)}, (64, 64)),
        "sknet": Example("skresnet18", {"layers": (1, 1, 1, 1)}, (64, 64), quick=False),
    },
)
