"""What every mitigation reports: clean accuracy and attack success before and after, and its details."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._format import label_ranges, pct
from .._io import atomic_write_json, format_version, read_result
from ..data.dataset import ImageDataset
from ..errors import DataError, SettingsError
from ..metrics import accuracy, attack_victims, output_count, stamped_success
from ..suspect import SuspectedBackdoor
from .details import MitigationDetails, RawDetails, details_from_dict

__all__ = [
    "Measure",
    "MitigationResult",
    "measure",
    "check_fraction",
    "few_images_notes",
    "label_loss_notes",
    "real_trigger_notes",
    "missing_labels",
    "random_halves",
    "RESULT_FILE",
]

RESULT_FILE = "mitigation.json"
RESULT_FORMAT_VERSION = 1

#: a repaired model that gets the suspected label's clean images right less than this share as often as
#: before has lost the label, not only the backdoor: its attack success falls because it no longer gives
#: the label at all (pruning the neurons a label shares with its trigger does that)
LABEL_KEPT = 0.5


def check_fraction(value: float, what: str) -> float:
    if not (isinstance(value, (int, float)) and 0 < value <= 1 and math.isfinite(value)):
        raise SettingsError(f"{what} must be in (0, 1], got {value}")
    return float(value)


def missing_labels(
    model: nn.Module, data: ImageDataset, *, device: torch.device | str = "cpu"
) -> tuple[list[int], int]:
    """The model's labels that ``data`` holds no image of, and the model's number of labels."""
    outputs = output_count(model, data.images, device=device)
    present = set(torch.unique(data.labels).tolist())
    return [k for k in range(outputs) if k not in present], outputs


def coverage_note(missing: Sequence[int], outputs: int, *, what: str) -> str:
    """What a mitigation measured on (or fine-tuned on) images of some of the model's labels can hide."""
    return (
        f"the clean images hold no image of {len(missing)} of the model's {outputs} labels "
        f"({label_ranges(list(missing))}): {what}"
    )


def coverage_notes(
    model: nn.Module, data: ImageDataset, *, what: str, device: torch.device | str = "cpu"
) -> list[str]:
    """A :func:`coverage_note` when ``data`` holds no image of some of the model's labels, else none."""
    missing, outputs = missing_labels(model, data, device=device)
    return [coverage_note(missing, outputs, what=what)] if missing else []


