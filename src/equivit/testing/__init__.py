"""Helpers for property-testing shift equivariance.

- :func:`shift_consistency`: how often a classifier keeps its top-1 under random circular shifts.
- :func:`crop_consistency`: the same under crop shifts (two crops of a larger image), which bring
  new content in at the border and so are not exactly invariant for any model.
- :func:`worst_case_consistency`: the share of images whose top-1 holds for *every* circular, crop
  or fractional shift within a radius (adversarial shift robustness).
- :func:`assert_shift_invariant`, :func:`assert_shift_equivariant`: assertions for your own tests.
- :func:`perturb_weights_`: give a fresh model trained-looking norms and embeddings.
- :func:`calibrate_batch_norms_`: give a fresh CNN the batch-norm statistics of real images.
- :func:`load_photos`: real photographs from scikit-image.
- :func:`count_kernel_ops` and :func:`accelerator_paths`: count the kernel launches and host reads
  (syncs) a forward pass or training step would cost on a GPU, on CPU tensors.
- ``equivit.testing.families`` builds synthetic image families (no extra dependency);
  ``equivit.testing.strategies`` wraps them as hypothesis strategies (needs ``hypothesis``).
"""

from __future__ import annotations

from equivit.device_paths import accelerator_paths
from equivit.testing.adversarial import WorstCase, translate, worst_case_consistency
from equivit.testing.assertions import assert_shift_equivariant, assert_shift_invariant, find_rolls
from equivit.testing.consistency import ShiftConsistency, crop_consistency, random_shifts, shift_consistency
from equivit.testing.families import FAMILIES, make_images
from equivit.testing.launches import KernelOpCount, count_kernel_ops
from equivit.testing.photos import PHOTOS, load_photos
from equivit.testing.weights import calibrate_batch_norms_, perturb_weights_

__all__ = [
    "FAMILIES",
    "PHOTOS",
    "KernelOpCount",
    "ShiftConsistency",
    "WorstCase",
    "accelerator_paths",
    "assert_shift_equivariant",
    "assert_shift_invariant",
    "calibrate_batch_norms_",
    "count_kernel_ops",
    "crop_consistency",
    "find_rolls",
    "load_photos",
    "make_images",
    "perturb_weights_",
    "random_shifts",
    "shift_consistency",
    "translate",
    "worst_case_consistency",
]
