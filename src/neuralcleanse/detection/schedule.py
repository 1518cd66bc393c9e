"""Screening: which labels need their trigger optimised to the end, and which only roughly.

The outlier test (:mod:`~neuralcleanse.detection.outlier`) decides, for every label, whether its norm
lies more than ``threshold`` MADs below the median. A label whose trigger is clearly large only has to
be known well enough for those decisions to come out the same, not to its converged value. This is the
idea behind the paper's screening for many labels (Wang et al., S&P 2019, §VI-B) and K-Arm's label
scheduling (Shen et al., ICML 2021), made into a rule that can be checked.

After a short first pass, every label ``k`` that reached the attack threshold has

* an **upper value** ``hi_k``: the L1 norm of its best trigger so far. A full run of the same label
  follows the same trajectory (its randomness depends on ``(seed, label, step)`` only) and keeps the
  smallest norm it meets, so it ends at or below ``hi_k``;
* a **lower bound** ``lo_k = shrink · hi_k``: an assumption that further optimisation does not shrink
  the trigger below this fraction (``ReverseSettings.screen_shrink``; measured in ``docs/detection.md``).

A set ``S`` of labels may stop at their upper value ("screened") when the test's decisions are the
same for **every** choice of true norms inside the intervals ``[lo_k, hi_k]`` (k in S), the other labels
at their values — on the L1 norms (the paper's test, including whether it has any power: its ceiling
``median / MAD`` against the threshold) and on their logarithms (the log statistic). The median lies
between the median of the lower ends and the median of the upper ends; every label's deviation from it
between the nearest and the farthest distance of the two intervals, so the MAD lies between the median of
the nearest and the median of the farthest distances. A label is *surely flagged* when even its
largest norm is more than ``threshold`` of the largest MAD below the smallest median, and *surely not*
when even its smallest norm is within ``threshold`` of the smallest MAD of the largest median. The rule
holds when every label that may be flagged is one or the other, and every screened label is surely not
flagged and lies above the median: the small triggers — the ones a user looks at, and the ones that
shrink most under further optimisation — are always optimised to the end.

The bounds are conservative, so the rule screens labels only where the verdict is clear: many labels
far above the median when one label is far below (a clear backdoor, or a clear clean model), few when a
label sits near the threshold. Screening is decided once after the first pass (with the other labels at
their values then) and checked again when all other labels have converged; labels it no longer allows
are resumed and run to the end.

With many labels the lower bound is measured on a calibration sample run to the end
(:func:`calibration_sample`, :func:`measured_shrink`). When the verdict has an effect size (the
``effect`` statistic: a flag must also be at most ``max_ratio`` of the median), :func:`ranges_hold` and
:func:`clearly_unflagged` decide on measured **ranges** instead: each label's final norm is assumed to
lie between its first-pass norm times the sample's smallest and largest ratios (with a margin), and a
label whose range lies surely above ``max_ratio`` of the median cannot be flagged whatever its index, so
it may stop; only the effect statistic's flags are kept certain, not the plain L1 and log tests'.
With many stopped labels the worst case over all of them at once (every range at the end that widens
the MAD most) is far from anything a scan meets, and it kept half the labels running on 200-label
models; :func:`drawn_spread` bounds the median and MAD by the range they take over random completions
of the stopped labels' norms instead (each label's own decision still uses its whole range).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from ..errors import SettingsError
from .outlier import CONSISTENCY, mad_outlier_test

__all__ = [
    "verdict_holds",
    "choose_screened",
    "labels_to_resume",
    "ranges_hold",
    "clearly_unflagged",
    "protected",
    "calibration_sample",
    "measured_shrink",
    "drawn_spread",
]

_LOG_FLOOR = 1e-6


def _decided(
    lo: np.ndarray,
    hi: np.ndarray,
    may_flag: np.ndarray,
    screened: np.ndarray,
    threshold: float,
    *,
    ceiling: bool,
    effect: float = math.inf,
    effect_clears: bool = False,
    spread: tuple[float, float, float, float] | None = None,
) -> bool:
    """Whether every label of ``may_flag`` is surely flagged or surely not for any values in [lo, hi],
    every ``screened`` label surely not (and, with ``ceiling``, whether the test surely has power or
    surely has none). With a finite ``effect`` (on logarithms: the log of ``max_ratio``) a surely
    flagged label must also surely lie within ``effect`` of the median, or surely not; with
    ``effect_clears`` a label that surely lies farther than that from the median is surely not flagged
    whatever its index (the effect statistic's verdict, not the plain log test's). ``spread``: the
    median's and MAD's bounds (smallest and largest of each) if not the worst case over the ranges."""
    median_lo, median_hi, mad_lo, mad_hi = spread or _spread(lo, hi)
    surely_flagged = (median_lo - hi) > threshold * mad_hi
    surely_not = _surely_not(lo, median_hi, mad_lo, threshold, effect if effect_clears else math.inf)
    if not bool(np.all((surely_flagged | surely_not)[may_flag])) or not bool(np.all(surely_not[screened])):
        return False
    if math.isfinite(effect):
        small = (hi <= median_lo + effect) | (lo > median_hi + effect)
        if not bool(np.all(small[may_flag & surely_flagged])):
            return False
    if not ceiling or bool(np.any(surely_flagged[may_flag])):
        return True
    # no flag: the verdict is "clean" if the test could have flagged an empty trigger, else "inconclusive"
    least = median_lo / mad_hi if mad_hi > 0 else math.inf
    most = median_hi / mad_lo if mad_lo > 0 else math.inf
    return least > threshold or most <= threshold


def _spread(lo: np.ndarray, hi: np.ndarray) -> tuple[float, float, float, float]:
    """The smallest and largest median and MAD of values anywhere in the ranges [lo, hi]."""
    median_lo, median_hi = float(np.median(lo)), float(np.median(hi))
    nearest = np.maximum.reduce([lo - median_hi, median_lo - hi, np.zeros_like(lo)])
    farthest = np.maximum(np.abs(lo - median_lo), np.abs(hi - median_hi))
    farthest = np.maximum.reduce([farthest, np.abs(lo - median_hi), np.abs(hi - median_lo)])
    return (
        median_lo,
        median_hi,
        CONSISTENCY * float(np.median(nearest)),
        CONSISTENCY * float(np.median(farthest)),
    )


def _surely_not(
    lo: np.ndarray, median_hi: float, mad_lo: float, threshold: float, effect: float
) -> np.ndarray:
    """Labels surely not flagged: even their smallest value lies above the median or within ``threshold``
    of the smallest MAD below it, or (with a finite ``effect``) farther than ``effect`` above it."""
    out = (lo >= median_hi) | ((median_hi - lo) <= threshold * mad_lo)
    return out | (lo > median_hi + effect) if math.isfinite(effect) else out


def _log_ranges(ranges: Mapping[int, tuple[float, float]]) -> tuple[list[int], np.ndarray, np.ndarray]:
    labels = sorted(k for k, (lo, hi) in ranges.items() if math.isfinite(lo) and math.isfinite(hi))
    lo = np.log(np.maximum([ranges[k][0] for k in labels], _LOG_FLOOR))
    hi = np.log(np.maximum([ranges[k][1] for k in labels], _LOG_FLOOR))
    return labels, lo, hi


def ranges_hold(
    ranges: Mapping[int, tuple[float, float]],
    screened: Collection[int],
    *,
    threshold: float,
    max_ratio: float,
    eligible: Collection[int] | None = None,
    spread: tuple[float, float, float, float] | None = None,
) -> bool:
    """Whether the effect statistic (the log test, a flag at most ``max_ratio`` of the median) flags the
    same labels for any norms inside ``ranges`` (label → (lower, upper); a label run to the end has
    lower == upper), and every ``screened`` label is surely not flagged. Labels whose range is not
    finite are left out, as the outlier test leaves out NaN norms; ``eligible`` as in
    :func:`verdict_holds`; ``spread`` bounds the median and MAD of the log norms (:func:`drawn_spread`)
    instead of the worst case over the ranges."""
    labels, lo, hi = _log_ranges(ranges)
    if len(labels) < 3 or any(k not in labels for k in screened):
        return False
    may_flag = np.array([eligible is None or k in eligible for k in labels], dtype=bool)
    stopped = np.array([k in screened for k in labels], dtype=bool)
    return _decided(
        lo,
        hi,
        may_flag,
        stopped,
        threshold,
        ceiling=False,
        effect=math.log(max_ratio),
        effect_clears=True,
        spread=spread,
    )


def clearly_unflagged(
    ranges: Mapping[int, tuple[float, float]],
    candidates: Collection[int],
    *,
    threshold: float,
    max_ratio: float,
) -> list[int]:
    """The labels of ``candidates`` that the effect statistic surely does not flag for any norms inside
    ``ranges`` (as :func:`ranges_hold`), whatever the other labels' flags."""
    labels, lo, hi = _log_ranges(ranges)
    if len(labels) < 3:
        return []
    _, median_hi, mad_lo, _ = _spread(lo, hi)
    clear = _surely_not(lo, median_hi, mad_lo, threshold, math.log(max_ratio))
    return [k for k, c in zip(labels, clear, strict=True) if c and k in candidates]


