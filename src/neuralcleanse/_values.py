"""What a value given to the API is, checked the same way everywhere it is taken."""

from __future__ import annotations

import numpy as np

__all__ = ["is_integer"]


def is_integer(value: object) -> bool:
    """A whole number of Python's or numpy's integer types (``True``, ``2.5`` and ``"3"`` are not)."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))
