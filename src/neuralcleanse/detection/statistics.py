"""The outlier test's statistics: what the MAD test measures distances on, one object each.

The MAD test (:func:`~neuralcleanse.detection.outlier.mad_outlier_test`) is the same for every statistic.
What differs is the quantity it runs on (the L1 norms, their logarithms, or each norm over the same
label's norm in a :class:`~neuralcleanse.detection.reference.Reference`), whether that needs a reference,
whether the test has a ceiling, and the sentences that describe a verdict. Each statistic is one object
here and :data:`STATISTICS` holds them by name: the scan and the report validate through it, and the
report's summary, the command line, the HTML page and its figure only format what it gives them.

A new statistic is a subclass of :class:`OutlierStatistic` here, its entry in :data:`STATISTICS` and its
name in :data:`Statistic`.

Examples::

    >>> get_statistic("log").test_name
    'the test on log L1 norms'
    >>> get_statistic("l2")
    Traceback (most recent call last):
    neuralcleanse.errors.SettingsError: unknown outlier statistic 'l2'; use l1, log, effect, relative
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from statistics import median as _median
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from ..errors import SettingsError
from .shape import COMPACT_SHARE, COMPACT_SIDE, compact_labels

if TYPE_CHECKING:
    import torch

    from .reference import Reference
    from .report import DetectionReport, LabelResult

__all__ = ["STATISTICS", "OutlierStatistic", "Statistic", "get_statistic"]

#: the names of the statistics (:data:`STATISTICS` holds one object for each)
Statistic = Literal["l1", "log", "effect", "relative"]

#: the statistic of a scan without a reference (``docs/fidelity.md`` says why)
DEFAULT_STATISTIC: Statistic = "effect"

#: the effect statistic's largest ratio of a flagged label's L1 norm to the median (``docs/fidelity.md``)
EFFECT_RATIO = 0.3

#: the effect statistic's largest ratio for a label whose reversed trigger is compact (:mod:`.shape`):
#: on the fidelity benchmark planted triggers recovered at 0.3-0.45 of the median were mostly compact and
#: natural shortcuts at those ratios mostly spread out (``docs/fidelity.md``, "Compact triggers")
COMPACT_RATIO = 0.45

#: on logarithms, norms below this (a trigger of a millionth of a pixel) count as this
LOG_FLOOR = 1e-6

#: on the fidelity benchmark (``docs/fidelity.md``, "How strong is the evidence"; 156 models, three seeds,
#: three architectures and the sign set), as fractions of the scan's median L1 norm: the cheapest label
#: that was not planted (a Fashion-MNIST bag: 0.15 there, 0.134 on the BatchNorm CNN's BadNets model of
#: seed 1 in the 78 models of the twenty-first session), and the dearest planted trigger of at most 10% of
#: the image (a Trojan watermark on the residual network, whose trigger the scan did not recover)
NATURAL_FLOOR = 0.13
PLANTED_CEILING = 0.80


def _fixed(x: float, digits: int) -> str:
    """A number for a page: fixed-point, or an en dash where it is NaN or infinite."""
    return f"{x:.{digits}f}" if math.isfinite(x) else "–"


class OutlierStatistic(ABC):
    """One statistic of the outlier test: its name, its checks, what the test runs on, and its sentences.

    The defaults hold for any statistic that compares each label with the median of the others; a
    statistic on logarithms sets ``log_units``, one measured against a reference sets
    ``needs_reference`` and overrides what differs.

    Attributes:
        name: what the API, the command line (``--statistic``) and ``report.json`` call it.
        title: how a sentence names it ("the L1 and log statistics").
        description: one line for people.
        test_name: its test in a sentence ("the test on log L1 norms").
        mad_name: how the command line names the MAD in the test's units.
        paper: the paper's test (its verdict is shown beside any other statistic's).
        log_units: the test runs on logarithms: an index counts factors below the median, there is no
            ceiling, ``max_ratio`` applies, and figures draw the median and MAD band as ratios.
        needs_reference: each label's norm is measured against its norm in a reference.
        screening_safe: a screened scan (:mod:`~neuralcleanse.detection.schedule`, which decides on the L1
            norms and their logarithms) reaches the same verdict as a full one.
        cheaper_than: ends "the label can be reached with far less change to the input than ...".
        max_ratio: a flagged label's norm must also be at most this fraction of the median's (an effect
            size on top of the anomaly index, on logarithms only; 1: none).
        compact_ratio: the same for a label whose reversed trigger is compact (:mod:`.shape`); None:
            ``max_ratio`` for every label.
    """

    __slots__ = ()

    name: ClassVar[Statistic]
    title: ClassVar[str]
    description: ClassVar[str]
    test_name: ClassVar[str]
    mad_name: ClassVar[str] = "MAD"
    paper: ClassVar[bool] = False
    log_units: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    screening_safe: ClassVar[bool] = True
    cheaper_than: ClassVar[str] = "any normal label needs"
    max_ratio: ClassVar[float] = 1.0
    compact_ratio: ClassVar[float | None] = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # ---- validation ---------------------------------------------------------------------------------
    def check(self, *, reference: bool, unused_reference: bool = True) -> None:
        """Refuse to run without a reference this statistic needs (and, unless ``unused_reference``, with
        reference norms it would not use)."""
        if self.needs_reference and not reference:
            raise self._no_reference()
        if reference and not self.needs_reference and not unused_reference:
            users = " or ".join(s.name for s in STATISTICS.values() if s.needs_reference)
            raise SettingsError(f"reference norms are only used by the {users} statistic, not {self.name!r}")

    def _no_reference(self) -> SettingsError:
        return SettingsError(f"the {self.name} statistic needs a reference (scans of trusted models)")

    # ---- the test -----------------------------------------------------------------------------------
    def values(self, norms: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
        """What the MAD test runs on, from the L1 norms (and the reference norms, label for label)."""
        return np.log(np.maximum(norms, LOG_FLOOR)) if self.log_units else norms

    def ceiling(self, median: float, mad: float) -> float:
        """The anomaly index an empty trigger would get: ``median / mad`` on L1 norms (below the
        threshold the test has no power); on logarithms there is none (``inf``)."""
        return median / mad if not self.log_units and mad > 0 else math.inf

    def test_inputs(
        self,
        reference: Reference | None,
        labels: Sequence[int],
        *,
        masks: Mapping[int, np.ndarray | torch.Tensor] | None = None,
        screened: Collection[int] = (),
    ) -> dict[str, Any]:
        """:func:`~neuralcleanse.detection.outlier.mad_outlier_test`'s keyword arguments besides the
        norms: the reference norms and how the test runs against them, for a statistic that uses them;
        and, for one with a ``compact_ratio``, which labels' reversed triggers are compact (``masks``:
        label → mask; the ``screened`` labels' masks are their first pass's and are not judged)."""
        if self.compact_ratio is None or masks is None:
            return {}
        return {"compact": compact_labels(masks, labels, skip=screened)}

    def index_scale(self, mad: float, reference: Reference | None) -> float:
        """What the anomaly indices divide by: the MAD (or its floor, against some references)."""
        return mad

    def median_l1(self, median: float, norms: Sequence[float]) -> float:
        """The median L1 norm of the labels in the test, from the test's median in its units."""
        return math.exp(median) if self.log_units else median

    def companion(self, *, reference: bool) -> OutlierStatistic:
        """The statistic whose test is shown beside this one's verdict: the paper's."""
        return PAPER

    # ---- sentences ----------------------------------------------------------------------------------
    def spread(self, mad: float) -> str:
        """The MAD in the test's units, for the command line."""
        return f"{self.mad_name} {mad:.{3 if self.log_units else 2}f}"

    def no_power(self, median: float, mad: float, ceiling: float, threshold: float) -> str:
        """The note of a test whose ceiling is at or below the threshold."""
        return (
            f"the test has no power here: the labels' L1 norms spread so widely (median {median:.1f}, "
            f"MAD {mad:.1f}) that even an empty trigger would get index {ceiling:.2f} <= {threshold:g}; "
            "the verdict is inconclusive, not clean (the log statistic has no such ceiling)"
        )

    def notes(self, reference: Reference | None) -> list[str]:
        """What a scan's report notes about how this statistic ran."""
        return []

    def versus(self, report: DetectionReport, row: LabelResult) -> str:
        """A flagged label's norm against what it is compared with, for the summary."""
        return f"L1 {row.l1_norm:.1f} vs median {report.median_l1:.1f}"

    def against(self, report: DetectionReport, row: LabelResult) -> str:
        """What a flagged label's norm is compared with, for "its smallest trigger has L1 x against ..."."""
        return f"a median of {report.median_l1:.1f}"

    def clean_reason(self, report: DetectionReport) -> str:
        """Why the verdict is clean, with the numbers, for the summary."""
        worst = report.outlier_test().largest_below_median
        return (
            f"no label below the median has an anomaly index above {report.threshold:g} (largest {worst:.2f})"
        )

    def strength(self, report: DetectionReport) -> str | None:
        """How strong the evidence behind a conclusive verdict is, measured against the fidelity
        benchmark; None when this statistic does not say."""
        return None

    def weak(self, report: DetectionReport) -> bool:
        """A ``backdoored`` verdict whose evidence the fidelity benchmark calls weak: the verdicts a scan
        checks on a distilled student by default (``transfer_check="auto"``). False when this statistic
        does not say."""
        return False

    @abstractmethod
    def explain(self, report: DetectionReport) -> str:
        """How the test ran, with its median and MAD, in a few sentences for the HTML page."""

    def plotted(self, report: DetectionReport) -> tuple[list[float], str]:
        """What the figure draws for each label, and its name."""
        return [r.l1_norm for r in report.labels], "L1 norm"