def verdict_holds(
    values: Mapping[int, float],
    screened: Collection[int],
    *,
    shrink: float,
    threshold: float,
    eligible: Collection[int] | None = None,
    below_median: bool = False,
    max_ratio: float = 1.0,
) -> bool:
    """Whether the labels in ``screened`` may keep their upper values (module docstring).

    ``values`` holds every label's current L1 norm (NaN/inf: left out, as the outlier test does);
    ``eligible`` the labels that may be flagged (default: all; a label whose trigger never reached the
    attack threshold counts in the median and MAD but cannot be flagged). Screened labels must lie above
    the median unless ``below_median`` (many labels, with a shrink measured on a sample: see
    :func:`calibration_sample`). With ``max_ratio`` below 1 the log test's flags must also keep their
    effect size (a flagged label's norm at most ``max_ratio`` of the median) for any values in the ranges.
    """
    if not screened:
        return True
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    if len(finite) < 3 or any(k not in finite for k in screened):
        return False
    labels = sorted(finite)
    hi = np.array([finite[k] for k in labels], dtype=np.float64)
    if not below_median and any(finite[k] <= float(np.median(hi)) for k in screened):
        return False  # only labels above the median stop early: small triggers are always optimised
    lo = np.array([finite[k] * (shrink if k in screened else 1.0) for k in labels], dtype=np.float64)
    may_flag = np.array([eligible is None or k in eligible for k in labels], dtype=bool)
    stopped = np.array([k in screened for k in labels], dtype=bool)
    if not _decided(lo, hi, may_flag, stopped, threshold, ceiling=True):
        return False
    log_lo, log_hi = np.log(np.maximum(lo, _LOG_FLOOR)), np.log(np.maximum(hi, _LOG_FLOOR))
    effect = math.log(max_ratio) if max_ratio < 1 else math.inf
    return _decided(log_lo, log_hi, may_flag, stopped, threshold, ceiling=False, effect=effect)


