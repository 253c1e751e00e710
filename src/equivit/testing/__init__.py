"""Helpers for property-testing shift equivariance: input families and hypothesis strategies.

``equivit.testing.families`` builds the image families (no extra dependency);
``equivit.testing.strategies`` wraps them as hypothesis strategies (needs ``hypothesis``).
"""

from __future__ import annotations

from equivit.testing.families import FAMILIES, make_images

__all__ = ["FAMILIES", "make_images"]
