"""Assertions for users' own tests: shift-invariant classifiers, shift-equivariant feature maps."""

from __future__ import annotations

import torch
from torch import nn

from equivit.polyphase import normalize_stride
from equivit.roll import roll_from_anchor
from equivit.testing.consistency import ShiftConsistency, random_shifts, shifted_logits

__all__ = ["assert_shift_equivariant", "assert_shift_invariant", "find_rolls"]

_MAX_LISTED = 5


def _tolerance(reference: torch.Tensor, rtol: float, atol: float) -> float:
    return atol + rtol * (float(reference.abs().max()) if reference.numel() else 0.0)


def _fail(header: str, failures: list[str]) -> None:
    """Raise an AssertionError with ``header`` and the first few failures, if there are any."""
    if not failures:
        return
    listed = "\n  ".join(failures[:_MAX_LISTED])
    more = f"\n  ... and {len(failures) - _MAX_LISTED} more" if len(failures) > _MAX_LISTED else ""
    raise AssertionError(f"{header}\n  {listed}{more}")


@torch.no_grad()
def assert_shift_invariant(
    model: nn.Module,
    images: torch.Tensor,
    *,
    shifts_per_image: int = 2,
    max_shift: int | None = None,
    seed: int = 0,
    rtol: float = 2e-5,
    atol: float = 1e-6,
) -> ShiftConsistency:
    """Assert that a classifier's top-1 and logits do not change when each image is circularly shifted.

    Each image gets its own random shift in every round. The top-1 class must be the same and
    every logit within ``atol + rtol * max|logits|`` of the unshifted one (the default allows
    rounding only: sums over tokens taken in another order). Run the model in eval mode.

    Args:
        model: A classifier returning logits ``(B, K)``.
        images: The images; their size must suit the model.
        shifts_per_image: Shifted copies per image.
        max_shift: Largest absolute shift per axis (default: any).
        seed: Seed of the shifts.
        rtol: Tolerance relative to the largest logit.
        atol: Absolute tolerance.

    Returns:
        The counts, for reporting.

    Raises:
        AssertionError: Naming up to five failing images with their shift, classes and change.

    Shape:
        - images: :math:`(B, C, H, W)`

    Examples:
        >>> model = equivit.create_model("vit_tiny_patch16_224").eval()  # doctest: +SKIP
        >>> assert_shift_invariant(model, torch.randn(4, 3, 224, 224))  # doctest: +SKIP
    """
    reference = model(images)
    tolerance = _tolerance(reference, rtol, atol)
    consistent, total, largest, failures = 0, 0, 0.0, []
    for shifts, logits in shifted_logits(
        model, images, shifts_per_image=shifts_per_image, max_shift=max_shift, seed=seed
    ):
        same_class = logits.argmax(dim=1) == reference.argmax(dim=1)
        change = (logits - reference).abs().flatten(1).amax(dim=1) if logits.numel() else torch.zeros(len(logits))
        consistent += int(same_class.sum())
        total += images.shape[0]
        largest = max(largest, float(change.max()) if change.numel() else 0.0)
        for index in torch.nonzero(~same_class | (change > tolerance)).flatten().tolist():
            failures.append(
                f"image {index}, shift {tuple(shifts[index].tolist())}: top-1 {int(reference[index].argmax())} -> "
                f"{int(logits[index].argmax())}, largest logit change {float(change[index]):.3g}"
            )
    result = ShiftConsistency(consistent, total, largest)
    _fail(
        f"not shift-invariant: {result}; allowed logit change {tolerance:.3g} "
        f"(atol {atol:g} + rtol {rtol:g} x largest logit)",
        failures,
    )
    return result