def choose_screened(
    values: Mapping[int, float],
    candidates: Sequence[int],
    *,
    shrink: float,
    threshold: float,
    eligible: Collection[int] | None = None,
    below_median: bool = False,
    max_ratio: float = 1.0,
) -> list[int]:
    """The labels of ``candidates`` to stop after the first pass: the largest norms first, each added
    while :func:`verdict_holds` still holds for the whole set."""

    def holds(screened: list[int]) -> bool:
        return verdict_holds(
            values,
            screened,
            shrink=shrink,
            threshold=threshold,
            eligible=eligible,
            below_median=below_median,
            max_ratio=max_ratio,
        )

    chosen: list[int] = []
    for k in sorted(candidates, key=lambda k: (-values[k], k)):
        if math.isfinite(values[k]) and holds([*chosen, k]):
            chosen.append(k)
    return sorted(chosen)


def labels_to_resume(
    values: Mapping[int, float],
    screened: Collection[int],
    *,
    shrink: float,
    threshold: float,
    eligible: Collection[int] | None = None,
    below_median: bool = False,
    max_ratio: float = 1.0,
) -> list[int]:
    """Screened labels that must run to the end after all (the rule no longer holds with the other
    labels' final norms): the smallest upper values first, until the rule holds for the rest."""
    keep = sorted(screened, key=lambda k: (-values[k], k))
    resume: list[int] = []
    while keep and not verdict_holds(
        values,
        keep,
        shrink=shrink,
        threshold=threshold,
        eligible=eligible,
        below_median=below_median,
        max_ratio=max_ratio,
    ):
        resume.append(keep.pop())
    return sorted(resume)


