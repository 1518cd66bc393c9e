"""Does a flagged label's trigger also move a student distilled on clean images?

A student trained to imitate the scanned model on clean images (:func:`~.distill.distil_student`) learns
what those images show: the classes and the task's natural shortcuts (a few strokes make a Fashion-MNIST
"bag" for it as for its teacher). A planted trigger is in none of the clean images, so the student does
not learn it. Stamped on clean images, the reversed trigger of a planted label therefore moves the
student far less than the reversed triggers of the model's natural labels do, and a natural shortcut's
trigger moves it as much or more.

:func:`check_transfer` measures each label's reversed trigger on such a student (the share of clean
images of other labels that it sends to the label) and sets aside a flagged label whose trigger moves
the student at least :data:`TRANSFER_RATIO` times as often as the median unflagged label's does. Students
of some networks take up every trigger less than others (on the fidelity benchmark the residual
network's natural labels moved its students 0-74% of the time, the paper's network's 62-98%), which is
why the comparison is within the model. Where the unflagged labels' triggers move the student
:data:`SATURATED` of the time or more, no label can stand out and the check is not used. What the
check does to the verdict is measured in ``docs/fidelity.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import DataError, SettingsError
from ..fingerprint import fingerprints
from ..metrics import predict
from ..models.outputs import OutputKind
from ..suspect import as_network
from .distill import MIN_IMAGES, DistillSettings, distil_student

if TYPE_CHECKING:
    from .report import DetectionReport

__all__ = [
    "AUTO_MAX_CLASSES",
    "AUTO_MIN_IMAGES",
    "SATURATED",
    "TRANSFER_DISTILL",
    "TRANSFER_RATIO",
    "TransferCheck",
    "auto_check",
    "check_transfer",
]

log = logging.getLogger(__name__)

#: a flagged label whose trigger moves the student at least this share of the median unflagged label's
#: rate is set aside as a natural feature: between the highest planted label kept (0.81) and the lowest
#: natural one (1.04) on the fidelity benchmark's seed-0/1 scans (docs/fidelity.md)
TRANSFER_RATIO = 0.9
#: the unflagged labels' median rate is floored at this: a student that no trigger moves says nothing
_FLOOR = 0.05
#: below this agreement with the model the student is too unlike it for the check to say anything
WEAK_STUDENT = 0.9
#: an agreement measured on fewer held-out images (a tenth of the clean images) is too noisy to trust
MIN_HELD_OUT = 50
#: when the unflagged labels' triggers already move the student this often (their median), the check
#: cannot tell a natural feature's trigger from a planted one: no rate exceeds 100%, so every label sits
#: near the median. The paper's MNIST network's students follow every trigger 84-93% of the time on the
#: fidelity benchmark (the BatchNorm CNN's and residual network's at most 49%): there the check set aside a
#: planted Trojan trigger (relative 1.04) and is not used now (docs/fidelity.md).
SATURATED = 0.75
#: at most this many clean images are stamped per label
_PROBE_IMAGES = 2000
#: a student of the check learns from at most this many clean images a class (or 2,000, if more): on the
#: 43-label sign task students of 36 images a class agreed with their models on 44-47% of images, of 190 a
#: class on 96% (docs/fidelity.md)
PER_CLASS = 200
#: the student of the check: distilled on at most 2,000 clean images (as measured on 10-label tasks, seconds
#: to a minute on CPU) or PER_CLASS a class
TRANSFER_DISTILL = DistillSettings(max_images=2000, per_class=PER_CLASS)
#: a scan checks its flagged labels by default (``transfer_check="auto"``) on tasks of at most this many
#: classes: measured on 10-class tasks (78 models, docs/fidelity.md); on the 43-class sign task a check
#: costs about three scans and one of two students of one recipe followed the planted trigger
AUTO_MAX_CLASSES = 20
#: ...with at least this many clean images, so that its student's agreement is measured on
#: :data:`MIN_HELD_OUT` held-out images (a tenth)
AUTO_MIN_IMAGES = 10 * MIN_HELD_OUT


@dataclass(frozen=True)
class TransferCheck:
    """Each label's reversed trigger measured on a student distilled from the model on clean images.

    Attributes:
        student: what the student is (:meth:`~.distill.Student.describe`).
        agreement: the student's agreement with the model on held-out clean images.
        success: each measured label's trigger: the share of clean images of other labels it sends to the
            label on the student.
        flagged: the labels the statistic flagged before the check.
        ratio: the rate, relative to the median unflagged label's, from which a flagged label is set aside.
        held_out: the clean images the agreement was measured on (0: not recorded, as in checks saved
            before it was).
    """

    student: str
    agreement: float
    success: dict[int, float]
    flagged: list[int]
    ratio: float = TRANSFER_RATIO
    images: int = 0
    notes: list[str] = field(default_factory=list)
    #: from this median rate of the unflagged labels the check is not used (``None``: no such line, as
    #: for checks saved before it existed)
    saturation: float | None = SATURATED
    held_out: int = 0

    @property
    def typical(self) -> float:
        """The median rate of the unflagged labels' triggers (NaN: no unflagged label was measured)."""
        others = self._others(None)
        return float(np.median(others)) if others else math.nan

    @property
    def saturated(self) -> bool:
        """Whether the unflagged labels' triggers move the student so often that no label can stand out."""
        return self.saturation is not None and self.typical >= self.saturation

    @property
    def usable(self) -> bool:
        """Whether the check can say anything (:attr:`unusable_reason` is ``None``)."""
        return self.unusable_reason is None

    @property
    def unusable_reason(self) -> str | None:
        """Why the check cannot say anything, as its note: the student was measured on too few images or
        imitates the model too poorly, no unflagged label was measured to compare with, or the unflagged
        labels' triggers leave no room for a label to move the student more often; ``None`` when it can."""
        if 0 < self.held_out < MIN_HELD_OUT:
            return (
                f"transfer check not used: the student's agreement with the model was measured on only "
                f"{self.held_out} held-out images (at least {MIN_HELD_OUT} needed, a tenth of the clean "
                "images; more clean images help)"
            )
        if self.agreement < WEAK_STUDENT:
            return (
                f"transfer check not used: the student agrees with the model on only {self.agreement:.1%} of "
                f"{self.held_out or 'the'} held-out images (at least {WEAK_STUDENT:.0%} needed; more clean "
                f"images help: the check's student learns from up to {PER_CLASS} a class)"
            )
        if math.isnan(self.typical):
            return "transfer check not used: no unflagged label reached the attack threshold to compare with"
        if self.saturated:
            own = ", ".join(
                f"label {k}'s {self.success[k]:.0%}" for k in self.flagged if math.isfinite(self.success[k])
            )
            return (
                f"transfer check not used: the unflagged labels' triggers already move the student "
                f"{self.typical:.0%} of the time (their median; {own or 'no flagged label measured'}; from "
                f"{self.saturation:.0%} on no label can stand out, as no rate exceeds 100%): on this model the "
                "check cannot tell a natural feature from a planted trigger"
            )
        return None

    def _others(self, k: int | None) -> list[float]:
        return [v for j, v in self.success.items() if j not in self.flagged and j != k and math.isfinite(v)]

    def baseline(self, k: int) -> float:
        """The median rate of the unflagged labels' triggers on the student (floored)."""
        others = self._others(k)
        return max(float(np.median(others)), _FLOOR) if others else math.nan

    def relative(self, k: int) -> float:
        """Label ``k``'s rate on the student over the unflagged labels' median."""
        return self.success.get(k, math.nan) / self.baseline(k)

    @property
    def set_aside(self) -> list[int]:
        """The flagged labels whose trigger transfers to the student as natural features' triggers do."""
        if not self.usable:
            return []
        return [k for k in self.flagged if self.relative(k) >= self.ratio]

    @property
    def kept(self) -> list[int]:
        """The flagged labels the check leaves flagged."""
        aside = self.set_aside
        return [k for k in self.flagged if k not in aside]

    def describe(self, k: int) -> str:
        """Label ``k``'s numbers, and whether they set it aside."""
        return (
            f"its trigger sends {self.success[k]:.0%} of clean images of other labels to it in a student "
            f"distilled from the model on clean images, {self.relative(k):.2f} times the median unflagged "
            f"label's trigger ({self.baseline(k):.0%}; from {self.ratio:g} times a label is set aside)"
        )

    def explain(self) -> str:
        """Every flagged label's numbers, kept or set aside, as a sentence (for the HTML report)."""
        if not self.usable:
            return (self.notes[0] if self.notes else "transfer check not used").removeprefix(
                "transfer check "
            )
        return "; ".join(
            f"label {k}: {self.describe(k)}: {'set aside' if k in self.set_aside else 'kept'}"
            for k in self.flagged
        )

    def summary(self, norms: dict[int, str] | None = None) -> str | None:
        """A clause on the labels set aside (``norms``: what the norms say of each, to lead with), or on
        why the check said nothing; ``None`` if it kept every flagged label."""
        if not self.usable:
            return self.notes[0] if self.notes else None
        aside = self.set_aside
        if not aside:
            return None
        lead = norms or {}
        return "; ".join(f"{lead.get(k, f'label {k} is flagged')}, but {self.describe(k)}" for k in aside) + (
            ": a trigger that a model trained only on clean images also follows is a natural feature "
            "of the task, not evidence of a planted backdoor"
        )

    def kept_clause(self) -> str | None:
        """The flagged labels the check kept, with their rates, as a clause for the verdict's sentence;
        ``None`` when it kept none or could not judge."""
        kept = self.kept if self.usable else []
        if not kept:
            return None
        if len(kept) == 1:
            who, rates = "it: its trigger moves", f"{self.relative(kept[0]):.2f}"
        else:
            who = "them: their triggers move"
            rates = ", ".join(f"{self.relative(k):.2f} (label {k})" for k in kept)
        return (
            f"the transfer check kept {who} a student distilled on clean images {rates} times as often as a "
            f"typical label's does (a natural feature's: {self.ratio:g} times or more)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "student": self.student,
            "agreement": self.agreement,
            # a label with no image of another label to stamp has no rate: null, as JSON has no NaN
            "success": {str(k): (v if math.isfinite(v) else None) for k, v in sorted(self.success.items())},
            "flagged": self.flagged,
            "ratio": self.ratio,
            "images": self.images,
            "saturation": self.saturation,
            "held_out": self.held_out,
            "set_aside": self.set_aside,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransferCheck:
        """Read :meth:`to_dict`'s value; ``ValueError``/``TypeError`` (a malformed report) for anything else,
        including a saved ``set_aside`` that its own numbers do not give."""
        success, flagged, notes = d["success"], d["flagged"], d.get("notes", [])
        if not isinstance(success, dict) or not isinstance(flagged, list) or not isinstance(notes, list):
            raise TypeError("transfer: success must be an object, flagged and notes lists")
        check = cls(
            student=str(d["student"]),
            agreement=float(d["agreement"]),
            success={int(k): math.nan if v is None else float(v) for k, v in success.items()},
            flagged=[int(k) for k in flagged],
            ratio=float(d["ratio"]),
            images=int(d.get("images", 0)),
            notes=[str(n) for n in notes],
            saturation=None if d.get("saturation") is None else float(d["saturation"]),
            held_out=int(d.get("held_out", 0)),
        )
        unknown = sorted(set(check.flagged) - set(check.success))
        if unknown:
            raise ValueError(f"transfer: flagged label {unknown[0]} has no rate")
        if "set_aside" in d and sorted(int(k) for k in d["set_aside"]) != check.set_aside:
            raise ValueError(
                f"transfer: set_aside {d['set_aside']} is not what its rates give ({check.set_aside})"
            )
        return check


def check_transfer(
    report: DetectionReport,
    model: nn.Module,
    images: torch.Tensor,
    *,
    settings: DistillSettings | None = None,
    ratio: float = TRANSFER_RATIO,
    saturation: float | None = SATURATED,
    outputs: OutputKind = "auto",
    device: torch.device | str = "cpu",
) -> DetectionReport:
    """The report with its flagged labels checked on a student distilled from ``model`` on the clean
    ``images`` (``(N, C, H, W)`` in ``[0, 1]``; the scan's own, or more of the same task).

    A report that flags nothing is returned as it is. Flagged labels whose trigger transfers to the
    student (:attr:`TransferCheck.set_aside`) are no longer flagged; if none is left the verdict is
    ``inconclusive``, with the numbers, since a natural feature cheaper than a planted trigger could also
    hide one. The check is recorded in the report (``report.transfer``). It is not used (a note says
    why: :attr:`TransferCheck.unusable_reason`) when the student's agreement with the model was measured on
    fewer than :data:`MIN_HELD_OUT` held-out images or is under :data:`WEAK_STUDENT`, when no unflagged
    label was measured, or when the unflagged labels' median rate is ``saturation`` or more (``None``: no
    such line).
    """
    if isinstance(ratio, bool) or not (
        isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0
    ):
        raise SettingsError(f"transfer ratio must be a positive number, got {ratio!r}")
    if saturation is not None and (
        isinstance(saturation, bool) or not isinstance(saturation, (int, float)) or not 0 < saturation <= 1
    ):
        raise SettingsError(f"transfer saturation must be a rate in (0, 1] or None, got {saturation!r}")
    if report.verdict != "backdoored":
        return report
    net = as_network(model, "check_transfer")
    images = _clean_images(images, report)
    prints = fingerprints(net)
    recorded = report.model.get("fingerprint"), report.model.get("weights_fingerprint")
    if any(recorded) and prints.model != recorded[0] and prints.weights != recorded[1]:
        raise DataError(
            "the report is a scan of another model (its fingerprint differs): check the model it scanned"
        )
    device = torch.device(device)
    student = distil_student(
        net, images, settings=settings or TRANSFER_DISTILL, outputs=outputs, device=device
    )
    gen = torch.Generator().manual_seed(0)
    probe = images[torch.randperm(len(images), generator=gen)[:_PROBE_IMAGES]]
    classes = predict(net, probe, device=device, what="the clean images").cpu()
    measured = [r.label for r in report.labels if r.reached or r.flagged]
    success = {
        k: _success(student.model, report.triggers[k].apply, probe, classes, k, device) for k in measured
    }
    check = TransferCheck(
        student.describe(),
        student.agreement,
        success,
        list(report.flagged),
        float(ratio),
        len(probe),
        saturation=None if saturation is None else float(saturation),
        held_out=student.held_out,
    )
    why = check.unusable_reason
    notes = [] if why is None else [why]
    check = dataclasses.replace(check, notes=notes)
    for k in check.set_aside:
        log.info("transfer check: label %d: %s", k, check.describe(k))
    flagged = check.kept
    rows = [dataclasses.replace(r, flagged=r.label in flagged) for r in report.labels]
    return dataclasses.replace(
        report,
        verdict="backdoored" if flagged else "inconclusive",
        flagged=flagged,
        labels=rows,
        transfer=check,
        notes=[*report.notes, notes[0] if notes else f"transfer check: {check.explain()}"],
    )


def auto_check(report: DetectionReport, *, images: int, classes: int) -> tuple[bool, str | None]:
    """Whether a scan with ``transfer_check="auto"`` checks its report, and a note when a weak verdict goes
    unchecked (``images``: the clean images the check would distil on; ``classes``: the model's outputs).

    The check runs where it was measured and where the verdict needs it: a ``backdoored`` verdict whose
    statistic calls its evidence weak (:meth:`~neuralcleanse.detection.statistics.OutlierStatistic.weak`:
    the default statistic's, a flagged label at or above
    :data:`~neuralcleanse.detection.statistics.NATURAL_FLOOR` of the median norm, where natural labels
    came on the fidelity benchmark and no set-aside label was below), on a task of at most
    :data:`AUTO_MAX_CLASSES` classes, with at least :data:`AUTO_MIN_IMAGES` clean images, on a scan of every
    label (the check compares a flagged label's rate with the unflagged labels' median, measured on full
    scans; a scan of a few labels, ``--labels``, leaves a median of one or two).
    """
    if report.transfer is not None or not report.outlier_statistic.weak(report):
        return False, None
    why = None
    if classes > AUTO_MAX_CLASSES:
        why = (
            f"a model of {classes} classes (more than {AUTO_MAX_CLASSES}: on many classes its student costs "
            "several scans and was measured unreliable)"
        )
    elif images < AUTO_MIN_IMAGES:
        why = f"{images} clean images (its student needs {AUTO_MIN_IMAGES} to be measured)"
    elif len(report.labels) < classes:
        why = (
            f"a scan of {len(report.labels)} of the model's {classes} labels (a flagged label's rate is compared "
            "with the unflagged labels' median, measured on full scans; --transfer-check runs it anyway)"
        )
    if why is None:
        return True, None
    return False, f"the transfer check of a weak verdict was not run by default: {why}"


def _clean_images(images: Any, report: DetectionReport) -> torch.Tensor:
    """The clean images as the check needs them: float ``(N, C, H, W)`` in ``[0, 1]`` of the report's
    image shape (an ``ImageDataset``'s images are taken); one-line :class:`DataError` otherwise."""
    from ..data.dataset import ImageDataset

    if isinstance(images, ImageDataset):
        images = images.images
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        kind = (
            f"a {images.dtype} tensor" if isinstance(images, torch.Tensor) else f"a {type(images).__name__}"
        )
        raise DataError(f"the transfer check needs float images in [0, 1], got {kind}")
    shape = next(iter(report.triggers.values())).image_shape if report.triggers else None
    if images.ndim != 4 or (shape is not None and tuple(images.shape[1:]) != tuple(shape)):
        want = ", ".join(str(d) for d in shape) if shape is not None else "C, H, W"
        raise DataError(
            f"the transfer check needs the scan's images, (N, {want}), got shape {tuple(images.shape)}"
        )
    if len(images) < MIN_IMAGES:  # before min/max below, which an empty tensor has not
        raise DataError(
            f"the transfer check distils a student and needs at least {MIN_IMAGES} clean images, got {len(images)}"
        )
    low, high = float(images.min()), float(images.max())
    if not (low >= 0.0 and high <= 1.0):
        raise DataError(f"the transfer check needs images in [0, 1], got values from {low:g} to {high:g}")
    return images.float()


def _success(
    student: nn.Module,
    stamp: Any,
    images: torch.Tensor,
    classes: torch.Tensor,
    k: int,
    device: torch.device,
) -> float:
    """The share of ``images`` of classes other than ``k`` that the student puts in ``k`` once stamped."""
    victims = images[classes != k]
    if len(victims) == 0:
        return math.nan
    hits = 0
    with torch.no_grad():
        for start in range(0, len(victims), 256):
            x = stamp(victims[start : start + 256].to(device))
            hits += int((student(x).argmax(1) == k).sum())
    return hits / len(victims)