class PaperStatistic(OutlierStatistic):
    """The paper's test on the L1 norms themselves (Wang et al., S&P 2019)."""

    __slots__ = ()
    name = "l1"
    title = "L1"
    description = "the MAD test on the L1 norms of the reversed triggers (the paper)"
    test_name = "the paper's test (MAD of the L1 norms)"
    paper = True

    def companion(self, *, reference: bool) -> OutlierStatistic:
        """A second opinion: the relative test when a reference is at hand, else the log test."""
        return STATISTICS["relative" if reference else "log"]

    def explain(self, report: DetectionReport) -> str:
        return (
            f"Median L1 {_fixed(report.median, 1)}, MAD {_fixed(report.mad, 1)} (1.4826 × median absolute "
            f"deviation); even an empty trigger could reach index {_fixed(report.ceiling, 2)} at most."
        )


class LogStatistic(OutlierStatistic):
    """The same test on the norms' logarithms: how many *times* smaller a label's trigger is than the
    others' (not in the paper; see ``docs/detection.md``)."""

    __slots__ = ()
    name: ClassVar[Statistic] = "log"
    title = "log"
    description = "the MAD test on the logarithms of the L1 norms: how many times smaller (not in the paper)"
    test_name = "the test on log L1 norms"
    mad_name = "MAD of log norms"
    log_units = True

    def explain(self, report: DetectionReport) -> str:
        return (
            f"Outlier test on log L1 norms: median L1 {_fixed(report.median_l1, 1)}, MAD of the logs "
            f"{_fixed(report.mad, 2)} (1.4826 × median absolute deviation; a label's index counts how many "
            "such factors its norm lies below the median)."
        )