def protected(values: Mapping[int, float], labels: Collection[int], *, threshold: float) -> list[int]:
    """Labels of ``labels`` whose value lies more than ``threshold / 2`` MADs below the median of the
    finite ``values``: half-way to being flagged, so never screened with a measured shrink."""
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    if len(finite) < 3:
        return sorted(labels)
    half_way = mad_outlier_test(list(finite.values()), threshold=threshold / 2, names=list(finite)).flagged
    return sorted(k for k in labels if not math.isfinite(values[k]) or k in half_way)


def calibration_sample(values: Mapping[int, float], candidates: Collection[int], size: int) -> list[int]:
    """``size`` labels of ``candidates`` at evenly spaced ranks of their ``values`` (the middle of each of
    ``size`` equal slices): the labels run to the end to measure how much the others would still shrink."""
    ordered = sorted(candidates, key=lambda k: (values[k], k))
    if len(ordered) <= size:
        return sorted(ordered)
    return sorted({ordered[int((i + 0.5) * len(ordered) / size)] for i in range(size)})


def measured_shrink(first: Mapping[int, float], final: Mapping[int, float], *, margin: float) -> float:
    """The smallest ratio of a sample label's final norm to its first-pass norm, times ``margin``: the
    floor assumed for the labels screened beside the sample. 1e-3 when nothing could be measured."""
    ratios = [final[k] / first[k] for k in first if first[k] > 0 and math.isfinite(final[k] / first[k])]
    if not ratios:
        return 1e-3
    return float(min(1.0, max(1e-3, min(ratios) * margin)))


def drawn_spread(
    points: Mapping[int, float],
    bases: Mapping[int, float],
    ratios: Sequence[float],
    *,
    margin: float,
    draws: int,
    seed: int,
) -> tuple[float, float, float, float]:
    """The smallest and largest median and MAD of the log norms over ``draws`` random completions of a
    scan whose ``bases`` labels stopped early: each of them at its first-pass norm times a ratio drawn
    from ``ratios`` (the calibration sample's final/first-pass ratios) and a factor drawn log-uniformly
    from [``margin``, 1/``margin``], at most its first-pass norm; the ``points`` labels at their values.
    Non-finite values are left out. Seeded: the same inputs give the same bounds."""
    if draws < 1 or not ratios:
        raise SettingsError(
            f"drawn_spread needs at least one draw and one ratio, got {draws} and {len(ratios)}"
        )
    fixed = np.log(np.maximum([v for v in points.values() if math.isfinite(v)], _LOG_FLOOR))
    base = np.log(np.maximum([v for v in bases.values() if math.isfinite(v)], _LOG_FLOOR))
    log_ratios = np.log(np.maximum(np.asarray(ratios, dtype=np.float64), _LOG_FLOOR))
    rng = np.random.default_rng(seed)
    shift = rng.choice(log_ratios, size=(draws, base.size)) + rng.uniform(
        math.log(margin), -math.log(margin), size=(draws, base.size)
    )
    values = np.concatenate([np.broadcast_to(fixed, (draws, fixed.size)), base + np.minimum(shift, 0.0)], 1)
    medians = np.median(values, axis=1)
    mads = CONSISTENCY * np.median(np.abs(values - medians[:, None]), axis=1)
    return float(medians.min()), float(medians.max()), float(mads.min()), float(mads.max())
