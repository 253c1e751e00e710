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

from equivit.testing import FAMILIES, assert_shift_equivariant, make_images


class LayerContract:
    """Subclass with ``Test...`` and set the attributes; pytest runs the inherited tests.

    Attributes:
        channels: Input channels.
        stride: The layer's period: inputs are multiples of it, and a shift by a multiple of it
            moves the output by ``shift / stride`` exactly.
        max_blocks: Input sizes are ``stride * k`` for ``k`` up to this.
        output_channels: Output channels.
        bad_inputs: ``(input, regex)`` pairs: each must raise ``ValueError`` matching the regex.
    """

    channels: int = 4
    stride: int = 2
    max_blocks: int = 4
    output_channels: int = 4
    bad_inputs: tuple[tuple[Callable[[], torch.Tensor], str], ...] = ()

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

    def test_smoke(self) -> None:
        layer, stock = self.make(), self.make_stock()
        x = torch.randn(2, self.channels, 4 * self.stride, 6 * self.stride)
        with torch.no_grad():
            out = layer(x)
        assert out.shape == (2, self.output_channels, 4, 6)
        assert self.parameters_shared(layer, stock)
        assert "energy=" in repr(layer)

    def test_errors(self) -> None:
        layer = self.make()
        for make_input, pattern in self.bad_inputs:
            with pytest.raises(ValueError, match=pattern):
                layer(make_input())

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Give each layer its own property test (hypothesis keys its examples by the test function)."""
        super().__init_subclass__(**kwargs)

        def test_equivariant_under_circular_shifts(
            self: LayerContract, family: str, blocks: tuple[int, int], seed: int, strict: bool
        ) -> None:
            size = (blocks[0] * self.stride, blocks[1] * self.stride)
            x = make_images(family, (3, self.channels, *size), seed=seed).float()
            with torch.no_grad():
                assert_shift_equivariant(self.make(), x, output_stride=self.stride if strict else None, seed=seed)

        test_equivariant_under_circular_shifts.__qualname__ = (
            f"{cls.__qualname__}.test_equivariant_under_circular_shifts"
        )
        cls.test_equivariant_under_circular_shifts = given(  # type: ignore[attr-defined]
            family=st.sampled_from(FAMILIES),
            blocks=st.tuples(st.integers(1, 4), st.integers(1, 4)),
            seed=st.integers(0, 2**16),
            strict=st.booleans(),
        )(test_equivariant_under_circular_shifts)

    def test_stock_module_is_not_equivariant(self) -> None:
        x = make_images("random", (4, self.channels, 6 * self.stride, 6 * self.stride), seed=0).float()
        with pytest.raises(AssertionError, match="not shift-equivariant"), torch.no_grad():
            assert_shift_equivariant(self.make_stock(), x, shifts_per_input=4)

    def test_gradients(self) -> None:
        layer = self.make(torch.float64)
        x = torch.randn(2, self.channels, 2 * self.stride, 3 * self.stride, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(layer, (x,))

    def test_compiles_without_graph_breaks(self) -> None:
        layer = self.make()
        x = torch.randn(2, self.channels, 4 * self.stride, 4 * self.stride)
        assert torch._dynamo.explain(layer)(x).graph_break_count == 0
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        with torch.no_grad():
            assert torch.allclose(compiled(x), layer(x), atol=1e-6, rtol=0)