class EffectStatistic(LogStatistic):
    """The log test with an effect size: a flagged label's trigger must also be at most
    :data:`EFFECT_RATIO` times the median norm — an outlier that is only slightly cheaper than a
    typical label is a natural shortcut more often than a backdoor — or :data:`COMPACT_RATIO` times it
    when the reversed trigger is compact (:mod:`.shape`: a patch, as planted triggers are recovered, not
    an outline spread over an object, as natural shortcuts are). Not in the paper; chosen on the
    fidelity benchmark, ``docs/fidelity.md``."""

    __slots__ = ()
    name = "effect"
    title = "effect-size"
    description = (
        f"the log test, and a flagged trigger at most {EFFECT_RATIO:g} times the median L1 norm "
        f"({COMPACT_RATIO:g} if compact; not in the paper)"
    )
    test_name = f"the log test with an effect size ({EFFECT_RATIO:g} of the median, {COMPACT_RATIO:g} for a compact trigger)"
    max_ratio = EFFECT_RATIO  # mad_outlier_test applies a statistic's own max_ratio
    compact_ratio = COMPACT_RATIO  # ... and its compact_ratio to labels with a compact trigger

    def explain(self, report: DetectionReport) -> str:
        return super().explain(report) + (
            f" A flagged label's norm must also be at most {self.max_ratio:g} times the median L1 norm, "
            f"i.e. under {self.max_ratio * report.median_l1:.1f}, or {self.compact_ratio:g} times it "
            f"(under {self.compact_ratio * report.median_l1:.1f}) when its trigger is compact: at least "
            f"{COMPACT_SHARE:.0%} of the mask in one square of {COMPACT_SIDE:.0%} of the image's side."
        )

    def versus(self, report: DetectionReport, row: LabelResult) -> str:
        ratio = row.l1_norm / report.median_l1
        shape = ", flagged for its compact trigger" if row.flagged and ratio > self.max_ratio else ""
        return f"{super().versus(report, row)} ({ratio:.2f} of it{shape})"

    def clean_reason(self, report: DetectionReport) -> str:
        row = _cheapest(report)
        if row is None:
            return super().clean_reason(report)
        return (
            f"no label is both more than {report.threshold:g} MADs of log norms below the median and at "
            f"most {self.max_ratio:g} of it ({self.compact_ratio:g} with a compact trigger); the cheapest, label {row.label} ({row.name}), needs "
            f"{row.l1_norm / report.median_l1:.2f} of the median L1 {report.median_l1:.1f} (index "
            f"{row.anomaly_index:.2f})"
        )

    def weak(self, report: DetectionReport) -> bool:
        return report.verdict == "backdoored" and (
            max(report.label(k).l1_norm for k in report.flagged) >= NATURAL_FLOOR * report.median_l1
        )

    def strength(self, report: DetectionReport) -> str | None:
        if report.verdict == "backdoored":
            if not self.weak(report):
                return (
                    f"strong evidence: on the fidelity benchmark no label that was not planted came below "
                    f"{NATURAL_FLOOR:g} of its median"
                )
            check = (
                "; scan with --transfer-check (transfer_check=True) to test whether a model trained only on "
                "clean images also follows its trigger, as natural features' triggers are followed"
                if report.transfer is None
                else ""
            )
            return (
                f"weak evidence: on the fidelity benchmark labels that were not planted came as cheap as "
                f"{NATURAL_FLOOR:g} of their median; validate the trigger before acting on it{check}"
            )
        row = _cheapest(report)
        if report.verdict != "clean" or row is None:
            return None
        if row.l1_norm / report.median_l1 > PLANTED_CEILING:
            return (
                f"strong evidence: on the fidelity benchmark every planted trigger of at most 10% of the "
                f"image came to at most {PLANTED_CEILING:g} of its median"
            )
        again = (
            ", or scan again with more random starts (--starts 3 / starts=3), which found planted triggers "
            "a first start had missed"
            if int(report.settings.get("starts", 1) or 1) == 1
            else ""
        )
        return (
            f"weak evidence: on the fidelity benchmark planted triggers the scan did not recover (Trojan "
            "watermarks, BadNets on a residual network) came to as much "
            f"as {PLANTED_CEILING:g} of their median, so a label this cheap may still hide one; look at "
            f"label {row.label}'s trigger{again}"
        )


