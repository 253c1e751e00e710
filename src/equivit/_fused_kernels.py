"""The numba kernels behind :mod:`equivit.fused` (imported only when numba is installed).

Every kernel loops over the samples (or planes) of a batch with ``prange``: numba shares them
among its threads (:mod:`equivit.fused` sets how many). Sums over the channels follow a fixed
order that is the same at every position (see :mod:`equivit.fused`); the float64 sums over the
grid are exact within the headroom documented in :mod:`equivit.polyphase`, so their order does
not matter.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import numba
import numpy as np

_LARGEST_FLOAT64 = np.finfo(np.float64).max
_helper = numba.njit(cache=True, nogil=True, boundscheck=False)
# Called once per row: inlined into the caller (a call costs about as much as a short row's copy).
_inline_helper = numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")


@_helper
def _fold_columns(rows: np.ndarray, energies: np.ndarray) -> None:
    """``energies[r, j] = sum(rows[r, j::pw])``, then NaN as ``inf`` and ``inf`` as the largest float64."""
    ph, pw = energies.shape
    width = rows.shape[1]
    for r in range(ph):
        for j in range(pw):
            total = 0.0
            for w in range(j, width, pw):
                total += rows[r, w]
            if np.isnan(total):
                total = np.inf
            elif total == np.inf:
                total = _LARGEST_FLOAT64
            energies[r, j] = total


@_inline_helper
def _accumulate_few_channels(
    xs: np.ndarray, start: int, count: int, width: int, first_row: int, l1: bool, rows: np.ndarray
) -> None:
    """Add the norms of positions ``start`` to ``start + count`` of a sample of 1 to 3 channels to ``rows``.

    ``(|x0| + |x1|) + |x2|``: the order of the channel halves for 2 and 3 channels.
    """
    channels = xs.shape[0]
    ph = rows.shape[0]
    for k in range(count // width):
        row = rows[(first_row + k) % ph]
        offset = start + k * width
        for w in range(width):
            a = xs[0, offset + w]
            norm = abs(a) if l1 else a * a
            if channels > 1:
                b = xs[1, offset + w]
                norm = norm + (abs(b) if l1 else b * b)
            if channels > 2:
                c = xs[2, offset + w]
                norm = norm + (abs(c) if l1 else c * c)
            row[w] += np.float64(norm)


@_helper
def _sample_energy_planes(xs: np.ndarray, width: int, l1: bool, energies: np.ndarray) -> None:
    """Energies of one ``(C, H * W)`` sample: channels summed by halves (the eager order), then float64.

    A block of whole image rows at a time, so that the block's channel rows stay in the
    first-level cache for the halving: one image row for a few channels, rows of about 1024
    positions for 16 channels or more (longer runs read from each channel plane). The first
    halving reads the input directly (``|x[c]| + |x[c + C // 2]|``).
    """
    channels, area = xs.shape
    height = area // width
    ph = energies.shape[0]
    block_rows = 1 if channels < 16 else min(height, (1024 + width - 1) // width)
    half = channels // 2
    values = np.empty((max(1, half), block_rows * width), dtype=xs.dtype)
    rows = np.zeros((ph, width), dtype=np.float64)
    for first_row in range(0, height, block_rows):
        count = min(block_rows, height - first_row) * width
        start = first_row * width
        if channels <= 3:  # one loop, straight into the float64 rows (the same order of adds)
            _accumulate_few_channels(xs, start, count, width, first_row, l1, rows)
            continue
        for c in range(half):
            head = xs[c, start : start + count]
            tail = xs[c + half, start : start + count]
            target = values[c]
            if l1:
                for i in range(count):
                    target[i] = abs(head[i]) + abs(tail[i])
            else:
                for i in range(count):
                    target[i] = head[i] * head[i] + tail[i] * tail[i]
        if channels % 2 == 1:
            last = xs[channels - 1, start : start + count]
            target = values[0]
            if l1:
                for i in range(count):
                    target[i] += abs(last[i])
            else:
                for i in range(count):
                    target[i] += last[i] * last[i]
        n = half
        while n > 1:
            quarter = n // 2
            for c in range(quarter):
                head = values[c]
                tail = values[c + quarter]
                for i in range(count):
                    head[i] += tail[i]
            if n % 2 == 1:
                head = values[0]
                tail = values[2 * quarter]
                for i in range(count):
                    head[i] += tail[i]
            n = quarter
        norms = values[0]
        for k in range(count // width):
            row = rows[(first_row + k) % ph]
            for w in range(width):
                row[w] += np.float64(norms[k * width + w])
    _fold_columns(rows, energies)


@_inline_helper
def _halved_norm(token: np.ndarray, l1: bool, scratch: np.ndarray) -> np.floating:
    """One position's norm with the channels summed by halves, as the plain path sums a ``(B, C, H, W)`` map.

    ``v[i] += v[i + n // 2]`` for ``i < n // 2``, then ``v[0] += v[n - 1]`` if ``n`` is odd, then
    ``n = n // 2``, until one value is left: the order of ``equivit.polyphase._position_norms``.
    """
    channels = token.shape[0]
    for c in range(channels):
        scratch[c] = abs(token[c]) if l1 else token[c] * token[c]
    n = channels
    while n > 1:
        half = n // 2
        for i in range(half):
            scratch[i] += scratch[i + half]
        if n % 2 == 1:
            scratch[0] += scratch[2 * half]
        n = half
    return scratch[0]


@_helper
def _sample_energy_token_halves(xs: np.ndarray, l1: bool, energies: np.ndarray) -> None:
    """Energies of one ``(H, W, C)`` view of a ``(C, H, W)`` map held channels-last: halves, then float64.

    The channels of each position are summed in the order the plain path uses for a ``(B, C, H, W)``
    map (and the planes kernel): the same map gets the same energies whatever its memory layout.
    """
    height, width, channels = xs.shape
    ph = energies.shape[0]
    rows = np.zeros((ph, width), dtype=np.float64)
    scratch = np.empty(max(1, channels), dtype=xs.dtype)
    for h in range(height):
        row = rows[h % ph]
        for w in range(width):
            row[w] += np.float64(_halved_norm(xs[h, w], l1, scratch))
    _fold_columns(rows, energies)


@_helper
def _sample_energy_tokens(xs: np.ndarray, l1: bool, halves: bool, energies: np.ndarray) -> None:
    """Energies of one ``(H, W, C)`` sample: each token's channels in eight lanes, halved, then float64.

    With ``halves`` (a ``(C, H, W)`` map held channels-last): by halves instead, see
    :func:`_sample_energy_token_halves`.
    """
    if halves:
        _sample_energy_token_halves(xs, l1, energies)
        return
    height, width, channels = xs.shape
    ph = energies.shape[0]
    full = channels // 8
    rows = np.zeros((ph, width), dtype=np.float64)
    lanes = np.zeros(8, dtype=xs.dtype)
    # Of the input's dtype, so that the lanes keep it: ``token[0] * 0`` would be float64 (numba
    # promotes a float32 times an integer literal), and float64 norms summed in float64 are not
    # exact, so a shift, which reorders the sums, could change the energies in the last bits.
    zero = lanes[0]
    for h in range(height):
        row = rows[h % ph]
        for w in range(width):
            token = xs[h, w]
            a0, a1, a2, a3, a4, a5, a6, a7 = zero, zero, zero, zero, zero, zero, zero, zero
            for k in range(full):
                t = token[8 * k : 8 * k + 8]
                if l1:
                    a0 += abs(t[0])
                    a1 += abs(t[1])
                    a2 += abs(t[2])
                    a3 += abs(t[3])
                    a4 += abs(t[4])
                    a5 += abs(t[5])
                    a6 += abs(t[6])
                    a7 += abs(t[7])
                else:
                    a0 += t[0] * t[0]
                    a1 += t[1] * t[1]
                    a2 += t[2] * t[2]
                    a3 += t[3] * t[3]
                    a4 += t[4] * t[4]
                    a5 += t[5] * t[5]
                    a6 += t[6] * t[6]
                    a7 += t[7] * t[7]
            lanes[:] = 0
            for lane in range(channels - 8 * full):
                value = token[8 * full + lane]
                lanes[lane] = abs(value) if l1 else value * value
            a0 += lanes[0]
            a1 += lanes[1]
            a2 += lanes[2]
            a3 += lanes[3]
            a4 += lanes[4]
            a5 += lanes[5]
            a6 += lanes[6]
            a7 += lanes[7]
            norm = ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))
            row[w] += np.float64(norm)
    _fold_columns(rows, energies)


@_helper
def _unique_argmax(energies: np.ndarray) -> int:
    """Flat index of the largest energy, or -1 when it is reached more than once."""
    ph, pw = energies.shape
    best = -1.0
    index = -1
    count = 0
    for r in range(ph):
        for j in range(pw):
            value = energies[r, j]
            if value > best:
                best = value
                index = r * pw + j
                count = 1
            elif value == best:
                count += 1
    return index if count == 1 else -1


@_inline_helper
def _copy_cyclic(source: np.ndarray, start: int, target: np.ndarray) -> None:
    """``target[k] = source[(start + k) % len(source)]``, as contiguous runs (``0 <= start < len(source)``)."""
    length = source.shape[0]
    total = target.shape[0]
    written = 0
    position = start
    while written < total:
        run = min(length - position, total - written)
        target[written : written + run] = source[position : position + run]
        written += run
        position = 0


def roll_rows(
    source: np.ndarray,
    offsets: np.ndarray,
    unit: int,
    sign: int,
    ph: int,
    pw: int,
    target: np.ndarray,
) -> None:
    """Roll (and circularly pad) every plane of ``source``, ``(B, N, H, W * unit)``, by its sample's offsets.

    ``target[b, n, i]`` is row ``i - ph + sign * offsets[b, 0]`` of ``source[b, n]``, its columns
    (tokens of ``unit`` elements) read cyclically from ``-pw + sign * offsets[b, 1]``.
    """
    planes, height, length = source.shape[1], source.shape[2], source.shape[3]
    width = length // unit
    for b in numba.prange(source.shape[0]):
        dh = (sign * offsets[b, 0] - ph) % height
        dw = ((sign * offsets[b, 1] - pw) % width) * unit
        if ph == 0 and pw == 0:
            flat = (planes, height * length)
            _roll_planes(source[b].reshape(flat), dh, dw, length, target[b].reshape(flat))
            continue
        for n in range(planes):
            row = dh
            for i in range(target.shape[2]):
                _copy_cyclic(source[b, n, row], dw, target[b, n, i])
                row += 1
                if row == height:
                    row = 0


def energy_planes(x: np.ndarray, width: int, l1: bool, out: np.ndarray) -> None:
    """Energies of every sample of a ``(B, C, H * W)`` batch into ``out`` ``(B, ph, pw)``."""
    for b in numba.prange(x.shape[0]):
        _sample_energy_planes(x[b], width, l1, out[b])


def energy_tokens(x: np.ndarray, l1: bool, halves: bool, out: np.ndarray) -> None:
    """Energies of every sample of a ``(B, H, W, C)`` batch into ``out`` ``(B, ph, pw)``."""
    for b in numba.prange(x.shape[0]):
        _sample_energy_tokens(x[b], l1, halves, out[b])


@_inline_helper
def _roll_planes(source: np.ndarray, dh: int, dw: int, length: int, target: np.ndarray) -> None:
    """Roll ``(N, H * length)`` planes, all by ``dh`` rows of ``length`` elements and ``dw`` elements.

    ``target[n, i, j] = source[n, (i + dh) % H, (j + dw) % length]``. Each plane is first copied as a
    flat rotation by ``dh * length + dw`` (two long runs per plane, right for every column but the
    last ``dw`` of each row), then those columns are fixed one row at a time across all planes.
    """
    total = source.shape[1]
    height = total // length
    shift = dh * length + dw
    for n in range(source.shape[0]):  # plane by plane: contiguous copies (a 2-D slice copy is slower)
        plane = source[n]
        rotated = target[n]
        rotated[: total - shift] = plane[shift:]
        rotated[total - shift :] = plane[:shift]
    if dw > 0:
        row = dh
        for i in range(height):
            target[:, i * length + length - dw : (i + 1) * length] = source[:, row * length : row * length + dw]
            row += 1
            if row == height:
                row = 0


@_inline_helper
def _take_unique_anchor(energies: np.ndarray, b: int, offsets: np.ndarray, done: np.ndarray) -> bool:
    """Store sample ``b``'s anchor (and mark it done) if its largest energy is unique; whether it was."""
    best = _unique_argmax(energies[b])
    if best < 0:
        return False
    offsets[b, 0] = best // energies.shape[2]
    offsets[b, 1] = best % energies.shape[2]
    done[b] = True
    return True


def anchor_planes(
    x: np.ndarray,
    width: int,
    l1: bool,
    energies: np.ndarray,
    offsets: np.ndarray,
    done: np.ndarray,
    y: np.ndarray,
) -> None:
    """Energies of each ``(C, H * W)`` sample, and its roll to the anchor when the largest is unique."""
    for b in numba.prange(x.shape[0]):
        _sample_energy_planes(x[b], width, l1, energies[b])
        if _take_unique_anchor(energies, b, offsets, done):
            _roll_planes(x[b], offsets[b, 0], offsets[b, 1], width, y[b])


def anchor_tokens(
    x: np.ndarray,
    l1: bool,
    halves: bool,
    energies: np.ndarray,
    offsets: np.ndarray,
    done: np.ndarray,
    y: np.ndarray,
) -> None:
    """Energies of each ``(H, W, C)`` sample of tokens, and its roll to the anchor when the largest is unique."""
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    for b in numba.prange(x.shape[0]):
        _sample_energy_tokens(x[b], l1, halves, energies[b])
        if _take_unique_anchor(energies, b, offsets, done):
            length = width * channels
            flat = x[b].reshape(1, height * length)
            _roll_planes(flat, offsets[b, 0], offsets[b, 1] * channels, length, y[b].reshape(1, height * length))


_KERNELS: dict[str, Callable[..., None]] = {
    "roll_rows": roll_rows,
    "energy_planes": energy_planes,
    "energy_tokens": energy_tokens,
    "anchor_planes": anchor_planes,
    "anchor_tokens": anchor_tokens,
}


def _serial_copy(function: Callable[..., None]) -> Callable[..., None]:
    """The same Python function under another name, so that its serial build has its own cache files.

    numba names a function's cache files after its qualified name and does not tell parallel
    and serial builds apart in them.
    """
    copy = types.FunctionType(function.__code__, function.__globals__, function.__name__ + "_serial")
    copy.__qualname__ = function.__qualname__ + "_serial"
    copy.__module__ = function.__module__
    return copy


def compile_kernel(name: str, parallel: bool) -> Callable[..., None]:
    """Kernel ``name``, its ``prange`` loop shared among threads or run serially, and cached on disk."""
    function = _KERNELS[name] if parallel else _serial_copy(_KERNELS[name])
    return numba.njit(parallel=parallel, nogil=True, cache=True, boundscheck=False)(function)
