"""Screening: which labels need their trigger optimised to the end, and which only roughly.

The MAD outlier test (:mod:`~neuralcleanse.detection.outlier`) reads the labels' norms only through
their median and their median absolute deviation (MAD). Both are *order statistics*: a norm that lies
above the median can grow without moving the median, and a deviation that lies above the median
deviation can grow without moving the MAD. A label whose trigger is clearly large therefore needs only
an interval for its norm, not its converged value. This is the idea behind the paper's screening for
many labels (Wang et al., S&P 2019, §VI-B) and K-Arm's label scheduling (Shen et al., ICML 2021),
made into a rule that can be checked.

After a short first pass, every label ``k`` that reached the attack threshold has

* an **upper value** ``hi_k``: the L1 norm of its best trigger so far. A full run of the same label
  follows the same trajectory (its randomness depends on ``(seed, label, step)`` only) and keeps the
  smallest norm it meets, so it ends at or below ``hi_k``;
* a **lower bound** ``lo_k = shrink · hi_k``: an assumption that further optimisation does not shrink
  the trigger below this fraction (``ReverseSettings.screen_shrink``; measured in ``docs/detection.md``).

A set ``S`` of labels may stop at their upper value ("screened") when, with every other label at its
value,

1. each ``lo_k`` (k in S) lies strictly above the median computed with S at their lower bounds — then
   the median is the same for **any** true norms inside the intervals; and
2. the MAD computed with S at ``hi`` exceeds the MAD with S at ``lo`` by at most ``tolerance`` (relative),
   on the L1 norms and on their logarithms. For norms above the median the MAD only grows with them,
   so the true MAD lies in that range and every anomaly index is known to within ``tolerance``.

Screened labels stay above the median, so they can never be flagged. The report uses their upper value
in the test: the median is exact and the MAD is the largest possible, so the indices of the other labels
are, if anything, slightly smaller than a full scan's (never a false alarm from screening). Screening
is decided once after the first pass (on the other labels' values at that time) and checked again when
all other labels have converged; labels that no longer satisfy the rule are resumed and run to the end.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np

__all__ = ["screening_holds", "choose_screened", "labels_to_resume"]

_LOG_FLOOR = 1e-6


def _median_mad(values: np.ndarray) -> tuple[float, float]:
    median = float(np.median(values))
    return median, float(np.median(np.abs(values - median)))


def _scale(values: np.ndarray, on_log: bool) -> np.ndarray:
    return np.log(np.maximum(values, _LOG_FLOOR)) if on_log else values


def screening_holds(
    values: Mapping[int, float], screened: Collection[int], *, shrink: float, tolerance: float
) -> bool:
    """Whether the labels in ``screened`` may keep their upper values (module docstring, rules 1 and 2).

    ``values`` holds every label's current L1 norm (NaN/inf: left out, as the outlier test does).
    """
    if not screened:
        return True
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    if len(finite) < 3 or any(k not in finite for k in screened):
        return False
    labels = sorted(finite)
    hi = np.array([finite[k] for k in labels], dtype=np.float64)
    lo = np.array([finite[k] * (shrink if k in screened else 1.0) for k in labels], dtype=np.float64)
    median_lo, _ = _median_mad(lo)
    if not all(shrink * finite[k] > median_lo for k in screened):
        return False
    for on_log in (False, True):
        _, mad_lo = _median_mad(_scale(lo, on_log))
        _, mad_hi = _median_mad(_scale(hi, on_log))
        if mad_hi > (1.0 + tolerance) * mad_lo:
            return False
    return True


def choose_screened(
    values: Mapping[int, float], candidates: Sequence[int], *, shrink: float, tolerance: float
) -> list[int]:
    """The labels of ``candidates`` to stop after the first pass: the largest norms first, each added
    while :func:`screening_holds` still holds for the whole set."""
    chosen: list[int] = []
    for k in sorted(candidates, key=lambda k: (-values[k], k)):
        if math.isfinite(values[k]) and screening_holds(
            values, [*chosen, k], shrink=shrink, tolerance=tolerance
        ):
            chosen.append(k)
    return sorted(chosen)


def labels_to_resume(
    values: Mapping[int, float], screened: Collection[int], *, shrink: float, tolerance: float
) -> list[int]:
    """Screened labels that must run to the end after all (the rule no longer holds with the other
    labels' final norms): the smallest upper values first, until the rule holds for the rest."""
    keep = sorted(screened, key=lambda k: (-values[k], k))
    resume: list[int] = []
    while keep and not screening_holds(values, keep, shrink=shrink, tolerance=tolerance):
        resume.append(keep.pop())
    return sorted(resume)
