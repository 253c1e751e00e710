"""Breaking energy ties from content: the best reading hash among each candidate's lifts.

Anchoring picks the polyphase component of largest energy. On synthetic content (stripes,
checkerboards, binary images, equal dots, a map beside its negative) several components can
have exactly equal energies, and ``argmax`` would then take the first index, which a shift
changes. The rule here decides those ties from content alone, in a fixed number of tensor
operations, with no host read, so that an accelerator runs it on every anchor.

The rule, for an ``H x W`` map and period ``(s_h, s_w)``:

1. **Token keys.** Each value's bit pattern, read as an integer (a free view), is multiplied
   by a fixed odd pseudo-random 63-bit integer per channel and summed over the channels in
   wrapping int64 arithmetic, which is exact and order-free; the key is that sum modulo a prime
   ``q``. Equal tokens get equal keys wherever
   they sit, different tokens (another sign, the channels permuted) different keys except by a
   collision of probability about ``1/q``. Integer arithmetic costs one cheap pass, where
   reducing the values themselves modulo ``q`` (``fmod`` of ratios up to ``2**149``) loops over
   the exponent bits on CPUs and GPUs alike.
2. **Reading hash.** For every position ``l`` of the grid, ``g(l)`` hashes the whole key map
   read from ``l``: ``sum_p key[p] a[(p_h - l_h) mod H] b[(p_w - l_w) mod W]`` modulo ``q``, for
   two independent pseudo-random weight pairs ``(a, b)`` (two circulant matrix products each,
   exact in float64). A circular shift of the map moves ``g`` with it: ``g`` depends only on
   the content read from ``l``.
3. **Candidates.** Candidate phase ``(i, j)`` scores the largest ``g`` over its lifts
   ``(i + k s_h, j + m s_w)``; among the phases of largest energy the highest score wins.

Why what remains is harmless: two candidates tie only if their best lifts ``l`` and ``l'`` have
equal hashes, that is (up to a hash collision, probability about ``2 N / q^2`` for ``N`` lifts)
if the map read from ``l`` is the map read from ``l'``. The input is then invariant to the roll
by ``l' - l``, so rolling it to either candidate gives the same tensor up to whole periods: the
strided operator that follows produces the same output, shifted. Ties that survive are exactly
the periodic maps (:func:`equivit.unresolved_ties` reports them).

Cost: about a dozen operations on the key map (one channel), whatever the content; two
products of the key map with ``H x H`` and ``W x W`` matrices (``2 H W (H + W)`` multiply-adds
per sample and stream).
"""

from __future__ import annotations

from functools import partial

import torch

from equivit.tables import cached_table

__all__ = ["reading_hash_scores", "tie_break_modulus"]