def random_halves(data: ImageDataset, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """A random half of ``data`` (drawn with ``seed``) and the other half: one to build a mitigation on
    (calibrate a filter, rank neurons), one to measure it on."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    half = len(data) // 2
    return data.subset(order[:half]), data.subset(order[half:])


@dataclass(frozen=True)
class Measure:
    """Clean accuracy and attack success of the reversed (and, if known, the real) trigger."""

    clean_accuracy: float
    attack_success: float
    real_attack_success: float | None = None
    #: clean accuracy on the images of the suspected label alone (``None``: the data holds none, or a
    #: result of an earlier version)
    label_accuracy: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {k: None if v is None else round(v, 6) for k, v in self.__dict__.items()}


def measure(
    model: nn.Module,
    data: ImageDataset,
    backdoor: SuspectedBackdoor,
    *,
    device: torch.device | str = "cpu",
) -> Measure:
    """Clean accuracy on ``data``; attack success of the backdoor's reversed (and, if known, real) trigger
    on its images of other labels (of the sources, if any)."""
    label = backdoor.label
    victims = attack_victims(data, target=label, source_labels=backdoor.sources).images
    if len(victims) == 0:
        raise DataError(f"no images outside label {label} to measure attack success on")
    real = backdoor.real_trigger
    own = data.subset(torch.nonzero(data.labels == label).flatten())
    return Measure(
        clean_accuracy=accuracy(model, data, device=device),
        label_accuracy=accuracy(model, own, device=device) if len(own) else None,
        attack_success=stamped_success(
            model, backdoor.reversed_trigger, victims, target=label, device=device
        ),
        real_attack_success=None
        if real is None
        else stamped_success(model, real, victims, target=label, device=device),
    )


#: below this attack success on the model as given, a real trigger probably is not the backdoor's
REAL_TRIGGER_WORKS = 0.5


def real_trigger_notes(success: float | None) -> list[str]:
    """A note when the real trigger hardly works on the model as given (``success``, its attack success
    before any repair): then the spec is probably not the backdoor's, and its figures say little."""
    if success is None or success >= REAL_TRIGGER_WORKS:
        return []
    return [
        f"the real trigger succeeds on only {pct(success, 1)} of the images on the model as given: it is "
        "probably not the backdoor's trigger (check --real-trigger's position, size and pattern), and its "
        "figures say little"
    ]


#: below this many images, a before/after figure moves by over a point per image: said in a note
FEW_IMAGES = 100


def few_images_notes(data: ImageDataset) -> list[str]:
    """A note when the figures before and after were measured on fewer than :data:`FEW_IMAGES` images."""
    if len(data) >= FEW_IMAGES:
        return []
    return [
        f"clean accuracy and attack success were measured on only {len(data)} images (one image is "
        f"{100 / len(data):.1f} points): treat the figures before and after as rough, and check them on "
        "more of your own images"
    ]


def label_loss_notes(
    label: int, before: Measure, after: Measure, *, instead: str, subject: str = "the repaired model"
) -> list[str]:
    """A note when the repaired model (``subject``) gets the suspected label's own clean images right less
    than :data:`LABEL_KEPT` as often as before: its lower attack success then says little. ``instead``:
    what to try instead."""
    b, a = before.label_accuracy, after.label_accuracy
    if b is None or a is None or b < 0.2 or a >= LABEL_KEPT * b:
        return []
    return [
        f"{subject} gets {pct(a, 1)} of label {label}'s own clean images right (before: {pct(b, 1)}): "
        f"its attack success fell at least partly because it no longer gives label {label}, which removes "
        f"the label, not only the backdoor; check it with the real trigger, or {instead}"
    ]


@dataclass(frozen=True)
class MitigationResult:
    """One mitigation's outcome. ``details`` are the method's own typed fields (thresholds, the pruning
    curve, baselines; a plain dict given here or read from a file becomes them), and the result renders
    itself: :meth:`rows` (before/after) and :meth:`lines` (sentences), plus ``details.table()`` and
    ``details.figures()``."""

    method: str
    label: int
    before: Measure
    after: Measure
    details: MitigationDetails = field(default_factory=RawDetails)
    notes: list[str] = field(default_factory=list)
    #: the fingerprint of the model repaired (its scan report's ``model.fingerprint``), when known
    model_fingerprint: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.details, MitigationDetails):
            object.__setattr__(self, "details", details_from_dict(self.method, self.details))

    def rows(self) -> list[tuple[str, float | None, float | None]]:
        """``(what, before, after)``: clean accuracy and attack success (of the real trigger too, if known)."""
        b, a = self.before, self.after
        rows: list[tuple[str, float | None, float | None]] = [
            ("clean accuracy", b.clean_accuracy, a.clean_accuracy),
            ("attack success (reversed trigger)", b.attack_success, a.attack_success),
        ]
        if b.real_attack_success is not None:
            rows.append(("attack success (real trigger)", b.real_attack_success, a.real_attack_success))
        if b.label_accuracy is not None:
            rows.insert(1, (f"clean accuracy, label {self.label}", b.label_accuracy, a.label_accuracy))
        return rows

    def lines(self) -> list[str]:
        """What the method did and found, in sentences, then the notes (``note: ...``)."""
        return [*self.details.lines(), *(f"note: {n}" for n in self.notes)]

    def summary(self) -> str:
        b, a = self.before, self.after
        real = ""
        if b.real_attack_success is not None and a.real_attack_success is not None:
            real = f", real trigger {100 * b.real_attack_success:.1f}% -> {100 * a.real_attack_success:.1f}%"
        return (
            f"{self.method}: clean accuracy {100 * b.clean_accuracy:.2f}% -> {100 * a.clean_accuracy:.2f}%, "
            f"attack success of the reversed trigger {100 * b.attack_success:.1f}% -> {100 * a.attack_success:.1f}%{real}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": RESULT_FORMAT_VERSION,
            "method": self.method,
            "label": self.label,
            "summary": self.summary(),
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "details": self.details.to_dict(),
            "notes": self.notes,
            "model_fingerprint": self.model_fingerprint,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON result (a directory gets ``mitigation.json``); atomic."""
        p = Path(path)
        file = p / RESULT_FILE if p.suffix != ".json" else p
        atomic_write_json(file, self.to_dict())
        return file

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MitigationResult:
        file, d = read_result(path, RESULT_FILE, what="mitigation result")
        version = format_version(d)
        if version != RESULT_FORMAT_VERSION:
            raise DataError(f"{file}: unsupported mitigation result version {version!r}")
        try:
            return cls(
                method=d["method"],
                label=int(d["label"]),
                before=Measure(**d["before"]),
                after=Measure(**d["after"]),
                details=d.get("details", {}),
                notes=d.get("notes", []),
                model_fingerprint=d.get("model_fingerprint"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{file}: cannot read mitigation result ({exc})") from None
