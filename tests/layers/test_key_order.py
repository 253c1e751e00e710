"""canonical_token_order: the keys of an attention in an order chosen from content, the same for every shift."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from equivit.layers import canonical_token_order
from equivit.testing import FAMILIES, make_images
from helpers import is_some_roll, roll_tokens

CHANNELS = 6


def _tokens(family: str, size: tuple[int, int], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    grid = make_images(family, (2, CHANNELS, *size), seed=seed).permute(0, 2, 3, 1)
    return nn.functional.layer_norm(grid, (CHANNELS,)).to(dtype).reshape(2, size[0] * size[1], CHANNELS)


def test_smoke_rotates_the_grid() -> None:
    tokens = torch.randn(3, 12, CHANNELS)
    ordered = canonical_token_order(tokens, [3, 4], "l1")
    assert ordered.shape == tokens.shape
    assert ordered.dtype == tokens.dtype
    for sample in range(3):
        assert is_some_roll(ordered[sample].view(3, 4, CHANNELS), tokens[sample].view(3, 4, CHANNELS), (0, 1))
    # the first token is the one of largest L1 norm
    norms = tokens.abs().sum(-1)
    assert torch.equal(ordered.abs().sum(-1)[:, 0], norms.amax(dim=1))


def test_empty_batch_and_l2() -> None:
    assert canonical_token_order(torch.randn(0, 6, 4), [2, 3], "l1").shape == (0, 6, 4)
    assert canonical_token_order(torch.randn(2, 6, 4), [2, 3], "l2").shape == (2, 6, 4)


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="tokens hold 7 tokens, but the grid 2 x 3 needs 6"):
        canonical_token_order(torch.randn(2, 7, 4), [2, 3], "l1")
    with pytest.raises(ValueError, match="energy"):
        canonical_token_order(torch.randn(2, 6, 4), [2, 3], "linf")


@given(
    family=st.sampled_from(FAMILIES),
    size=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    shift=st.tuples(st.integers(-9, 9), st.integers(-9, 9)),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_order_is_the_same_for_every_shift(
    family: str, size: tuple[int, int], shift: tuple[int, int], dtype: torch.dtype, seed: int
) -> None:
    tokens = _tokens(family, size, seed, dtype)
    ordered = canonical_token_order(tokens, list(size), "l1")
    # Bit for bit: tokens that content cannot tell apart are equal, so either choice gives this.
    assert torch.equal(canonical_token_order(roll_tokens(tokens, size, shift), list(size), "l1"), ordered)


def test_attention_over_rotated_keys_rounds_differently() -> None:
    """The negative control: the same keys in another order give other last bits; in content order, the same."""
    differs = False
    for seed in range(8):
        torch.manual_seed(seed)
        q, k, v = (torch.randn(1, 2, 49, 16) for _ in range(3))
        rolled_k, rolled_v = (torch.roll(t.view(1, 2, 7, 7, 16), (1, 2), dims=(2, 3)).view(k.shape) for t in (k, v))
        differs |= not torch.equal(
            F.scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, rolled_k, rolled_v)
        )
        keys = torch.cat([k, v], dim=-1).transpose(1, 2).reshape(1, 49, 64)
        rolled = torch.cat([rolled_k, rolled_v], dim=-1).transpose(1, 2).reshape(1, 49, 64)
        ordered, ordered_rolled = (canonical_token_order(t, [7, 7], "l1") for t in (keys, rolled))
        assert torch.equal(ordered, ordered_rolled)
    assert differs


def test_gradients() -> None:
    tokens = torch.randn(2, 12, CHANNELS, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: canonical_token_order(t, [3, 4], "l1"), (tokens,))
    assert torch.autograd.gradgradcheck(lambda t: canonical_token_order(t, [3, 4], "l1"), (tokens,))


def test_compiles_without_graph_breaks() -> None:
    tokens = torch.randn(2, 12, CHANNELS)

    def order(t: torch.Tensor) -> torch.Tensor:
        return canonical_token_order(t, [3, 4], "l1")

    assert torch._dynamo.explain(order)(tokens).graph_break_count == 0
    compiled = torch.compile(order, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(tokens), order(tokens))
