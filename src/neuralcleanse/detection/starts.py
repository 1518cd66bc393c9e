"""More random starts for the labels the verdict hinges on (``ReverseSettings.starts``).

The trigger optimisation is not convex. On a residual network with a planted 4×4 square
(``docs/fidelity.md``, "More starts") the planted label's smallest trigger came out at about 9.5 from
half of its random starts and at 21–25 from the others — where a natural shortcut (Fashion-MNIST's
bag, about 19–21 from every start) is cheaper and the verdict misses the backdoor. A natural label's
norm varies by a few percent between starts; a planted one can fall into the wrong minimum.

So after the scan, every label whose trigger is at most ``start_ratio`` times the median norm (the
labels a verdict could flag, and those just above the line) is optimised again from ``starts - 1``
other random starts — other initial masks and patterns, other image orders, every start to the end of
the schedule — and keeps its smallest trigger. Start ``s`` of a label depends only on ``(seed, s,
label)``, so a scan with more starts repeats the result of one with fewer for the starts they share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .engine import LabelState

__all__ = ["start_seed", "start_candidates", "keep_smallest", "starts_note"]


def start_seed(seed: int, start: int) -> int:
    """The seed of random start ``start`` (1 is the scan's own ``seed``; later starts derive from it)."""
    if start == 1:
        return seed
    state = np.random.SeedSequence([seed, start, 0x57A27]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))  # a settings seed is below 2**63


def start_candidates(states: Sequence[LabelState], *, ratio: float) -> list[int]:
    """The labels that ran to the end with a norm at most ``ratio`` times the median of the test's norms."""
    norms = [s.test_norm() for s in states]
    finite = [n for n in norms if math.isfinite(n)]
    if not finite:
        return []
    median = float(np.median(finite))
    return [
        s.label
        for s, n in zip(states, norms, strict=True)
        if s.stop_reason not in ("screened", "nan") and math.isfinite(n) and n <= ratio * median
    ]


def keep_smallest(states: Sequence[LabelState], others: Sequence[Sequence[LabelState]]) -> list[LabelState]:
    """Each label's state with the smallest trigger among its starts (a start that reached the attack
    threshold beats one that did not); the images of every start are counted in the kept state."""
    extra: dict[int, list[LabelState]] = {}
    for run in others:
        for s in run:
            extra.setdefault(s.label, []).append(s)
    out = []
    for s in states:
        runs = [s, *extra.get(s.label, [])]
        if len(runs) > 1:
            best = min(runs, key=lambda r: (not r.reached, _norm_key(r)))
            best.images_seen = sum(r.images_seen for r in runs)
            s = best
        out.append(s)
    return out


def _norm_key(s: LabelState) -> float:
    n = s.l1_norm()
    return n if math.isfinite(n) else math.inf


def starts_note(
    candidates: Sequence[int], norms: dict[int, list[float]], *, starts: int, ratio: float
) -> str:
    """The report's sentence: which labels had more starts, and each start's norm."""
    if not candidates:
        return f"no label was at most {ratio:g} of the median norm: none needed more than one start"
    each = "; ".join(f"label {k}: " + ", ".join(f"{n:.1f}" for n in norms[k]) for k in candidates)
    which = f"{len(candidates)} labels" if len(candidates) > 1 else "1 label"
    return (
        f"{which} at most {ratio:g} of the median norm {'were' if len(candidates) > 1 else 'was'} optimised "
        f"from {starts} random starts each, keeping the smallest trigger ({each})"
    )