def tie_break_modulus(size: int) -> int:
    """The prime ``q`` for grids whose larger side is ``size``: ``2 size q^2 <= 2**52``.

    Every sum of products of two residues over one axis then stays below ``2**53``, where
    float64 integers are exact, and so does the pair of the two streams packed into one number.

    Raises:
        ValueError: If ``size`` exceeds ``2**24`` (the modulus would fall below ``2**14``).
    """
    # The largest prime below 2**k, for k = 14 .. 26 (checked in the tests; a local for TorchScript).
    primes = [16381, 32749, 65521, 131071, 262139, 524287, 1048573, 2097143, 4194301, 8388593, 16777213,
              33554393, 67108859]  # fmt: skip
    bits = 0
    while (1 << bits) < size:
        bits += 1
    power = min((51 - bits) // 2, 26)  # 2 * 2**bits * 2**(2 * power) <= 2**52
    if power < 14:
        raise ValueError(f"the tie-break supports grids of up to 2**24 positions per side, got {size}")
    return primes[power - 14]


def _mix(values: torch.Tensor, seed: int) -> torch.Tensor:
    """A 62-bit pseudo-random integer per int64 value (splitmix64's finaliser, wrapping products).

    Shape:
        - values: any, int64
        - output: same, int64 in ``[0, 2^62)``
    """
    z = values * -7046029254386353131 + seed  # 0x9E3779B97F4A7C15
    z = torch.bitwise_xor(z, torch.bitwise_and(z >> 30, 17179869183)) * -4658895280553007687  # 0xBF58476D1CE4E5B9
    z = torch.bitwise_xor(z, torch.bitwise_and(z >> 27, 137438953471)) * -7723592293110705685  # 0x94D049BB133111EB
    z = torch.bitwise_xor(z, torch.bitwise_and(z >> 31, 8589934591))
    return torch.bitwise_and(z, 4611686018427387903)


def _mix_ints(values: range, seed: int) -> list[int]:
    """:func:`_mix` in Python integers (the same numbers): tables built from it hold no index arithmetic.

    Under ``torch.compile`` a table built by tensor operations from an ``arange`` is fused into
    index expressions, and inductor's 64-bit index arithmetic overflows on these constants;
    a table built from a list is a plain constant.
    """
    mask = (1 << 64) - 1
    mixed = []
    for value in values:
        z = (value * 0x9E3779B97F4A7C15 + seed) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        mixed.append((z ^ (z >> 31)) & 4611686018427387903)
    return mixed


def _mixed(start: int, count: int, seed: int, device: torch.device) -> torch.Tensor:
    """``_mix(arange(start, start + count), seed)``, from Python integers outside TorchScript.

    Shape:
        - output: :math:`(count,)`, int64
    """
    if not torch.jit.is_scripting():
        return torch.tensor(_mix_ints(range(start, start + count), seed), dtype=torch.int64, device=device)
    return _mix(torch.arange(start, start + count, device=device, dtype=torch.int64), seed)


def _channel_weights(channels: int, device: torch.device) -> torch.Tensor:
    """Odd pseudo-random 63-bit integers, one per channel.

    Shape:
        - output: :math:`(C,)`, int64
    """
    return _mixed(0, channels, 1, device) * 2 + 1


def _circulants(size: int, modulus: int, first: bool, device: torch.device) -> torch.Tensor:
    """Two circulant matrices of pseudo-random residues, one per stream, side by side.

    With ``first`` the row side, applied on the left and stacked: ``M[s n + l, p] =
    a_s[(p - l) mod n]``; else the column side, applied on the right and side by side:
    ``M[p, s n + l] = b_s[(p - l) mod n]``.

    Shape:
        - output: :math:`(2n, n)` with ``first``, else :math:`(n, 2n)`; float64
    """
    index = torch.arange(size, device=device, dtype=torch.int64)
    seed = 2 if first else 4
    streams = [torch.remainder(_mixed((seed + s) * 1000003, size, 7, device), modulus) for s in range(2)]
    difference = index[None, :] - index[:, None]  # j - i
    lags = torch.remainder(difference if first else -difference, size)
    if first:
        return torch.cat([stream[lags] for stream in streams], dim=0).to(torch.float64)  # (2n, n)
    return torch.cat([stream[lags] for stream in streams], dim=1).to(torch.float64)  # (n, 2n)


def _weights_table(channels: int, device: torch.device) -> torch.Tensor:
    """:func:`_channel_weights`, cached per device in eager mode."""
    if not torch.jit.is_scripting():
        return cached_table(("tie-weights", channels), device, partial(_channel_weights, channels, device))
    return _channel_weights(channels, device)


def _circulant_table(size: int, modulus: int, first: bool, device: torch.device) -> torch.Tensor:
    """:func:`_circulants`, cached per device in eager mode."""
    if not torch.jit.is_scripting():
        build = partial(_circulants, size, modulus, first, device)
        return cached_table(("tie-circulants", size, modulus, first), device, build)
    return _circulants(size, modulus, first, device)


def _bit_patterns(x: torch.Tensor) -> torch.Tensor:
    """The values' bit patterns as signed integers (a free view; float64 patterns folded once).

    A 64-bit pattern gets its upper half XOR-ed into its lower half (a bijection), so that a
    change in the upper bits (the sign) also changes the lower ones: the wrapping products of
    :func:`_token_keys` then keep it, instead of sending it to ``2**63`` for every weight.
    """
    if x.dtype == torch.float64:
        bits = x.view(torch.int64)
        return torch.bitwise_xor(bits, torch.bitwise_and(bits >> 32, 4294967295))
    if x.dtype == torch.float16 or x.dtype == torch.bfloat16:
        return x.view(torch.int16)
    return x.view(torch.int32)


def _value_weights(channels: int, modulus: int, device: torch.device) -> torch.Tensor:
    """Weights in ``[1, M]`` with ``channels * M * q < 2**53`` (exact sums), times ``2**149`` (see :func:`_value_keys`).

    Shape:
        - output: :math:`(C,)`, float64
    """
    largest = max(1, 9007199254740991 // (channels * modulus))  # 2**53 - 1
    weights = (torch.remainder(_mixed(0, channels, 1, device), largest) + 1).to(torch.float64)
    return weights * 2.0**149


def _value_keys(x: torch.Tensor, modulus: int, channels_last: bool) -> torch.Tensor:
    """Token keys from the values, for TorchScript, ``torch.jit.trace`` and ONNX, which have no bit casts.

    A float32 (or float16, bfloat16) value ``v`` is an integer multiple of ``2**-149``, so
    ``v * 2**149`` is an exact integer in float64, and ``fmod(v, q * 2**-149)`` (exact) is its
    residue modulo ``q`` up to that factor, which the weights carry. The weighted channel sums
    stay below ``2**53``: exact and order-free, so these keys are as exact as the bit keys (a
    token with an inf or a NaN gets key 0). They are a different function, though: an exported
    model breaks exact energy ties by another rule than PyTorch (both shift-consistent), and
    ``fmod`` of such ratios is slow, which is why PyTorch uses the bit keys.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B, H, W)`, float64 integers in :math:`(-q, q)`
    """
    x = x.detach().float()
    channels = x.shape[3] if channels_last else x.shape[1]
    weights = _value_weights(channels, modulus, x.device)
    residues = torch.fmod(x.to(torch.float64), modulus * 2.0**-149)
    if channels_last:
        keys = torch.matmul(residues, weights)
    else:
        batch, height, width = x.shape[0], x.shape[2], x.shape[3]
        keys = torch.matmul(weights, residues.reshape(batch, channels, height * width)).view(batch, height, width)
    return torch.nan_to_num(torch.fmod(keys, modulus), nan=0.0)


def _token_keys(x: torch.Tensor, modulus: int, channels_last: bool) -> torch.Tensor:
    """Each token's key: :func:`_bit_keys`, or :func:`_value_keys` in TorchScript, ``torch.jit.trace`` and ONNX.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B, H, W)`, float64 integers in :math:`(-q, q)`
    """
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips only this exact condition)
        if not torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing():
            return _bit_keys(x, modulus, channels_last)
    return _value_keys(x, modulus, channels_last)


def _bit_keys(x: torch.Tensor, modulus: int, channels_last: bool) -> torch.Tensor:
    """Each token's key: its bit patterns times fixed odd 63-bit integers, summed (wrapping int64), modulo ``q``.

    The key is a function of the token's bits alone, and wrapping integer sums are exact in any
    order: equal tokens get equal keys wherever they sit and on every device, and different
    tokens (a sign flipped, the channels permuted) different keys except by a collision of
    probability about ``1/q``. ``-0.0`` and ``0.0`` (or two NaN payloads) get different keys:
    that only tells apart tokens that equal computations never mix, so no shift changes a
    choice through it.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B, H, W)`, float64 integers in :math:`[0, q)`
    """
    bits = _bit_patterns(x.detach())
    channels = x.shape[3] if channels_last else x.shape[1]
    weights = _weights_table(channels, x.device)
    dim = 3 if channels_last else 1
    keys = torch.sum(bits * (weights if channels_last else weights.view(channels, 1, 1)), dim=dim)
    return torch.remainder(keys, modulus).to(torch.float64)


def reading_hash_scores(x: torch.Tensor, sh: int, sw: int, channels_last: bool) -> torch.Tensor:
    """Tie-break score of every candidate phase: the largest reading hash over its lifts.

    Depends on content only: shifting ``x`` by ``(a, b)`` rolls the scores by ``(a, b)`` modulo the
    period. Two candidates score alike only if the maps read from their best lifts are equal
    (see the module notes), which makes the tie harmless.

    Args:
        x: Feature maps; ``H`` and ``W`` multiples of ``(sh, sw)``.
        sh: Period along the rows.
        sw: Period along the columns.
        channels_last: Whether ``x`` is laid out ``(B, H, W, C)``.

    Returns:
        Scores, float64 integers below ``2**53``.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B, s_h, s_w)`
    """
    batch = x.shape[0]
    height, width = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    modulus = tie_break_modulus(max(height, width))
    keys = _token_keys(x, modulus, channels_last)  # (B, H, W)
    columns = _circulant_table(width, modulus, False, x.device)  # (W, 2W): both streams side by side
    rows = _circulant_table(height, modulus, True, x.device)  # (2H, H): both streams stacked
    # Columns from the right, one product for both streams: (B, H, W) @ (W, 2W) -> (B, H, 2W). Then
    # both streams' rows from the left on both streams' columns, (B, 2H, 2W), of which only the
    # diagonal blocks (stream 0 with 0, 1 with 1) are used: one strided view holds both.
    mixed = torch.fmod(torch.matmul(keys, columns), modulus)
    both = torch.matmul(rows, mixed).contiguous()
    area = height * width
    blocks = both.as_strided((batch, 2, height, width), (4 * area, 2 * area + width, 2 * width, 1))
    hashes = torch.fmod(blocks, modulus)  # (B, 2, H, W), each in (-q, q)
    packed = torch.add(hashes.select(1, 1), hashes.select(1, 0), alpha=2 * modulus)  # one exact number each
    return packed.view(batch, height // sh, sh, width // sw, sw).amax(dim=(1, 3))