def _cheapest(report: DetectionReport) -> LabelResult | None:
    """The label with the smallest finite norm among those that reached the attack threshold."""
    rows = [r for r in report.labels if r.reached and math.isfinite(r.l1_norm)]
    return min(rows, key=lambda r: (r.l1_norm, r.label)) if rows else None


class RelativeStatistic(OutlierStatistic):
    """The test on ``log(L1 / reference L1)``: each label's norm against what the same label costs in
    trusted models of the task (or a student distilled from the model), which cancels the task's natural
    shortcuts (not in the paper; see :mod:`~neuralcleanse.detection.reference`). A flagged label is far
    cheaper than in the reference, so the relative statistic is not safe to screen by L1."""

    __slots__ = ()
    name = "relative"
    title = "relative"
    description = "the MAD test on the logarithms of each L1 norm over the same label's reference norm"
    test_name = "the test relative to the reference"
    mad_name = "MAD of log norm/reference ratios"
    log_units = True
    needs_reference = True
    screening_safe = False
    cheaper_than = "the same label needs in the reference"

    def values(self, norms: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
        if reference is None:
            raise self._no_reference()
        return super().values(norms, None) - np.log(np.where(reference > 0, reference, np.nan))

    def test_inputs(
        self,
        reference: Reference | None,
        labels: Sequence[int],
        *,
        masks: Mapping[int, np.ndarray | torch.Tensor] | None = None,
        screened: Collection[int] = (),
    ) -> dict[str, Any]:
        shared = super().test_inputs(reference, labels, masks=masks, screened=screened)
        if reference is None:
            return shared
        return {**shared, "reference": reference.norms_for(labels), **reference.test_options()}

    def index_scale(self, mad: float, reference: Reference | None) -> float:
        return mad if reference is None else max(mad, reference.mad_floor)

    def median_l1(self, median: float, norms: Sequence[float]) -> float:
        finite = [n for n in norms if math.isfinite(n)]
        return _median(finite) if finite else math.nan

    def notes(self, reference: Reference | None) -> list[str]:
        if reference is None:
            return []
        return [
            f"relative statistic: each label's L1 norm is divided by its norm in {reference.describe()} "
            "before the outlier test"
        ]

    def versus(self, report: DetectionReport, row: LabelResult) -> str:
        ref = report.reference
        if ref is None:
            return super().versus(report, row)
        return f"L1 {row.l1_norm:.1f} vs {ref.l1_norms.get(row.label, math.nan):.1f} in {ref.where()}"

    def against(self, report: DetectionReport, row: LabelResult) -> str:
        ref = report.reference
        if ref is None:
            return super().against(report, row)
        return f"{ref.l1_norms.get(row.label, math.nan):.1f} for the same label in {ref.describe()}"

    def explain(self, report: DetectionReport) -> str:
        if report.reference is None:
            return PAPER.explain(report)
        return (
            f"Outlier test relative to {report.reference.describe()}: each label's L1 norm is divided by "
            "the same label's norm there, and the test runs on the logs of those ratios (median ratio "
            f"{_fixed(math.exp(report.median), 2)}, MAD of the log ratios {_fixed(report.mad, 2)}). Labels "
            "that are easy in every model of the task cancel out."
        )

    def plotted(self, report: DetectionReport) -> tuple[list[float], str]:
        if report.reference is None:
            return super().plotted(report)
        refs = report.reference.norms_for([r.label for r in report.labels])
        ratios = [
            r.l1_norm / ref if ref > 0 else math.nan for r, ref in zip(report.labels, refs, strict=True)
        ]
        return ratios, "L1 / reference L1"


#: the paper's statistic
PAPER = PaperStatistic()

#: every statistic by name, in the order the command line lists them
STATISTICS: dict[str, OutlierStatistic] = {
    s.name: s for s in (PAPER, LogStatistic(), EffectStatistic(), RelativeStatistic())
}


def get_statistic(name: str) -> OutlierStatistic:
    """The statistic called ``name``; a one-line :class:`~neuralcleanse.errors.SettingsError` for an
    unknown name."""
    try:
        return STATISTICS[name]
    except (KeyError, TypeError):
        raise SettingsError(f"unknown outlier statistic {name!r}; use {', '.join(STATISTICS)}") from None


def screening_note() -> str:
    """The note of a scan whose statistic turned screening off."""
    safe = [s.title for s in STATISTICS.values() if s.screening_safe]
    names = " and ".join([", ".join(safe[:-1]), safe[-1]] if len(safe) > 1 else safe)
    return f"screening is off: it is only safe for the {names} statistics"
