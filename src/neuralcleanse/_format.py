"""How a number reads in a table or a sentence, the same in the CLI, the HTML report and the results'
own lines."""

from __future__ import annotations

import math

__all__ = ["pct"]


def pct(x: float | None, digits: int = 1, *, missing: str = "-") -> str:
    """A fraction as a percentage with ``digits`` decimals (``0.123`` → ``12.3%``); ``missing`` for an
    unknown (``None``) or non-finite value."""
    return missing if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


def label_ranges(labels: list[int]) -> str:
    """Sorted labels written compactly: ``[0, 1, 2, 5, 8, 9]`` → ``"0-2, 5, 8-9"``."""
    parts: list[str] = []
    last = -2
    for k in sorted(set(labels)):
        if parts and k == last + 1:
            first = parts[-1].split("-")[0]
            parts[-1] = f"{first}-{k}"
        else:
            parts.append(str(k))
        last = k
    return ", ".join(parts)
