"""The MAD outlier test of Neural Cleanse (``mad_outlier_detection.py`` of the original code)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import SettingsError
from .statistics import STATISTICS, Statistic, get_statistic

__all__ = ["OutlierResult", "CONSISTENCY", "STATISTICS", "Statistic", "mad_outlier_test"]

#: scales the median absolute deviation to the standard deviation of a normal distribution
CONSISTENCY = 1.4826


@dataclass(frozen=True)
class OutlierResult:
    """Anomaly index of every label and the flagged ones.

    ``anomaly_index[i]`` is ``|s_i − median| / MAD`` of the statistic ``s`` (the L1 norm, its log, or
    the log of its ratio to the label's reference norm),
    ``inf`` where MAD is 0 and the value differs from the median, ``nan`` where the label was left out.
    A label is flagged when its norm is **below** the median and its index is **strictly** above
    ``threshold``. ``median`` and ``mad`` are in the statistic's units.

    ``below_median[i]`` says whether label ``i`` took part and lies below the median (only those can be
    flagged). ``ceiling`` is the index an empty trigger (L1 = 0) would get against this median and MAD. With the
    L1 statistic it is ``median / MAD``: when the labels' natural norms spread widely it falls below the
    threshold, and then **no** label can be flagged however small its trigger — a clean verdict would
    mean nothing (``powerless``). With the log and relative statistics it is infinite.
    """

    anomaly_index: list[float]
    flagged: list[int]
    median: float
    mad: float
    threshold: float
    used: list[bool]
    notes: list[str] = field(default_factory=list)
    statistic: Statistic = "l1"
    ceiling: float = math.inf
    below_median: list[bool] = field(default_factory=list)

    @property
    def largest_below_median(self) -> float:
        """The largest anomaly index among the labels below the median (0 if there are none)."""
        return max(
            (i for i, low in zip(self.anomaly_index, self.below_median, strict=True) if low), default=0.0
        )

    @property
    def conclusive(self) -> bool:
        return sum(self.used) >= 3 and not self.powerless

    @property
    def powerless(self) -> bool:
        """No label is flagged and none could be: even an empty trigger stays under the threshold."""
        return not self.flagged and self.ceiling <= self.threshold


def mad_outlier_test(
    norms: Sequence[float],
    *,
    threshold: float = 2.0,
    eligible: Sequence[bool] | None = None,
    names: Sequence[int] | None = None,
    statistic: Statistic = "l1",
    reference: Sequence[float] | None = None,
    mad_floor: float = 0.0,
    max_ratio: float | None = None,
    compact: Sequence[bool] | None = None,
    compact_ratio: float | None = None,
    left_out: Sequence[bool] | None = None,
) -> OutlierResult:
    """Run the outlier test on L1 norms.

    Args:
        norms: one L1 norm per label; NaN/inf norms are left out of the statistics and never flagged.
        threshold: the anomaly index above which a small-norm label is flagged (paper: 2).
        eligible: labels that may be flagged (e.g. only those whose trigger reached the attack
            threshold); the others still count towards the median and MAD.
        names: the label numbers, for the notes (default ``0..n-1``).
        statistic: what the test runs on, a name in :data:`~.statistics.STATISTICS`: ``"l1"``, the
            paper's test on the norms, or ``"log"``: the same test on their logarithms, which measures
            how many *times* smaller a label's trigger is than the others' (see ``docs/detection.md``;
            not in the paper), ``"effect"``: the log test whose flagged labels must also be at most
            ``max_ratio`` times the median norm (the default verdict of a scan), or ``"relative"``: the
            same test on ``log(L1 / reference)``, each label's norm measured against what the same label
            costs in trusted models of the task, which cancels the task's natural shortcuts (not in the
            paper).
        reference: with ``statistic="relative"``, one reference L1 norm per label (NaN: left out).
        mad_floor: the anomaly index divides by ``max(MAD, mad_floor)`` (in the statistic's units): a
            reference that matches the model closely makes the MAD tiny, and then a label a few percent
            cheaper than its reference would count as an outlier. ``mad`` reports the MAD itself.
        max_ratio: with the statistics on logarithms, a flagged label's norm (or norm ratio) must also
            be at most this fraction of the median's (an effect size on top of the index; 1: none).
            Default: the statistic's own (``effect``: :data:`~.statistics.EFFECT_RATIO`; the others: 1).
        compact: one flag per label: its reversed trigger is compact (:mod:`~.shape`). Such a label may
            be flagged up to ``compact_ratio`` of the median instead of ``max_ratio``.
        compact_ratio: default: the statistic's own (``effect``: :data:`~.statistics.COMPACT_RATIO`;
            the others: none, ``max_ratio`` for every label).
        left_out: one flag per label: left out of the statistics and never flagged, like a NaN norm,
            for a reason the caller gives in its own notes (a scan's unreachable labels).
    """
    if not (math.isfinite(threshold) and threshold > 0):
        raise SettingsError(f"threshold must be a positive, finite anomaly index, got {threshold!r}")
    stat = get_statistic(statistic)
    max_ratio = stat.max_ratio if max_ratio is None else max_ratio
    compact_ratio = (stat.compact_ratio or max_ratio) if compact_ratio is None else compact_ratio
    if not (math.isfinite(mad_floor) and mad_floor >= 0):
        raise SettingsError(f"mad_floor must be a finite number of at least 0, got {mad_floor!r}")
    if not (0 < max_ratio <= 1 and 0 < compact_ratio <= 1):
        raise SettingsError(
            f"max_ratio and compact_ratio must be in (0, 1], got {max_ratio!r}, {compact_ratio!r}"
        )
    stat.check(reference=reference is not None, unused_reference=False)
    values = np.asarray(norms, dtype=np.float64)
    ref = None if reference is None else np.asarray(reference, dtype=np.float64)
    if ref is not None and ref.shape != values.shape:
        raise SettingsError(f"{len(ref)} reference norms for {len(values)} labels")
    if compact is not None and len(compact) != len(values):
        raise SettingsError(f"{len(compact)} compactness flags for {len(values)} labels")
    if left_out is not None and len(left_out) != len(values):
        raise SettingsError(f"{len(left_out)} left-out flags for {len(values)} labels")
    with np.errstate(invalid="ignore", divide="ignore"):
        values = stat.values(values, ref)
    labels = list(names) if names is not None else list(range(len(values)))
    can_flag = np.ones(len(values), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    finite = np.isfinite(values)
    kept = np.ones(len(values), dtype=bool) if left_out is None else ~np.asarray(left_out, dtype=bool)
    notes: list[str] = []
    if (~finite & kept).any():
        bad = [labels[i] for i in np.flatnonzero(~finite & kept)]
        what = "no finite L1 norm or reference norm" if reference is not None else "no finite L1 norm"
        notes.append(f"labels {bad} have {what} (NaN/inf); left out of the test")
    used = finite & kept
    index = np.full(len(values), math.nan)
    if used.sum() < 3:
        notes.append(f"only {int(used.sum())} finite norms: the outlier test needs at least 3 labels")
        return OutlierResult(
            index.tolist(),
            [],
            math.nan,
            math.nan,
            threshold,
            used.tolist(),
            notes,
            statistic,
            math.nan,
            [False] * len(values),
        )
    median = float(np.median(values[used]))
    mad = CONSISTENCY * float(np.median(np.abs(values[used] - median)))
    dev = np.abs(values - median)
    scale = max(mad, mad_floor)
    if scale > mad:
        notes.append(f"the MAD ({mad:.3f}) is below its floor {mad_floor:g}: anomaly indices use the floor")
    if scale > 0:
        index[used] = dev[used] / scale
    else:
        index[used] = np.where(dev[used] > 0, math.inf, 0.0)
        notes.append(
            "MAD is 0 (most labels have the same norm): any label that differs gets an infinite index"
        )
    flagged = [labels[i] for i in np.flatnonzero(used & can_flag & (values < median)) if index[i] > threshold]
    if max_ratio < 1 and stat.log_units:
        wider = math.log(max(max_ratio, compact_ratio))

        def line(i: int) -> float:  # how far below the median label i must lie: its effect size
            return wider if compact is not None and compact[i] else math.log(max_ratio)

        small = [k for k in flagged if values[labels.index(k)] <= median + line(labels.index(k))]
        if small != flagged:
            also = f" ({compact_ratio:g} for a compact trigger)" if compact_ratio > max_ratio else ""
            notes.append(
                f"labels {[k for k in flagged if k not in small]} are outliers but more than {max_ratio:g} "
                f"times the median{also}: not flagged"
            )
        wide = [k for k in small if values[labels.index(k)] > median + math.log(max_ratio)]
        if wide:
            notes.append(
                f"labels {wide} are more than {max_ratio:g} but at most {compact_ratio:g} times the median, "
                "with a compact trigger (most of its mask in one small window, like a planted patch): flagged"
            )
        flagged = small
    skipped = [
        labels[i] for i in np.flatnonzero(used & ~can_flag & (values < median)) if index[i] > threshold
    ]
    if skipped:
        notes.append(
            f"labels {skipped} have small, outlying norms but their trigger never reached the attack threshold; not flagged"
        )
    ceiling = stat.ceiling(median, mad)
    if not flagged and ceiling <= threshold:
        notes.append(stat.no_power(median, mad, ceiling, threshold))
    below = (used & (values < median)).tolist()
    return OutlierResult(
        index.tolist(), flagged, median, mad, threshold, used.tolist(), notes, statistic, ceiling, below
    )
