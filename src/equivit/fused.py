"""Fused CPU kernels for anchoring (optional, with numba): one pass for the energies, one for the roll.

In eager mode on the CPU, plain tensor ops need several passes over the input for the energies
(absolute values, channel sums, a float64 conversion, the sums over the grid) and a gather with
one index per element for the roll. With `numba <https://numba.pydata.org>`_ installed
(``pip install numba``, or ``pip install ".[fast]"`` in a clone), anchoring on the CPU instead runs compiled loops:

- the energies in one read of the input, each position's channels summed in float32 in a fixed
  order and the per-position norms summed in float64 (the same rule as the eager path, so equal
  tokens still get bit-identical norms wherever they sit);
- the roll as a copy of each plane rotated as one flat run (two copies), then the few columns
  that wrap around fixed row by row (with circular padding: two row copies per output row);
- :func:`equivit.polyphase_anchor` does both per sample, rolling each sample right after its
  energies are known, while it is still in the cache.

For ``(B, C, H, W)`` maps the channel sums are the eager path's (elementwise adds of channel
halves), so the per-position norms are bit-identical to it, and so are the energies wherever
their float64 sums are exact (the headroom in :mod:`equivit.polyphase`), hence the anchors.
For token maps (channels contiguous) they are summed in eight lanes then halved, in float32,
which differs from the eager path's ``sum`` in the last bits: the choice of anchor can differ
between the two only where two phases' energies agree to about ``1e-7``, as it already can between
the eager, compiled and GPU paths. A ``(B, C, H, W)`` map held channels-last is summed by halves, as
when it is held contiguous, so its anchors do not depend on its memory layout.
The kernels run only in eager mode on the CPU, for contiguous maps, and only where no gradient is
needed through the roll (inference); training, ``torch.compile``, ``torch.export``, TorchScript and
tracing keep the plain tensor ops. Energies need float32 or float64 input (bfloat16 and float16
maps use the plain energies and the fused roll). :func:`use_fused_kernels` turns them off or on;
the environment variable ``EQUIVIT_FUSED=0`` turns them off for a whole process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import torch

from equivit.device_paths import takes_host_paths

__all__ = ["available", "enabled", "use_fused_kernels"]

# Maps of fewer elements (4 MB of float32) run in the calling thread only.
_PARALLEL_MIN_ELEMENTS = 1 << 20
# Integer views for the roll, by element size in bytes: the copy does not look at the values.
_COPY_DTYPES = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

_state: dict[str, bool | int] = {"enabled": os.environ.get("EQUIVIT_FUSED", "1") != "0"}
_kernels: dict[str, Callable[..., None]] = {}


def available() -> bool:
    """Whether numba can be imported, so that the fused kernels can run."""
    if "available" not in _state:
        try:
            import numba  # noqa: F401
        except Exception:  # not installed, or built for another numpy: the plain tensor ops serve
            _state["available"] = False
        else:
            _state["available"] = True
    return bool(_state["available"])


def enabled() -> bool:
    """Whether anchoring uses the fused kernels where they apply (numba installed and not turned off)."""
    return bool(_state["enabled"]) and available()


def _usable() -> bool:
    """Whether the kernels may run here: enabled, and not in a process forked after they ran in threads.

    numba's OpenMP threads, like torch's, do not survive a ``fork``: a child of a process that has
    run the kernels uses the plain tensor ops instead.
    """
    return enabled() and _state.get("pid", os.getpid()) == os.getpid()


@contextlib.contextmanager
def use_fused_kernels(on: bool = True) -> Iterator[None]:
    """Turn the fused CPU kernels on or off inside a ``with`` block (for comparisons and tests).

    Args:
        on: Whether anchoring may use them. Turning them on without numba installed raises.

    Raises:
        ImportError: If ``on`` is true and numba is not installed.
    """
    if on and not available():
        raise ImportError('the fused kernels need numba: pip install numba (or pip install ".[fast]" in a clone)')
    previous = _state["enabled"]
    _state["enabled"] = bool(on)
    try:
        yield
    finally:
        _state["enabled"] = previous


def _eager() -> bool:
    """Whether the call runs eagerly (not under torch.compile, torch.export or a JIT trace)."""
    return not torch.compiler.is_compiling() and not torch.jit.is_tracing()


def applies_to_energy(x: torch.Tensor, channels_last: bool) -> bool:
    """Whether the fused energy pass can read ``x`` (CPU, float32/float64, contiguous tokens or planes)."""
    return (
        takes_host_paths(x)
        and x.dtype in (torch.float32, torch.float64)
        and x.shape[0] > 0
        and _layout(x, channels_last) is not None
        and _eager()
        and _usable()
    )


def applies_to_roll(x: torch.Tensor, channels_last: bool) -> bool:
    """Whether the fused roll can copy ``x`` (CPU, contiguous, no gradient needed through it)."""
    return (
        takes_host_paths(x)
        and x.element_size() in _COPY_DTYPES
        and not x.is_complex()
        and not (x.requires_grad and torch.is_grad_enabled())
        and _layout(x, channels_last) is not None
        and _eager()
        and _usable()
    )


def _layout(x: torch.Tensor, channels_last: bool) -> str | None:
    """``"tokens"`` (channels contiguous), ``"planes"`` (a contiguous (B, C, H, W) map) or None."""
    if channels_last:
        return "tokens" if x.is_contiguous() else None
    if x.is_contiguous():
        return "planes"
    if x.is_contiguous(memory_format=torch.channels_last):
        return "tokens"
    return None


def _tokens(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The ``(B, H, W, C)`` view of a token map, or of a (B, C, H, W) map held channels-last."""
    return x if channels_last else x.permute(0, 2, 3, 1)


