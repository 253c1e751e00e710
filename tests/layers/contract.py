"""The contract every equivariant layer meets, as a base class of tests.

A layer's test module subclasses :class:`LayerContract` and says how to build the layer, its stock
counterpart and its inputs; it inherits six tests: smoke (shape, shared parameters), errors (each bad
input answered by a message naming it), exact equivariance under circular shifts over the image
families through the public :func:`equivit.testing.assert_shift_equivariant`, the negative control
(the stock module fails that same assertion), gradient checks in float64, and ``torch.compile``
without graph breaks.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from equivit import unresolved_ties
from equivit.testing import FAMILIES, assert_shift_equivariant, make_images


class LayerContract:
    """Subclass with ``Test...`` and set the attributes; pytest runs the inherited tests.

    Layers that take tokens or token grids are tested through :meth:`wrap`, which makes them a
    module from ``(B, C, H, W)`` maps to ``(B, C', H', W')`` maps.

    Attributes:
        channels: Input channels.
        stride: The layer's period: inputs are multiples of it.
        output_stride: The output grid is the input's divided by this (default: ``stride``); a
            shift by a multiple of it moves the output by ``shift / output_stride`` exactly.
        max_blocks: Input sizes are ``stride * k`` for ``k`` up to this.
        gradient_blocks: Input size of the gradient check, in periods.
        output_channels: Output channels.
        bad_inputs: ``(input, regex)`` pairs: each must raise :attr:`error_type` matching the regex.
        error_type: The exception bad inputs raise: ``ValueError`` from equivit's checks; layers
            that take any size (stride 1) leave the checks to torch's convolution.
        energy_in_repr: Whether the layer shows its energy in its ``repr``.
        rtol: Tolerance of the equivariance assertions, relative to the largest output value.
        atol: Their absolute tolerance.
        aligned_output: Whether the layer rolls its result back to its input's frame (window
            attention, stages). Then an input with a symmetry the anchor cannot break (a roll
            that is not a whole period and leaves it unchanged: :func:`equivit.unresolved_ties`)
            gets an output that moves by the shift plus that roll: for such samples the test
            asserts the output moves by *some* roll, and exactly by the shift for all others.
    """

    channels: int = 4
    stride: int = 2
    output_stride: int | None = None
    max_blocks: int = 4
    gradient_blocks: tuple[int, int] = (2, 3)
    output_channels: int = 4
    bad_inputs: tuple[tuple[Callable[[], torch.Tensor], str], ...] = ()
    error_type: type[Exception] = ValueError
    energy_in_repr: bool = True
    rtol: float = 1e-5
    atol: float = 1e-6
    aligned_output: bool = False

    @property
    def reduction(self) -> int:
        """The factor from the input grid to the output grid."""
        return self.stride if self.output_stride is None else self.output_stride

    def wrap(self, layer: nn.Module) -> nn.Module:
        """The layer as a module from ``(B, C, H, W)`` maps to ``(B, C', H', W')`` maps (itself by default)."""
        return layer

    def symmetric(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Samples whose anchored maps have an unbreakable tie (only asked when :attr:`aligned_output`)."""
        wrapped = self.wrap(layer)
        seen = wrapped.layer_input(x) if isinstance(wrapped, GridLayer) else x
        return unresolved_ties(seen, self.stride)

    def make(self, dtype: torch.dtype = torch.float32) -> nn.Module:
        """The equivariant layer, in eval mode."""
        raise NotImplementedError

    def make_stock(self) -> nn.Module:
        """The stock module it replaces, with the same parameters."""
        raise NotImplementedError

    def parameters_shared(self, layer: nn.Module, stock: nn.Module) -> bool:
        """Whether the layer holds the stock module's state (same names and values)."""
        return layer.state_dict().keys() == stock.state_dict().keys() and all(
            torch.equal(a, b) for a, b in zip(layer.state_dict().values(), stock.state_dict().values(), strict=True)
        )

    def default_bad_inputs(self) -> tuple[tuple[Callable[[], torch.Tensor], str], ...]:
        """For a strided layer: a map that is not a multiple of the period, and one that is not 4-D."""
        if self.stride == 1:
            return ()
        size = 2 * self.stride
        return (
            (
                lambda: torch.randn(1, self.channels, size + 1, size),
                f"{size + 1} x {size} .*not a (positive )?multiple",
            ),
            (lambda: torch.randn(self.channels, size, size), "4-D"),
        )

    def test_smoke(self) -> None:
        layer, stock = self.make(), self.make_stock()
        x = torch.randn(2, self.channels, 4 * self.stride, 6 * self.stride)
        with torch.no_grad():
            out = self.wrap(layer)(x)
        assert out.shape == (
            2,
            self.output_channels,
            4 * self.stride // self.reduction,
            6 * self.stride // self.reduction,
        )
        assert self.parameters_shared(layer, stock)
        assert ("energy=" in repr(layer)) == self.energy_in_repr

    def test_errors(self) -> None:
        layer = self.wrap(self.make())
        bad_inputs = self.bad_inputs or self.default_bad_inputs()
        assert bad_inputs, "name at least one bad input and the message it gets"
        for make_input, pattern in bad_inputs:
            with pytest.raises(self.error_type, match=pattern):
                layer(make_input())

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Give each layer its own property test (hypothesis keys its examples by the test function)."""
        super().__init_subclass__(**kwargs)

        def test_equivariant_under_circular_shifts(
            self: LayerContract, family: str, blocks: tuple[int, int], seed: int, strict: bool
        ) -> None:
            size = (blocks[0] * self.stride, blocks[1] * self.stride)
            x = make_images(family, (3, self.channels, *size), seed=seed).float()
            layer = self.make()
            with torch.no_grad():
                symmetric = self.symmetric(layer, x) if self.aligned_output else torch.zeros(3, dtype=torch.bool)
                for part, exact in ((x[~symmetric], strict), (x[symmetric], False)):
                    if part.shape[0]:
                        assert_shift_equivariant(
                            self.wrap(layer),
                            part,
                            output_stride=self.reduction if exact else None,
                            seed=seed,
                            rtol=self.rtol,
                            atol=self.atol,
                        )

        test_equivariant_under_circular_shifts.__qualname__ = (
            f"{cls.__qualname__}.test_equivariant_under_circular_shifts"
        )
        cls.test_equivariant_under_circular_shifts = given(  # type: ignore[attr-defined]
            family=st.sampled_from(FAMILIES),
            blocks=st.tuples(st.integers(1, cls.max_blocks), st.integers(1, cls.max_blocks)),
            seed=st.integers(0, 2**16),
            strict=st.booleans(),
        )(test_equivariant_under_circular_shifts)

    def test_stock_module_is_not_equivariant(self) -> None:
        x = make_images("random", (4, self.channels, 6 * self.stride, 6 * self.stride), seed=0).float()
        with pytest.raises(AssertionError, match="not shift-equivariant"), torch.no_grad():
            assert_shift_equivariant(
                self.wrap(self.make_stock()), x, shifts_per_input=4, rtol=self.rtol, atol=self.atol
            )

    def test_gradients(self) -> None:
        layer = self.wrap(self.make(torch.float64))
        size = (self.gradient_blocks[0] * self.stride, self.gradient_blocks[1] * self.stride)
        x = torch.randn(2, self.channels, *size, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(layer, (x,))

    def test_compiles_without_graph_breaks(self) -> None:
        layer = self.wrap(self.make())
        x = torch.randn(2, self.channels, 4 * self.stride, 4 * self.stride)
        assert torch._dynamo.explain(layer)(x).graph_break_count == 0
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        with torch.no_grad():
            assert torch.allclose(compiled(x), layer(x), atol=1e-6, rtol=0)


class GridLayer(nn.Module):
    """A layer of token grids or token sequences as a module from ``(B, C, H, W)`` maps to maps.

    The map is layer-normalised over its channels first (per token, so equivariant), as the
    blocks of a transformer see their tokens.

    Args:
        layer: The layer.
        takes: ``"grid"``: ``layer(grid)`` on ``(B, H, W, C)`` grids; ``"tokens"``:
            ``layer(tokens, (H, W))``; ``"tokens_list"``: ``layer(tokens, [H, W])``.
    """

    def __init__(self, layer: nn.Module, takes: str) -> None:
        super().__init__()
        self.layer, self.takes = layer, takes

    def layer_input(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised map the layer receives, ``(B, C, H, W)``."""
        return nn.functional.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],)).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        grid = self.layer_input(x).permute(0, 2, 3, 1)
        if self.takes == "grid":
            return self.layer(grid).permute(0, 3, 1, 2)
        tokens = grid.reshape(batch, height * width, channels)
        size = (height, width) if self.takes == "tokens" else [height, width]
        return self.layer(tokens, size).reshape(batch, height, width, -1).permute(0, 3, 1, 2)