def find_rolls(shifted: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per sample, the circular roll of ``reference`` that best matches ``shifted``.

    The roll maximising the cross-correlation summed over channels (computed with FFTs in
    float64). When some roll matches exactly, it is found: by Cauchy-Schwarz an exact match
    reaches the largest possible correlation.

    Args:
        shifted: Feature maps of the shifted inputs.
        reference: Feature maps of the unshifted inputs, same shape.

    Returns:
        int64 rolls ``(dy, dx)``, to be applied to ``reference`` as ``torch.roll(reference, (dy, dx))``.

    Shape:
        - shifted, reference: :math:`(B, C, H, W)`
        - output: :math:`(B, 2)`
    """
    if shifted.shape != reference.shape or shifted.dim() != 4:
        raise ValueError(
            f"find_rolls expects two (B, C, H, W) maps of the same shape, got {tuple(shifted.shape)} and "
            f"{tuple(reference.shape)}"
        )
    a, b = shifted.detach().double(), reference.detach().double()
    size = a.shape[-2:]
    correlation = torch.fft.irfft2(torch.fft.rfft2(a) * torch.fft.rfft2(b).conj(), s=size).sum(dim=1)
    best = correlation.flatten(1).argmax(dim=1)
    return torch.stack((best // size[1], best % size[1]), dim=1)


@torch.no_grad()
def assert_shift_equivariant(
    module: nn.Module,
    inputs: torch.Tensor,
    *,
    output_stride: int | tuple[int, int] | None = None,
    shifts_per_input: int = 2,
    seed: int = 0,
    channels_last: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> torch.Tensor:
    """Assert that a module's feature map moves with a circular shift of its input.

    Two forms:

    - ``output_stride=None`` (default): any shift; the output of the shifted input must be *some*
      circular roll of the unshifted output. This is what anchoring guarantees for a strided
      operator: the output moves by whole periods, but a shift that is not a multiple of the
      stride can move it by either neighbouring whole number of tokens.
    - ``output_stride=s``: shifts are drawn as multiples of ``s`` (the module's total stride),
      and the output must move by exactly ``shift / s``.

    Within ``atol + rtol * max|output|``. Run the module in eval mode.

    Args:
        module: Takes ``(B, C, H, W)`` images (or ``(B, H, W, C)``) and returns a feature map.
        inputs: The inputs.
        output_stride: Total stride from input to output, for the strict form.
        shifts_per_input: Shifted copies per input.
        seed: Seed of the shifts.
        channels_last: Inputs and outputs are ``(B, H, W, C)``.
        rtol: Tolerance relative to the largest output value.
        atol: Absolute tolerance.

    Returns:
        The rolls of the output found in the last round, ``(B, 2)``.

    Raises:
        AssertionError: Naming up to five failing inputs with their shift and deviation.
        ValueError: If the output is not a 4-D map, or the input size is not a multiple of
            ``output_stride``.

    Shape:
        - inputs: :math:`(B, C, H, W)`, or :math:`(B, H, W, C)` with ``channels_last=True``
    """
    to_first = (lambda t: t.permute(0, 3, 1, 2)) if channels_last else (lambda t: t)
    images = to_first(inputs)
    height, width = images.shape[-2:]
    reference = module(inputs)
    if reference.dim() != 4:
        raise ValueError(
            f"assert_shift_equivariant expects a 4-D feature map, the module returned {tuple(reference.shape)}"
        )
    reference = to_first(reference)
    tolerance = _tolerance(reference, rtol, atol)
    stride = normalize_stride(output_stride) if output_stride is not None else (1, 1)
    if height % stride[0] or width % stride[1]:
        raise ValueError(f"input size {height} x {width} is not a multiple of output_stride {stride}")
    failures: list[str] = []
    rolls = torch.zeros(images.shape[0], 2, dtype=torch.int64)
    for round_index in range(shifts_per_input):
        steps = random_shifts(images.shape[0], (height // stride[0], width // stride[1]), seed=seed + round_index)
        shifts = steps * torch.tensor(stride)
        shifted_images = roll_from_anchor(images, shifts.to(images.device))
        output = to_first(module(shifted_images.permute(0, 2, 3, 1) if channels_last else shifted_images))
        if output.shape != reference.shape:
            raise AssertionError(
                f"output shape changed under a shift: {tuple(reference.shape)} -> {tuple(output.shape)}"
            )
        rolls = steps if output_stride is not None else find_rolls(output, reference).cpu()
        expected = roll_from_anchor(reference, rolls.to(reference.device))
        error = (output - expected).abs().flatten(1).amax(dim=1) if output.numel() else torch.zeros(len(output))
        for index in torch.nonzero(error > tolerance).flatten().tolist():
            target = (
                f"its roll by {tuple(rolls[index].tolist())}"
                if output_stride is not None
                else "every roll of the reference"
            )
            failures.append(
                f"input {index}, shift {tuple(shifts[index].tolist())}: output differs from {target} "
                f"by up to {float(error[index]):.3g}"
            )
    _fail(f"not shift-equivariant (allowed deviation {tolerance:.3g}):", failures)
    return rolls