def _kernel(name: str, parallel: bool) -> Callable[..., None]:
    """The compiled kernel ``name``, compiled on first use (and cached on disk by numba)."""
    key = f"{name}, parallel" if parallel else name
    if key not in _kernels:
        from equivit import _fused_kernels

        _kernels[key] = _fused_kernels.compile_kernel(name, parallel)
    return _kernels[key]


def _run(name: str, elements: int, *arguments: object) -> None:
    """Run kernel ``name``: in the calling thread, or on torch's number of threads for large maps.

    numba's worker threads, like torch's, keep spinning for a while after a parallel loop; on a
    map that takes less than that they cost the next torch op more than they save, so only maps
    of ``_PARALLEL_MIN_ELEMENTS`` or more are shared among threads.
    """
    threads = torch.get_num_threads() if elements >= _PARALLEL_MIN_ELEMENTS else 1
    if threads <= 1:
        _kernel(name, False)(*arguments)
        return
    import numba

    _state["pid"] = os.getpid()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    _kernel(name, True)(*arguments)


def energy(x: torch.Tensor, ph: int, pw: int, l1: bool, channels_last: bool) -> torch.Tensor:
    """Energies of every phase of period ``(ph, pw)``, float64, NaN as ``inf`` (as the eager path gives them).

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - output: :math:`(B, p_h, p_w)`
    """
    out = torch.empty(x.shape[0], ph, pw, dtype=torch.float64)
    data = x.detach()
    if _layout(x, channels_last) == "planes":
        batch, channels, height, width = data.shape
        planes = data.view(batch, channels, height * width)
        _run("energy_planes", data.numel(), planes.numpy(), width, l1, out.numpy())
    else:
        # A (B, C, H, W) map held channels-last: its channels by halves, as when held contiguous.
        halves = not channels_last
        _run("energy_tokens", data.numel(), _tokens(data, channels_last).numpy(), l1, halves, out.numpy())
    return out


def roll(
    x: torch.Tensor, offsets: torch.Tensor, channels_last: bool, sign: int, padding: tuple[int, int]
) -> torch.Tensor:
    """Per-sample circular roll by ``sign * offsets`` (and circular padding), as row copies.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - offsets: :math:`(B, 2)`, int64
        - output: same layout, :math:`H + 2 p_h` rows and :math:`W + 2 p_w` columns
    """
    ph, pw = padding
    data = x.detach()
    tokens = _layout(x, channels_last) == "tokens"
    if tokens:
        token_map = _tokens(data, channels_last)
        batch, height, width, channels = token_map.shape
        source = token_map.reshape(batch, 1, height, width * channels)
        unit = channels
        out = torch.empty(batch, height + 2 * ph, width + 2 * pw, channels, dtype=x.dtype)
    else:
        batch, channels, height, width = data.shape
        source = data
        unit = 1
        out = torch.empty(batch, channels, height + 2 * ph, width + 2 * pw, dtype=x.dtype)
    if out.numel() > 0:
        copy_type = _COPY_DTYPES[x.element_size()]
        target = out.view(batch, source.shape[1], height + 2 * ph, (width + 2 * pw) * unit)
        arguments = (offsets.numpy(), unit, sign, ph, pw)
        _run("roll_rows", out.numel(), source.view(copy_type).numpy(), *arguments, target.view(copy_type).numpy())
    return out.permute(0, 3, 1, 2) if tokens and not channels_last else out


def anchor(
    x: torch.Tensor, ph: int, pw: int, l1: bool, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Energies, and the anchored roll of every sample whose largest energy is unique, in one pass each.

    Each sample is rolled right after its energies are found, while it is still in the cache.
    Samples whose largest energy is tied are left for the tie-break tiers: ``done[b]`` is false
    and ``y[b]`` is unset for them.

    Returns:
        ``(y, offsets, energies, done)``.

    Shape:
        - x: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
        - y: same as ``x``; offsets :math:`(B, 2)`; energies :math:`(B, p_h, p_w)`; done :math:`(B,)`
    """
    batch = x.shape[0]
    data = x.detach()
    energies = torch.empty(batch, ph, pw, dtype=torch.float64)
    offsets = torch.zeros(batch, 2, dtype=torch.int64)
    done = torch.zeros(batch, dtype=torch.bool)
    results = (energies.numpy(), offsets.numpy(), done.numpy())
    if _layout(x, channels_last) == "planes":
        batch, channels, height, width = data.shape
        rolled = torch.empty(data.shape, dtype=x.dtype)
        flat = (batch, channels, height * width)
        _run(
            "anchor_planes",
            data.numel(),
            data.view(flat).numpy(),
            width,
            l1,
            *results,
            rolled.view(flat).numpy(),
        )
        return rolled, offsets, energies, done
    tokens = _tokens(data, channels_last)
    rolled = torch.empty(tokens.shape, dtype=x.dtype)
    _run("anchor_tokens", data.numel(), tokens.numpy(), l1, not channels_last, *results, rolled.numpy())
    return (rolled if channels_last else rolled.permute(0, 3, 1, 2)), offsets, energies, done
