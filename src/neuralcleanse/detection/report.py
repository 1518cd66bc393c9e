"""The result of a scan: per-label norms, anomaly indices, the verdict, and the reversed triggers."""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .._io import atomic_directory, atomic_write_json, format_version, inside, read_result
from ..errors import DataError, SettingsError, TriggerFileError
from ..triggers import Trigger
from .outlier import OutlierResult, mad_outlier_test
from .reference import Reference
from .statistics import PAPER, OutlierStatistic, get_statistic
from .transfer import TransferCheck

__all__ = ["LabelResult", "DetectionReport", "REPORT_FORMAT_VERSION", "REPORT_FILE"]

REPORT_FORMAT_VERSION = 1
REPORT_FILE = "report.json"


def _num(x: float) -> float | None:
    """JSON has no NaN/inf: they are written as null (the notes say why). Finite values are written in
    full, so a loaded report gives the same verdict as the one in memory, to the last digit."""
    return float(x) if math.isfinite(x) else None


def _is_label(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _unnum(x: float | None) -> float:
    return math.nan if x is None else float(x)


#: how tables name each ``stop_reason``
STOP_WORDS = {
    "early_stop": "early stop",
    "max_steps": "max steps",
    "nan": "NaN/inf",
    "screened": "screened",
}


@dataclass(frozen=True)
class LabelResult:
    """One label's reverse-engineered trigger and its place in the outlier test.

    Attributes:
        l1_norm: L1 norm of the smallest mask that reached the attack threshold (the last mask if none did).
        attack_success: fraction of the scan's images *of other labels* sent to this label by the trigger
            (the model run as the scan ran it: bf16 autocast and channels-last where its settings say so).
        reached: whether any step reached the attack threshold.
        steps: optimisation steps used; ``stop_reason`` is ``early_stop``, ``max_steps``, ``nan``, or
            ``screened``: the label stopped after the first pass of a screening scan because its trigger
            is clearly large (:mod:`~neuralcleanse.detection.schedule`). Its ``l1_norm`` is then an
            upper value (a full run of the label ends at or below it) and ``screened_bound`` the lower
            bound the screening rule assumed; the outlier test's median holds for any norm in between.
            With many labels and a verdict with an effect size, ``l1_norm`` is instead an estimate of the
            norm a full run would reach and ``screened_upper`` the upper bound assumed (NaN otherwise);
            its trigger is the first-pass one, whose norm ``history`` holds.
        anomaly_index: ``|L1 − median| / MAD`` (NaN when the label was left out of the test).
    """

    label: int
    name: str
    l1_norm: float
    attack_success: float
    reached: bool
    steps: int
    stop_reason: str
    final_cost: float
    best_step: int
    anomaly_index: float
    flagged: bool
    images_seen: int = 0
    history: list[list[float]] = field(default_factory=list, repr=False)
    screened_bound: float = math.nan
    screened_upper: float = math.nan

    @property
    def screened(self) -> bool:
        return self.stop_reason == "screened"

    @property
    def stop(self) -> str:
        """Why the label's optimisation stopped, in words for tables."""
        return STOP_WORDS.get(self.stop_reason, self.stop_reason or "-")

    @property
    def capped(self) -> bool:
        """The label ran out of steps (``max_steps``) before early stopping: its norm is an upper bound."""
        return self.stop_reason == "max_steps"

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "name": self.name,
            "l1_norm": _num(self.l1_norm),
            "attack_success": _num(self.attack_success),
            "reached": self.reached,
            "steps": self.steps,
            "stop_reason": self.stop_reason,
            "final_cost": _num(self.final_cost),
            "best_step": self.best_step,
            "anomaly_index": _num(self.anomaly_index),
            "flagged": self.flagged,
            "images_seen": self.images_seen,
            "screened_bound": _num(self.screened_bound),
            "screened_upper": _num(self.screened_upper),
            "history": self.history,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelResult:
        norm = _unnum(d["l1_norm"])
        if not (math.isnan(norm) or (math.isfinite(norm) and norm >= 0)):  # null (NaN): the model's NaN
            raise ValueError(f"label {d['label']}: l1_norm must be a non-negative number or null, got {norm}")
        return cls(
            label=int(d["label"]),
            name=str(d["name"]),
            l1_norm=norm,
            attack_success=_unnum(d["attack_success"]),
            reached=bool(d["reached"]),
            steps=int(d["steps"]),
            stop_reason=str(d["stop_reason"]),
            final_cost=_unnum(d["final_cost"]),
            best_step=int(d["best_step"]),
            anomaly_index=_unnum(d["anomaly_index"]),
            flagged=bool(d["flagged"]),
            images_seen=int(d.get("images_seen", 0)),
            history=d.get("history", []),
            screened_bound=_unnum(d.get("screened_bound")),
            screened_upper=_unnum(d.get("screened_upper")),
        )


class _Settling(Protocol):
    """A label's optimisation outcome: a :class:`~.engine.LabelState` or a :class:`LabelResult`."""

    @property
    def label(self) -> int: ...
    @property
    def stop_reason(self) -> str: ...
    @property
    def reached(self) -> bool: ...


#: below this attack success a label stopped by the step limit without reaching the attack threshold is
#: unreachable from the clean images (an output the model never uses), not a trigger still shrinking
UNREACHABLE_SUCCESS = 0.5


def unreachable_labels(rows: Sequence[_Settling], success: Mapping[int, float]) -> list[int]:
    """Labels stopped by the step limit that never reached the attack threshold and whose trigger still
    sends fewer than half of the images there (``success``: label → measured attack success), in a scan
    where at least three labels stopped before the limit (so the limit was enough for a label that can be
    reached): no trigger of any size was found — an output the model never gives — so their norm is the
    cost of a mask that does not work, neither an upper value of a trigger nor a part of the task's spread
    of norms."""
    if sum(s.stop_reason in ("early_stop", "screened") for s in rows) < 3:
        return []
    return [
        s.label
        for s in rows
        if s.stop_reason == "max_steps"
        and not s.reached
        and success.get(s.label, math.nan) < UNREACHABLE_SUCCESS  # NaN (not measured) compares False
    ]


def unreachable_flags(rows: Sequence[_Settling], success: Mapping[int, float]) -> list[bool]:
    """One flag per row: the outlier test leaves the label out (``mad_outlier_test(left_out=...)``), as
    it is unreachable (:func:`unreachable_labels`): many unused outputs would set the median."""
    skip = set(unreachable_labels(rows, success))
    return [s.label in skip for s in rows]


def unsettled_reason(
    rows: Sequence[_Settling],
    flagged: Sequence[int],
    *,
    max_steps: int,
    attack_threshold: float,
    success: Mapping[int, float] | None = None,
) -> str | None:
    """Why a verdict over these labels' norms (label states or report rows) would not be sound, or None.

    A label stopped by the step limit was still shrinking its trigger: its norm is only an upper value.
    The flags hold if only flagged labels are in that state (a smaller norm below the median flags them
    all the more), not otherwise; nor do labels that no trigger reached at all (:func:`unreachable_labels`,
    given the measured ``success``) unsettle them. A verdict where most labels never reached the attack
    threshold rests on masks that are not triggers at all.
    """
    unreachable = set(unreachable_labels(rows, success or {}))
    capped = [
        s.label
        for s in rows
        if s.stop_reason == "max_steps" and s.label not in flagged and s.label not in unreachable
    ]
    if capped:
        return (
            f"labels {capped} stopped at the step limit ({max_steps} steps) while their triggers "
            "were still shrinking, so their norms are only upper values and the outlier test's outcome is "
            "not settled; rerun with more steps (--max-steps, or max_steps=)"
        )
    reached = sum(s.reached for s in rows)
    if 2 * reached < len(rows) - len(unreachable):
        return (
            f"only {reached} of {len(rows)} labels reached {attack_threshold:.0%} attack success; "
            "the others' norms are those of masks that are not triggers, so the outlier test's outcome "
            "means little (an untrained or broken model, or too few steps)"
        )
    return None


@dataclass(frozen=True, eq=False)
class DetectionReport:
    """What a Neural Cleanse scan found.

    ``verdict`` is ``backdoored`` when at least one label is flagged, ``clean`` when none is, and
    ``inconclusive`` when the outlier test could not run (fewer than three labels with a finite norm)
    or had no power (with the L1 statistic, ``median / mad`` at or below the threshold: no label could
    have been flagged). ``median`` and ``mad`` are in the units of ``statistic`` (``l1``: the norms;
    ``log``: their natural logarithms; ``relative``: the logarithms of each norm over its ``reference``
    norm); :attr:`median_l1` is always the median L1 norm.
    """

    verdict: str
    flagged: list[int]
    labels: list[LabelResult]
    median: float
    mad: float
    threshold: float
    settings: dict[str, Any]
    data: dict[str, Any]
    model: dict[str, Any]
    run: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    triggers: dict[int, Trigger] = field(default_factory=dict, repr=False)
    example: torch.Tensor | None = field(default=None, repr=False)  # a clean image for the stamped PNGs
    statistic: str = "l1"
    reference: Reference | None = None
    format_version: int = REPORT_FORMAT_VERSION
    transfer: TransferCheck | None = None  # the flagged labels checked on a distilled student

    def __post_init__(self) -> None:
        get_statistic(self.statistic)  # an unknown name fails here, not in the first sentence about it
        # a screened label's lower bound follows from its norm and the settings' screen_shrink, for rows
        # built without it
        shrink = self.settings.get("screen_shrink") if isinstance(self.settings, dict) else None
        if isinstance(shrink, (int, float)):
            for i, r in enumerate(self.labels):
                if r.screened and not math.isfinite(r.screened_bound) and math.isfinite(r.l1_norm):
                    self.labels[i] = dataclasses.replace(r, screened_bound=shrink * r.l1_norm)

    @property
    def screened(self) -> dict[int, tuple[float, float]]:
        """Screened labels and the range their norm is known to lie in: ``{label: (lower, upper)}``."""
        return {
            r.label: (r.screened_bound, r.screened_upper if math.isfinite(r.screened_upper) else r.l1_norm)
            for r in self.labels
            if r.screened
        }

    @property
    def estimated(self) -> list[int]:
        """Screened labels whose norm in the test is an estimate (many labels, a verdict with an effect
        size: :mod:`~neuralcleanse.detection.schedule`), not an upper value."""
        return [r.label for r in self.labels if r.screened and math.isfinite(r.screened_upper)]

    @property
    def outlier_statistic(self) -> OutlierStatistic:
        """The statistic of this report's test (:mod:`~neuralcleanse.detection.statistics`): its checks,
        ceiling and sentences."""
        return get_statistic(self.statistic)

    @property
    def index_scale(self) -> float:
        """What the anomaly indices divide by: the MAD, or its floor against a self-made reference."""
        return self.outlier_statistic.index_scale(self.mad, self.reference)

    def _paper_test(self) -> str:
        res = self.outlier_test(statistic=PAPER.name)
        test = PAPER.test_name
        if res.powerless:
            return f"{test} is inconclusive: it has no power here (ceiling {res.ceiling:.2f})"
        if not res.conclusive:
            return f"{test} is inconclusive: it could not run ({sum(res.used)} finite norms)"
        if res.flagged:
            index = dict(zip((r.label for r in self.labels), res.anomaly_index, strict=True))
            flags = ", ".join(f"{k} (index {index[k]:.2f})" for k in res.flagged)
            return f"{test} flags label{'s' if len(res.flagged) > 1 else ''} {flags}"
        return (
            f"{test} flags no label (the highest anomaly index of a label below the median norm is "
            f"{res.largest_below_median:.2f}, under its threshold {self.threshold:g})"
        )

    def paper_test(self) -> str:
        """The paper's test on the same norms (the L1 statistic), in one sentence: what it flags, or that
        it flags nothing or could not run; shown beside a verdict of another statistic. With estimated
        norms (:attr:`estimated`) the sentence says so: only a full scan gives the paper's exact flags."""
        sentence = self._paper_test()
        if self.estimated:
            sentence += (
                f" (on estimated norms of {len(self.estimated)} screened labels; a full scan, --exhaustive, "
                "gives its exact flags)"
            )
        return sentence

    @property
    def unsettled(self) -> str | None:
        """Why this scan's norms cannot settle a verdict (labels stopped by the step limit, most labels
        without a working trigger), or None; the same rule makes the scan's verdict inconclusive."""
        return unsettled_reason(
            self.labels,
            self.flagged,
            max_steps=int(self.settings.get("max_steps", 0)),
            attack_threshold=float(self.settings.get("attack_threshold", 0.99)),
            success={r.label: r.attack_success for r in self.labels},
        )

    # ---- views --------------------------------------------------------------------------------------
    def label(self, k: int) -> LabelResult:
        for r in self.labels:
            if r.label == k:
                return r
        raise KeyError(f"label {k} is not in this report")

    @property
    def median_l1(self) -> float:
        """Median L1 norm of the labels in the test, whatever the statistic."""
        return self.outlier_statistic.median_l1(self.median, [r.l1_norm for r in self.labels])

    @property
    def ceiling(self) -> float:
        """The anomaly index an empty trigger would get (``inf`` for the log and relative statistics)."""
        return self.outlier_statistic.ceiling(self.median, self.mad)

    def outlier_test(
        self,
        *,
        statistic: str | None = None,
        threshold: float | None = None,
        reference: Reference | None = None,
    ) -> OutlierResult:
        """Re-run the outlier test on this report's norms — with another statistic, threshold or
        reference (default: the report's own) — without optimising anything again."""
        stat = get_statistic(statistic or self.statistic)
        ref = reference or self.reference
        stat.check(reference=ref is not None)
        labels = [r.label for r in self.labels]
        return mad_outlier_test(
            [r.l1_norm for r in self.labels],
            left_out=unreachable_flags(self.labels, {r.label: r.attack_success for r in self.labels}),
            threshold=self.threshold if threshold is None else threshold,
            eligible=[r.reached for r in self.labels],
            names=labels,
            statistic=stat.name,
            **stat.test_inputs(
                ref,
                labels,
                masks={k: t.mask for k, t in self.triggers.items()},
                screened=[r.label for r in self.labels if r.screened],
            ),
        )

    @property
    def l1_norms(self) -> dict[int, float]:
        return {r.label: r.l1_norm for r in self.labels}

    @property
    def anomaly_index(self) -> dict[int, float]:
        return {r.label: r.anomaly_index for r in self.labels}

    def evidence(self) -> str | None:
        """How strong the verdict's evidence is, as a clause (the statistic's own measure), or ``None``.
        A scan whose model fitted its clean images far better with the other input range (0-1 against
        0-255: ``model["input_range_doubt"]``) has weak evidence whatever the norms say: its triggers
        were optimised in the wrong units."""
        doubt = self.model.get("input_range_doubt")
        if doubt and self.verdict in ("backdoored", "clean"):
            return (
                "weak evidence: the model fits the clean images far better with the other input range "
                "(see the notes), so the triggers may have been optimised in the wrong units; check "
                "--input-range and scan again"
            )
        return self.outlier_statistic.strength(self)

    def summary(self) -> str:
        """One sentence for people."""
        if self.verdict == "backdoored":
            parts = ", ".join(
                f"label {r.label} ({r.name}) with anomaly index {r.anomaly_index:.2f}, "
                f"{self.outlier_statistic.versus(self, r)}"
                for r in sorted((self.label(k) for k in self.flagged), key=lambda r: r.l1_norm)
            )
            strength = self.evidence()
            aside = self.transfer_note()
            kept = self.transfer.kept_clause() if self.transfer else None
            return (
                f"BACKDOORED: {parts}"
                + (f"; {strength}" if strength else "")
                + (f"; {kept}" if kept else "")
                + (f"; set aside: {aside}" if aside and self.transfer and self.transfer.set_aside else "")
            )
        if self.verdict == "clean":
            strength = self.evidence()
            return f"clean: {self.outlier_statistic.clean_reason(self)}" + (
                f"; {strength}" if strength else ""
            )
        aside = self.transfer_note() if self.transfer is not None and self.transfer.set_aside else None
        if aside is not None:  # every flagged label set aside: why that is not "clean"
            aside += (
                "; not called clean: on the fidelity benchmark the check also set aside a planted Trojan "
                "trigger (one optimised on the model's own neurons moves a student as natural features do)"
            )
        reason = (
            self.unsettled
            or aside
            or self.transfer_note()
            or "; ".join(self.outlier_test().notes)
            or "; ".join(self.notes)
        )
        return "inconclusive: " + reason

    def transfer_note(self) -> str | None:
        """What the transfer check (:func:`~.transfer.check_transfer`) set aside, or why it said nothing."""
        if self.transfer is None:
            return None
        median = self.median_l1
        return self.transfer.summary(
            {
                k: f"the norms flag label {k} ({self.label(k).l1_norm / median:.2f} of the median L1)"
                for k in self.transfer.flagged
            }
        )

    # ---- persistence --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        rows = [r.to_dict() for r in self.labels]
        return {
            "format_version": self.format_version,
            "verdict": self.verdict,
            "summary": self.summary(),
            "flagged": self.flagged,
            "anomaly_index": {str(r["label"]): r["anomaly_index"] for r in rows},
            "l1_norms": {str(r["label"]): r["l1_norm"] for r in rows},
            "attack_success": {str(r["label"]): r["attack_success"] for r in rows},
            "median": _num(self.median),  # in the statistic's units (the log statistics: log L1)
            "mad": _num(self.mad),
            "median_l1": _num(self.median_l1),
            "threshold": self.threshold,
            "statistic": self.statistic,
            "reference": self.reference.to_dict() if self.reference is not None else None,
            "transfer": self.transfer.to_dict() if self.transfer is not None else None,
            "notes": self.notes,
            "settings": self.settings,
            "data": self.data,
            "model": self.model,
            "run": self.run,
            "labels": rows,
        }

    def save(self, path: str | os.PathLike[str], *, force: bool = False, images: bool = True) -> Path:
        """Write ``report.json``, every label's trigger (safetensors) and, with ``images``, its PNGs.

        PNGs per label: ``mask``, ``pattern``, ``fusion`` (mask × pattern) and ``stamped`` (a clean scan
        image with the trigger), enlarged with nearest-neighbour for viewing. The directory appears
        complete or not at all.
        """
        from ..report.images import save_png

        example = self.example
        with atomic_directory(path, force=force) as tmp:
            for k, trig in sorted(self.triggers.items()):
                trig.save(tmp / "triggers" / f"label_{k:04d}.safetensors")
                if images:
                    stem = tmp / "images" / f"label_{k:04d}"
                    save_png(trig.mask, f"{stem}_mask.png")
                    save_png(trig.pattern, f"{stem}_pattern.png")
                    save_png(trig.mask[None] * trig.pattern, f"{stem}_fusion.png")
                    if example is not None:
                        save_png(trig.apply(example), f"{stem}_stamped.png")
            if images and example is not None:
                save_png(example, tmp / "images" / "example.png")
            atomic_write_json(tmp / REPORT_FILE, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DetectionReport:
        """Read a report directory (or its ``report.json``) written by :meth:`save`."""
        file, d = read_result(path, REPORT_FILE, what="scan report")
        version = format_version(d)
        if version != REPORT_FORMAT_VERSION:
            raise DataError(
                f"{file}: unsupported report format version {version!r} (expected {REPORT_FORMAT_VERSION})"
            )
        try:
            for key in ("settings", "data", "model", "run"):
                if not isinstance(d[key], dict):
                    raise TypeError(f"{key} must be an object, got {type(d[key]).__name__}")
            if not isinstance(d.get("notes", []), list) or not all(
                isinstance(n, str) for n in d.get("notes", [])
            ):
                raise TypeError("notes must be a list of sentences")
            threshold = float(d["threshold"])
            if not (math.isfinite(threshold) and threshold > 0):
                raise ValueError(f"threshold must be a positive anomaly index, got {d['threshold']!r}")
            labels = [LabelResult.from_dict(r) for r in d["labels"]]
            triggers = {}
            tdir = file.parent / "triggers"
            for r in labels:
                tfile = tdir / f"label_{r.label:04d}.safetensors"
                if not tfile.exists():  # a report is whole or refused: every label has its trigger
                    raise DataError(f"{file.parent}: trigger file triggers/{tfile.name} is missing")
                triggers[r.label] = Trigger.load(inside(file.parent, tfile, what="the trigger file"))
            shapes = Counter(t.image_shape for t in triggers.values()).most_common(1)
            for k, t in triggers.items():  # one scan optimised every trigger on the same images
                if t.image_shape != shapes[0][0]:
                    raise DataError(
                        f"{tdir / f'label_{k:04d}.safetensors'}: a trigger for images {t.image_shape}, where "
                        f"the report's other triggers are for {shapes[0][0]}"
                    )
            if not isinstance(d["flagged"], list) or not all(_is_label(x) for x in d["flagged"]):
                raise TypeError(f"flagged must be a list of labels, got {d['flagged']!r}")
            flagged = [int(x) for x in d["flagged"]]
            unknown = sorted(set(flagged) - set(triggers))
            if unknown:
                raise DataError(f"{file}: malformed scan report (flagged label {unknown[0]} was not scanned)")
            return cls(
                verdict=d["verdict"],
                flagged=flagged,
                labels=labels,
                median=_unnum(d["median"]),
                mad=_unnum(d["mad"]),
                threshold=threshold,
                statistic=str(d.get("statistic", "l1")),
                reference=Reference.from_dict(d["reference"]) if d.get("reference") else None,
                transfer=TransferCheck.from_dict(d["transfer"]) if d.get("transfer") else None,
                settings=d["settings"],
                data=d["data"],
                model=d["model"],
                run=d["run"],
                notes=list(d.get("notes", [])),
                triggers=triggers,
            )
        except TriggerFileError:
            raise  # it names the trigger file itself, which is what is wrong
        # SettingsError: a value the report's own checks refuse, as a trigger's
        except (KeyError, TypeError, ValueError, SettingsError) as exc:
            raise DataError(f"{file}: malformed scan report ({type(exc).__name__}: {exc})") from None
