"""Reference norms: what each label's smallest trigger costs in trusted models of the same task.

The paper's outlier test compares a label's trigger with the *other labels* of the same model. On tasks
with natural shortcuts (on Fashion-MNIST a few strokes turn almost anything into a "bag" in every
model) a clean model's easy labels look like backdoors. A reference compares each label with *itself*
in models the user trusts — a model they trained on the public data, the previous release, a vendor's
base model — so that what is easy in every model of the task cancels out and what was made easy in
this model stands out (``statistic="relative"``: the MAD test on ``log(L1 / reference L1)``).

A reference is built from the scan reports of those models (:meth:`Reference.from_reports`); with
several, each label's reference norm is the geometric median of theirs (the exponential of the median
log norm), so one unusual reference model moves it less.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import DataError, SettingsError
from .natural import NATURAL

if TYPE_CHECKING:
    from .report import DetectionReport

__all__ = ["Reference", "SELF_MADE"]

#: the ``model`` of a self-made reference's source
SELF_MADE = "distilled student"
#: the relative test's MAD floor (see :attr:`Reference.mad_floor`)
REFERENCE_MAD_FLOOR = 0.1
#: ...and the largest ratio to the median ratio a flagged label may have (``docs/fidelity.md``: chosen on
#: self-made references, then measured with trusted ones, where it cut the false alarms from 45% to 10%)
REFERENCE_MAX_RATIO = 0.5

#: settings that change the speed or the random draw of a scan but not what its norms mean (screening
#: included: a reference scan with screened labels is refused, and without any it equals a full scan)
_SPEED_ONLY = frozenset(
    {
        "seed",
        "parallel_labels",
        "max_batch",
        "mode",
        "channels_last",
        "screening",
        "screen_steps",
        "screen_steps_many",
        "screen_shrink",
    }
)


#: how a scan draws the images it optimises on from the images given (``DetectionReport.data``): a
#: sample size (None: every image), a source label, only the correctly classified ones
DRAW = ("samples", "source", "correct_only")


@dataclass(frozen=True)
class Reference:
    """Per-label reference L1 norms and where they came from.

    Attributes:
        l1_norms: label → reference L1 norm (the geometric median of the finite norms of the reference
            scans; a label without any finite norm, or a negative norm, is refused).
        sources: one entry per reference scan: its model fingerprint, verdict and, if known, path.
    """

    l1_norms: dict[int, float]
    sources: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_reports(
        cls, reports: Sequence[DetectionReport], *, paths: Sequence[str] | None = None
    ) -> Reference:
        """Combine the scans of trusted models (all over the same labels) into one reference.

        A reference scan that the paper's test flags is still used — it is the user's statement that
        the model is trusted — but its verdict is recorded in ``sources`` for the report to show.
        """
        if not reports:
            raise SettingsError("a reference needs at least one scan report")
        if paths is not None and len(paths) != len(reports):
            raise SettingsError(f"{len(paths)} paths for {len(reports)} reference reports")
        labels = sorted(r.label for r in reports[0].labels)
        for i, rep in enumerate(reports):
            where = paths[i] if paths is not None else f"reference {i}"
            if sorted(r.label for r in rep.labels) != labels:
                raise SettingsError(f"{where}: its labels differ from the first reference scan's")
            if rep.screened:
                raise SettingsError(
                    f"{where}: labels {sorted(rep.screened)} were screened (their norms are only upper "
                    "values); scan the trusted model without screening (scan --no-screening, or screening=False)"
                )
            for r in rep.labels:
                if r.l1_norm < 0:
                    raise DataError(
                        f"{where}: label {r.label} has L1 norm {r.l1_norm:g}; an L1 norm cannot be negative "
                        "(a corrupt or edited scan report)"
                    )
        classes = {int(n) for rep in reports if (n := rep.model.get("num_classes")) is not None}
        if len(classes) > 1:
            raise DataError(f"reference scans of models with different numbers of outputs {sorted(classes)}")
        norms: dict[int, float] = {}
        for k in labels:
            logs = [math.log(max(n, 1e-6)) for rep in reports if math.isfinite(n := rep.label(k).l1_norm)]
            if not logs:
                where = ", ".join(paths) if paths is not None else "the reference scans"
                raise DataError(
                    f"{where}: label {k} has no finite L1 norm (NaN/inf) in any reference scan; "
                    "rescan the trusted model"
                )
            norms[k] = math.exp(statistics.median(logs))
        sources = [
            {
                "model": rep.model.get("fingerprint"),
                "verdict": rep.verdict,
                "flagged": rep.flagged,
                "settings": {k: v for k, v in rep.settings.items() if k != "seed"},
                **({"num_classes": rep.model["num_classes"]} if "num_classes" in rep.model else {}),
                **({"images": rep.data["input_fingerprint"]} if "input_fingerprint" in rep.data else {}),
                **({"draw": {k: rep.data.get(k) for k in DRAW}} if "samples" in rep.data else {}),
                **({"path": paths[i]} if paths is not None else {}),
            }
            for i, rep in enumerate(reports)
        ]
        return cls(norms, sources)

    @property
    def natural(self) -> bool:
        """Whether the reference is the scanned model's own triggers with each label's mean image as the
        pattern (:mod:`~neuralcleanse.detection.natural`)."""
        return any(src.get("model") == NATURAL for src in self.sources)

    @property
    def trusted(self) -> bool:
        """Whether the reference is scans of models the user trusts (not made from the scanned model)."""
        return not (self.self_made or self.natural)

    def where(self) -> str:
        """Where a label's reference norm comes from, for short sentences."""
        if self.self_made:
            return "the distilled student"
        if self.natural:
            return "its mean image's trigger"
        return "the reference"

    @property
    def self_made(self) -> bool:
        """Whether the reference is a student distilled from the scanned model itself
        (:mod:`~neuralcleanse.detection.distill`) rather than scans of trusted models."""
        return any(src.get("model") == SELF_MADE for src in self.sources)

    def test_options(self) -> dict[str, float]:
        """How the relative test against this reference is run (:func:`~.outlier.mad_outlier_test`'s
        ``mad_floor`` and ``max_ratio``), against trusted models and a self-made student alike: the MAD of
        the log ratios is floored at 0.1 (a student imitates its model so closely that the MAD can be
        tiny, 0.06-0.12 on the MNIST sample's models, and a label 10% cheaper than in the student would be
        flagged), and a flagged label must also be at most half as expensive, relative to the median
        ratio, as in the reference (models of a task learn its natural shortcuts to different degrees: on
        Fashion-MNIST the "bag" costs 0.62-0.65 of the student's norm, and across the fidelity
        benchmark's clean models of other seeds a natural label is often 0.5-0.8 of its reference). On
        that benchmark the relative test without these false-alarmed on 45% of the clean models with one
        reference; with them on 10%. See ``docs/fidelity.md``."""
        return {"mad_floor": REFERENCE_MAD_FLOOR, "max_ratio": REFERENCE_MAX_RATIO}

    @property
    def mad_floor(self) -> float:
        return self.test_options().get("mad_floor", 0.0)

    def describe(self) -> str:
        """What the reference models are, for sentences: "the trusted reference models" or the student."""
        if self.self_made:
            return "a student distilled from this model on the clean images"
        if self.natural:
            return "this model's triggers with each label's pattern fixed to its mean clean image"
        n = len(self.sources)
        return f"{n} reference scan{'s' if n != 1 else ''} of trusted models"

    def norms_for(self, labels: Sequence[int]) -> list[float]:
        """The reference norm of each label, in order; a label the reference never scanned is an error."""
        missing = [k for k in labels if k not in self.l1_norms]
        if missing:
            raise SettingsError(f"the reference scans have no label {missing[0]}: scan the same labels")
        return [self.l1_norms[k] for k in labels]

    def check_task(self, *, num_classes: int, images: str | None = None) -> list[str]:
        """Refuse reference scans of another task: a model with another number of outputs, or scanned on
        other images (when both fingerprints are known). Returns notes for what could not be checked."""
        notes = []
        for i, src in enumerate(self.sources):
            where = src.get("path", f"reference {i}")
            theirs = src.get("num_classes")
            if theirs is not None and theirs != num_classes:
                raise DataError(
                    f"{where}: the reference scan is of a model with {theirs} outputs, this one has "
                    f"{num_classes}: a reference must be a trusted model of the same task"
                )
            if images is not None and src.get("images") is not None and src["images"] != images:
                raise DataError(
                    f"{where}: the reference was scanned on other images; scan the trusted model on the "
                    "same images (its norms are not comparable label for label)"
                )
            if images is not None and src.get("images") is None:
                notes.append(
                    f"{where}: the reference scan does not record its images; they could not be compared"
                )
        return notes

    def mismatches(self, settings: dict[str, Any]) -> list[str]:
        """How the reference scans' optimisation settings differ from ``settings`` (seed and speed
        settings aside): norms found with another schedule, loss or step length are not comparable label
        for label."""
        out = []
        for i, src in enumerate(self.sources):
            theirs = src.get("settings") or {}
            diff = [
                f"{k} {theirs[k]!r} vs {settings.get(k)!r}"
                for k in sorted(theirs)
                if k not in _SPEED_ONLY and k in settings and theirs[k] != settings[k]
            ]
            if diff:
                out.append(f"{src.get('path', f'reference {i}')}: {', '.join(diff)}")
        return out

    def draw_mismatches(self, draw: dict[str, Any]) -> list[str]:
        """Reference scans that optimised on another draw from the same images (``--samples``,
        ``--source``, ``--correct-only``: :data:`DRAW`): their norms are comparable only roughly. Scans
        saved before the draw was recorded are not compared."""
        out = []
        for i, src in enumerate(self.sources):
            theirs = src.get("draw")
            diff = [f"{k} {theirs[k]!r} vs {draw[k]!r}" for k in DRAW if theirs and theirs.get(k) != draw[k]]
            if diff:
                out.append(f"{src.get('path', f'reference {i}')}: {', '.join(diff)}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "l1_norms": {
                str(k): (round(v, 6) if math.isfinite(v) else None) for k, v in self.l1_norms.items()
            },
            "sources": self.sources,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reference:
        norms = {int(k): (math.nan if v is None else float(v)) for k, v in d["l1_norms"].items()}
        return cls(norms, list(d.get("sources", [])))
