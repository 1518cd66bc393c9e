"""The Neural Cleanse facade: clean images in, :class:`DetectionReport` out."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .._format import label_ranges
from .._values import is_integer
from ..data.convert import integer_labels
from ..data.dataset import ImageDataset, label_conflicts
from ..device import resolve_device
from ..errors import DataError, SettingsError, first_line
from ..fingerprint import fingerprints, tensor_fingerprint
from ..metrics import check_rows, predict
from ..models.adapt import OutputPick, describe_outputs, parse_output
from ..models.loading import LoadedModel
from ..models.outputs import OUTPUT_KINDS, OutputKind, SigmoidLogits, as_logits
from ..modes import frozen_eval
from ..suspect import as_network
from ..triggers import Trigger
from .checkpoint import (
    checkpoint_seconds,
    checkpoint_threads,
    has_checkpoint,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from .distill import DistillSettings, distil_student, held_out_count
from .engine import LabelState, StepSnapshot, reverse_engineer, scan_mode
from .natural import NATURAL, mean_patterns, natural_note
from .outlier import mad_outlier_test
from .reference import SELF_MADE, Reference
from .report import DetectionReport, LabelResult, unreachable_labels, unsettled_reason
from .settings import ReverseSettings
from .starts import keep_smallest, start_candidates, start_seed, starts_note
from .statistics import DEFAULT_STATISTIC, Statistic, get_statistic, screening_note
from .transfer import AUTO_MIN_IMAGES, MIN_HELD_OUT, TRANSFER_DISTILL, auto_check, check_transfer

__all__ = ["NeuralCleanse", "ScanProgress", "check_source_not_scanned", "scan", "infer_num_classes"]

log = logging.getLogger(__name__)

#: below this agreement with the model a distilled student is called a weak reference
_WEAK_STUDENT = 0.9


@dataclass(frozen=True)
class ScanProgress:
    """Sent to the progress callback after every optimisation step, and once more with ``stage`` set before
    work that follows the optimisation (the transfer check's distillation).

    A label runs until it stops early (its best L1 no longer improves) or reaches ``max_steps``, so the
    total number of steps is only known at the end: :meth:`estimated_steps` estimates it from the labels
    that have finished, :meth:`max_total_steps` bounds it, and :meth:`eta` turns both into seconds at the
    speed observed so far.
    """

    done: int
    total: int
    active: tuple[tuple[int, int, float, float], ...]  # (label, step, cost, best L1 or inf)
    images: int  # images through the model in this run (a resumed scan counts from the resume)
    seconds: float
    finished: tuple[tuple[int, int, str], ...] = ()  # (label, steps, stop reason)
    max_steps: int = 0  # the cap on steps per label (0: unknown)
    images_per_step: int = 0  # images one label sees in one step (0: unknown)
    stage: str = ""  # what the scan does now that the optimisation is over ("": optimising)

    @property
    def finished_steps(self) -> int:
        """Steps the finished labels took, summed."""
        return sum(steps for _, steps, _ in self.finished)

    @property
    def steps_done(self) -> int:
        """Optimisation steps taken so far, summed over labels (resumed steps included)."""
        return self.finished_steps + sum(step for _, step, _, _ in self.active)

    def _observed_runs(self) -> list[int]:
        """Steps of the labels that stopped by the schedule's own rules (not NaN, not screened)."""
        return [steps for _, steps, reason in self.finished if reason not in ("nan", "screened")]

    @property
    def pending(self) -> int:
        """Labels not started yet."""
        return max(0, self.total - len(self.finished) - len(self.active))

    def typical_steps(self) -> float:
        """Steps a label is expected to take: the mean of the finished labels (early stopping observed),
        or the cap while none has finished."""
        runs = self._observed_runs()
        if runs:
            return min(float(self.max_steps or max(runs)), sum(runs) / len(runs))
        return float(self.max_steps or max([step for _, step, _, _ in self.active] or [1]))

    def estimated_steps(self) -> float:
        """Estimated total steps: finished labels as they ran; a running label the typical count, or, once
        past it, the mean of the finished labels that ran longer (at least one more step); pending labels
        the typical count; never more than the cap."""
        typical = self.typical_steps()
        cap = float(self.max_steps) if self.max_steps else math.inf
        runs = self._observed_runs()

        def running(step: int) -> float:
            if step < typical:
                return typical
            longer = [r for r in runs if r > step]
            return min(cap, max(step + 1.0, sum(longer) / len(longer) if longer else 0.0))

        total = sum(running(step) for _, step, _, _ in self.active)
        return self.finished_steps + total + self.pending * typical

    def max_total_steps(self) -> int | None:
        """The most steps the scan can still take: every unfinished label at the cap (None if unknown)."""
        if not self.max_steps:
            return None
        return self.finished_steps + self.max_steps * (len(self.active) + self.pending)

    def steps_per_second(self) -> float | None:
        """Label-steps per second in this run, or None before the first step."""
        if not self.images_per_step or self.seconds <= 0 or self.images <= 0:
            return None
        return self.images / self.images_per_step / self.seconds

    def eta(self, *, steps_per_second: float | None = None) -> tuple[float, float | None] | None:
        """Seconds left as ``(estimate, upper bound)`` at ``steps_per_second`` (default: the mean speed
        of this run, set-up included); the bound assumes every unfinished label runs to the cap. None
        before the speed is known."""
        rate = steps_per_second or self.steps_per_second()
        if rate is None:
            return None
        left = max(0.0, self.estimated_steps() - self.steps_done) / rate
        bound = self.max_total_steps()
        return left, None if bound is None else max(left, (bound - self.steps_done) / rate)


def infer_num_classes(model: nn.Module, images: torch.Tensor, *, device: torch.device) -> int:
    """Run a few images through the model and check that it returns finite ``(N, classes)`` scores."""
    try:
        with frozen_eval(model), torch.no_grad():
            out = model(images[: min(8, len(images))].to(device))
    except DataError:  # already one line about the model (an adapter's: --output names no output)
        raise
    except Exception as exc:  # the user's model: any failure of its forward is a fact about the model
        kind = "" if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: "
        shape = tuple(images.shape[1:])
        hint = (
            " (the images look channels-last, (N, H, W, C): give them as (N, C, H, W), e.g. "
            "images.permute(0, 3, 1, 2))"
            if len(shape) == 3 and shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4)
            else ""
        )
        raise DataError(f"model failed on images of shape {shape}: {kind}{first_line(exc)}{hint}") from None
    if not isinstance(out, torch.Tensor):
        raise DataError(f"the model returns {describe_outputs(out)}")
    if out.ndim != 2:
        raise DataError(f"model output must be (N, classes), got {tuple(out.shape)}")
    check_rows(out, min(8, len(images)))
    if not torch.isfinite(out).all():
        raise DataError("model produced NaN or infinite outputs on clean images")
    if out.shape[1] < 2:
        raise DataError(f"model output has {out.shape[1]} class; a classifier needs at least 2")
    _check_second_pass(model, images, out, device=device)
    return int(out.shape[1])


def _check_second_pass(
    model: nn.Module, images: torch.Tensor, out: torch.Tensor, *, device: torch.device
) -> None:
    """A second forward pass, with input gradients, checks two things a scan relies on. The scores must
    carry a gradient with respect to the input (not so under ``torch.no_grad()`` or a detached input).
    An image's scores must not depend on the other images of its batch: a network exported or loaded
    with BatchNorm in training mode (batch statistics) or with active dropout would give every trigger
    a meaning that changes with the batch."""
    n = max(1, min(4, len(out) // 2))
    first = images[:n]
    others = images[n : 2 * n].flip(-1)  # other images: other batch statistics
    x = torch.cat([first, others]).to(device).requires_grad_(True)
    try:
        with frozen_eval(model), torch.enable_grad():
            scores = model(x)
    except RuntimeError as exc:  # e.g. an in-place operation on the input, which now needs a gradient
        raise DataError(
            f"the model fails when its input needs a gradient, which reverse-engineering a trigger does "
            f"(an in-place operation on its input?): {first_line(exc, limit=200)}"
        ) from None
    if not isinstance(scores, torch.Tensor):
        raise DataError(f"the model returns {describe_outputs(scores)}")
    if not scores.requires_grad:
        raise DataError(
            "the model's scores carry no gradient with respect to its input (a forward under "
            "torch.no_grad(), or a detached input?): reverse-engineering a trigger needs them"
        )
    if len(others) == 0:
        return
    again = scores.detach()[:n]
    diff = float((again.float() - out[:n].float()).abs().max())
    if diff > 1e-3 * float(out.float().abs().max()) + 1e-4:
        raise DataError(
            "the model's scores for an image change with the other images in its batch (by up to "
            f"{diff:.3g}): BatchNorm in training mode or active dropout? put the model in eval mode "
            "(model.eval()) before saving or exporting it"
        )


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4:
        raise DataError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if len(images) == 0:
        raise DataError("no images to scan with")
    if not images.dtype.is_floating_point:
        raise DataError(f"images must be floating point in [0, 1], got {images.dtype}")
    if not torch.isfinite(images).all():
        raise DataError("images contain NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise DataError(
            f"images must be pixels in [0, 1], found values in [{lo:g}, {hi:g}] (declare the model's input range instead)"
        )


#: a label whose images the model gets right less often than this is "almost never right"
LOST_SHARE = 0.1


def _dominant_notes(pred: torch.Tensor, labels: torch.Tensor | None, names: Sequence[str]) -> list[str]:
    """A warning when the model puts half or more of the clean images in one label that far fewer of them
    belong to (a quarter or less; unknown without labels): a trigger already in the images, images of
    another task or a wrong preprocessing look like this, and the norms would mean little."""
    if len(pred) < 10:
        return []
    top = int(torch.mode(pred).values)
    share = float((pred == top).float().mean())
    if share < 0.5 or (labels is not None and float((labels == top).float().mean()) > 0.25):
        return []
    truth = (
        "" if labels is None else f" ({float((labels == top).float().mean()):.0%} of them are of that label)"
    )
    note = (
        f"the model puts {share:.0%} of the clean images in label {top} ({names[top]}){truth}: are they clean "
        "images of its task, read as it expects? A trigger already in the images, images of another task or "
        "a wrong preprocessing (--input-range, --mean/--std) look like this"
    )
    log.warning(note)
    return [note]


def _conflict_notes(images: torch.Tensor, labels: torch.Tensor, names: Sequence[str]) -> list[str]:
    """A note when the same image is given twice with different labels."""
    pairs = label_conflicts(images, labels)
    if not pairs:
        return []
    i, j = pairs[0]
    a, b = int(labels[i]), int(labels[j])
    return [
        f"images given again with a different label: {len(pairs)} (e.g. images {i} and {j}, the same pixels: "
        f"labels {a} ({names[a]}) and {b} ({names[b]})): mislabelled copies; the model can be right on only "
        "one of each"
    ]


def _order_notes(pred: torch.Tensor, labels: torch.Tensor, names: Sequence[str]) -> list[str]:
    """A warning when the images of two or more labels go mostly to one other label each while the model
    still gives those labels to other images: the data's labels are then probably not in the model's order
    (class folders named by words, sorted by name). Labels whose images the model gets almost never right,
    without that pattern, get a note of their own (a label the model no longer gives to any image: a
    pruned or damaged model)."""
    moved: list[tuple[int, int, int, int]] = []
    lost: list[str] = []
    for k in torch.unique(labels).tolist():
        got = pred[labels == k]
        if len(got) < 3:
            continue
        top = int(torch.mode(got).values)
        count = int((got == top).sum())
        given = int((pred == k).sum())  # images of any label the model puts in k
        if top != k and count >= len(got) / 2 and given >= LOST_SHARE * len(got):
            moved.append((k, top, count, len(got)))
        right = int((got == k).sum())
        if right < LOST_SHARE * len(got):
            lost.append(f"label {k} ({names[k]}): {right} of {len(got)}, most to {top}")
    if len(moved) >= 2:
        shown = "; ".join(f"label {k} ({names[k]}) → {top}: {c} of {n}" for k, top, c, n in moved[:4])
        note = (
            f"the images of {len(moved)} labels go mostly to one other label each "
            f"({shown}{'; ...' if len(moved) > 4 else ''}): the data's labels are probably not in the model's "
            "order (class folders named by words are sorted by name; give --class-names in the model's order)"
        )
    elif lost:
        note = (
            f"the model gets almost none of the images of {len(lost)} label{'s' if len(lost) > 1 else ''} right "
            f"({'; '.join(lost[:4])}{'; ...' if len(lost) > 4 else ''}): it may no longer give "
            f"{'them' if len(lost) > 1 else 'that label'} (a pruned or damaged model), or those images are "
            "mislabelled; such a label's trigger is optimised on the other labels' images"
        )
    else:
        return []
    log.warning(note)
    return [note]


def _coverage_notes(pool: ImageDataset, *, num_classes: int, labelled: bool, source: int | None) -> list[str]:
    """Warnings when the clean images are too few for the labels: a trigger reversed on a handful of
    images, or on images of a few classes only, says little about the model as a whole."""
    notes: list[str] = []
    if len(pool) < num_classes:
        notes.append(
            f"only {len(pool)} clean images for {num_classes} labels: each trigger rests on very few images "
            "and the norms are less reliable (give at least a few images per label)"
        )
    if labelled and source is None:
        present = len(torch.unique(pool.labels))
        if present < num_classes:
            notes.append(
                f"the clean images cover {present} of the {num_classes} labels: a trigger toward a missing "
                "label is optimised on other classes only, and a backdoor from a missing class goes unseen"
            )
    for note in notes:
        log.warning(note)
    return notes


def check_source_not_scanned(source: int | None, labels: list[int] | None) -> None:
    """A one-line :class:`SettingsError` when the source label is among the labels to scan: its images
    already have it, so its trigger is empty (the CLI checks this before any file is read, the engine
    before optimising)."""
    if source is not None and labels is not None and source in labels:
        raise SettingsError(
            f"label {source} is the source label: its images need no trigger to reach it; leave it out "
            "of the labels to scan (--labels)"
        )


class NeuralCleanse:
    """Detect backdoors by reverse-engineering each label's smallest trigger (Wang et al., S&P 2019).

    Args:
        model: maps ``(N, C, H, W)`` pixels in ``[0, 1]`` to class scores; any scaling or normalisation
            it needs must be inside it. It is used frozen and in eval mode; both are restored.
        settings: optimisation schedule (default: the fast schedule, with ``precision="auto"`` resolved
            for ``device`` and screening turned off for the relative statistic;
            :meth:`ReverseSettings.exhaustive` for the full schedule in fp32, :meth:`ReverseSettings.original`
            for the original code's sequential schedule).
        threshold: anomaly index above which a small-norm label is flagged (paper: 2).
        statistic: ``"l1"`` (the paper: the outlier test on the L1 norms), ``"log"`` (on their
            logarithms), ``"effect"`` (the log test, and a flagged trigger at most 0.3 times the median
            norm) or ``"relative"`` (on each norm over its ``reference`` norm); see
            :func:`~neuralcleanse.detection.mad_outlier_test`. Default: ``relative`` when a reference
            is given, else ``effect`` (it beats the paper's test on the fidelity benchmark,
            ``docs/fidelity.md``; the paper's test is reported beside it).
        reference: per-label norms of trusted models of the same task
            (:meth:`Reference.from_reports`), recorded in the report.
        device: where to run (``auto``, ``cpu``, ``cuda``...).
        transfer_check: check flagged labels on a student distilled from the model on the clean images
            (:func:`~neuralcleanse.detection.transfer.check_transfer`): ``True`` (or ``DistillSettings``)
            on every flagged verdict, ``False`` never, ``"auto"`` (the default) on weak verdicts of the
            default statistic where it was measured (:func:`~neuralcleanse.detection.transfer.auto_check`).

    Examples::

        >>> nc = NeuralCleanse(model, settings=ReverseSettings(seed=0))
        >>> report = nc.scan(test_images, labels=test_labels)
        >>> report.verdict, report.flagged
        ('backdoored', [0])
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        settings: ReverseSettings | None = None,
        threshold: float = 2.0,
        statistic: Statistic | None = None,
        reference: Reference | None = None,
        outputs: OutputKind = "auto",
        device: str | torch.device = "cpu",
        self_reference: bool | DistillSettings = False,
        natural_reference: bool = False,
        transfer_check: bool | DistillSettings | Literal["auto"] = "auto",
    ) -> None:
        if outputs not in OUTPUT_KINDS:
            raise SettingsError(f"outputs must be one of {', '.join(OUTPUT_KINDS)}, got {outputs!r}")
        if isinstance(threshold, bool) or not (
            isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0
        ):
            raise SettingsError(f"threshold must be a positive, finite anomaly index, got {threshold!r}")
        if reference is not None and not isinstance(reference, Reference):
            raise SettingsError(
                f"reference must be a Reference of trusted models' scans (Reference.from_reports([...])), "
                f"not a {type(reference).__name__}"
            )
        for name, value, words in (
            ("self_reference", self_reference, ()),
            ("transfer_check", transfer_check, ("auto",)),
        ):
            if value is not None and not isinstance(value, (bool, DistillSettings)) and value not in words:
                also = "".join(f', "{w}"' for w in words)
                raise SettingsError(f"{name} must be True, False{also} or DistillSettings, got {value!r}")
        if sum((bool(self_reference), reference is not None, bool(natural_reference))) > 1:
            raise SettingsError(
                "give one reference: trusted models (reference), self_reference or natural_reference"
            )
        own = DistillSettings() if self_reference is True else (self_reference or None)
        made = own is not None or bool(natural_reference)  # a reference the scan makes itself
        statistic = statistic or ("relative" if reference is not None or made else DEFAULT_STATISTIC)
        stat = get_statistic(statistic)
        stat.check(reference=reference is not None or made)
        if natural_reference and not stat.needs_reference:
            raise SettingsError(
                f"natural_reference (--natural-reference) is the reference of a statistic that uses one; "
                f"the {stat.name} statistic does not, so its second optimisation would be wasted"
            )
        if own is not None and not stat.needs_reference:
            raise SettingsError(
                f"self_reference (--self-reference) distils a student as the reference of a statistic that "
                f"uses one; the {stat.name} statistic does not, so the student and its scan would be wasted"
            )
        self.device = resolve_device(device)
        settings = (settings or ReverseSettings()).for_device(self.device)
        self._notes: list[str] = []
        if not stat.screening_safe and settings.screening:
            # e.g. a label far above the median in L1 can still be small against its reference
            settings = settings.replace(screening=False)
            self._notes.append(screening_note())
        self.model = model
        self.settings = settings
        self.threshold = threshold
        self.statistic: Statistic = statistic
        self.reference = reference
        self.self_reference = own
        self.natural_reference = bool(natural_reference)
        #: ``auto``: the check runs only where :func:`~neuralcleanse.detection.transfer.auto_check` says
        self.transfer_auto = transfer_check == "auto"
        self.transfer_check: DistillSettings | None = (
            transfer_check
            if isinstance(transfer_check, DistillSettings)
            else (TRANSFER_DISTILL if transfer_check is True or self.transfer_auto else None)
        )
        self.outputs: OutputKind = outputs

    def __repr__(self) -> str:
        return (
            f"NeuralCleanse(settings={self.settings!r}, threshold={self.threshold}, "
            f"statistic={self.statistic!r}, device={self.device})"
        )

    def scan(
        self,
        images: torch.Tensor | ImageDataset,
        *,
        labels: torch.Tensor | None = None,
        samples: int | None = 1000,
        scan_labels: Sequence[int] | None = None,
        source: int | None = None,
        correct_only: bool = True,
        class_names: Sequence[str] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        resume: bool = False,
        checkpoint_every: float = 30.0,
        keep_checkpoint: bool = False,
        progress: Callable[[ScanProgress], None] | None = None,
        extra_notes: Sequence[str] = (),
        data_info: dict[str, Any] | None = None,
        model_info: dict[str, Any] | None = None,
    ) -> DetectionReport:
        """Reverse-engineer the triggers and run the outlier test.

        Args:
            images: clean images in ``[0, 1]`` (a tensor or an :class:`ImageDataset`).
            labels: their true labels, if known: then only correctly classified images are used
                (``correct_only``) and attack success is measured on images of other labels.
            samples: use a seeded, class-stratified sample of this many images (``None``: all).
            scan_labels: labels to reverse-engineer (default: all the model's outputs).
            source: only images of this label are used: a source-label-specific scan (paper §VIII).
            checkpoint: a directory to save progress to; with ``resume`` a previous run continues from it.
            checkpoint_every: seconds between checkpoints (also written whenever a label finishes).
            keep_checkpoint: leave the checkpoint in place after success (the caller removes it once the
                report is saved).
            progress: called after every step.
            extra_notes: notes to carry into the report (e.g. how the model was loaded).
        """
        start = time.perf_counter()
        names = list(class_names) if class_names is not None else None
        data_names: list[str] | None = None
        where = ""  # the data set's name, to prefix messages with
        converted = None  # what was done to the images to fit the model
        if isinstance(images, ImageDataset):
            if labels is None:
                labels = images.labels
            data_names = list(images.class_names)
            where = f"{images.name}: "
            converted = images.conversion_note()
            channels, _ = images.conversions()
            if channels is not None:  # warned as a resize is (where the images are read)
                log.warning("%s: %s", images.name, channels)
            images = images.images
        _check_images(images)
        if labels is not None:
            labels = integer_labels(labels, name=where.removesuffix(": "))
            if labels.shape != (len(images),):
                raise DataError(f"{len(images)} images but labels of shape {tuple(labels.shape)}")
        if samples is not None and (not is_integer(samples) or samples < 1):
            raise SettingsError(f"samples must be at least 1, a whole number of images; got {samples!r}")
        if not isinstance(correct_only, bool):
            raise SettingsError(f"correct_only must be True or False, got {correct_only!r}")
        if isinstance(scan_labels, (torch.Tensor, np.ndarray)):
            scan_labels = scan_labels.tolist()
        if source is not None and not is_integer(source):
            raise SettingsError(f"source must be a label (an integer), got {source!r}")
        if scan_labels is not None and (
            isinstance(scan_labels, (str, bytes)) or not isinstance(scan_labels, Iterable)
            or any(not is_integer(k) for k in scan_labels)
        ):  # fmt: skip
            raise SettingsError(f"scan_labels must be a list of labels (integers), got {scan_labels!r}")
        if labels is not None and len(present := torch.unique(labels)) < 2:
            raise DataError(
                f"{where}the images are all of one class ({int(present[0]) if len(present) else 'none'}); "
                "a scan needs clean images of at least 2 classes"
            )
        num_classes = infer_num_classes(self.model, images, device=self.device)
        if names is None and data_names is not None and len(data_names) == num_classes:
            names = data_names
        names = names or [str(i) for i in range(num_classes)]
        if len(names) != num_classes:
            raise DataError(f"model has {num_classes} outputs but {len(names)} class names were given")
        if labels is not None and len(labels) and int(labels.max()) >= num_classes:
            raise DataError(
                f"{where}image labels go up to {int(labels.max())} but the model has {num_classes} outputs"
            )
        targets = list(range(num_classes)) if scan_labels is None else [int(k) for k in scan_labels]
        skipped_source = source is not None and scan_labels is None and 0 <= source < num_classes
        if skipped_source:
            # every image already has the source label: its "trigger" is empty and λ would grow without end
            targets = [k for k in targets if k != source]
        if not targets:
            raise SettingsError("no labels to scan (empty label list)")
        if scan_labels is not None:
            check_source_not_scanned(source, targets)
        bad = [k for k in targets if not 0 <= k < num_classes]
        if bad:
            raise SettingsError(f"label {bad[0]} is outside the model's {num_classes} outputs")
        if len(set(targets)) != len(targets):
            twice = next(k for k in targets if targets.count(k) > 1)
            raise SettingsError(f"the labels to scan (--labels) name label {twice} twice")
        notes: list[str] = [*extra_notes, *self._notes, *([converted] if converted else [])]
        if labels is not None:
            notes += _conflict_notes(images, labels, names)
        if scan_labels is not None and len(targets) < num_classes - int(source is not None):
            notes.append(
                f"only {len(targets)} of the model's {num_classes} labels were scanned (--labels, scan_labels): "
                "the median and MAD, and so the verdict, are over these labels only"
            )
        input_fingerprint = tensor_fingerprint(images.float())
        draw = {  # as reference.DRAW: how the images optimised on are drawn from those given
            "samples": samples if samples is not None and samples < len(images) else None,
            "source": source,
            "correct_only": bool(labels is not None and correct_only),
        }
        if self.reference is not None:  # fail before optimising, not after
            self.reference.norms_for(targets)
            notes += self.reference.check_task(num_classes=num_classes, images=input_fingerprint)
            notes += [
                f"reference scan optimised on another draw of these images ({diff}): rescan it with this "
                "scan's --samples, --source and --correct-only"
                for diff in self.reference.draw_mismatches(draw)
            ]
        total_images = len(images)
        if self.transfer_check is not None and not self.transfer_auto and total_images < AUTO_MIN_IMAGES:
            raise DataError(
                f"transfer_check (--transfer-check) distils a student on the clean images and measures it on a "
                f"tenth of them, so it needs at least {AUTO_MIN_IMAGES} ({MIN_HELD_OUT} held out), got {total_images}"
            )
        pool, pool_notes = self._select_images(
            images, labels, num_classes, names, source=source, skipped_source=skipped_source,
            correct_only=correct_only, samples=samples,
        )  # fmt: skip
        notes += pool_notes
        reference = self.reference
        if self.self_reference is not None:
            reference = self._self_reference(
                images, pool, targets, labels is not None, input_fingerprint, notes
            )
        log.info("scanning %d labels with %d images on %s", len(targets), len(pool), self.device)
        # the loss needs logits: a model that returns probabilities (a final softmax) is optimised on their log
        optimised, output_note = as_logits(self.model, pool.images[:64].to(self.device), outputs=self.outputs)
        if optimised is not self.model or self.outputs != "auto":
            notes.append(output_note)
        settings = self.settings
        if optimised is not self.model and settings.precision == "bf16":
            # the log of bf16-rounded probabilities is too coarse to optimise (a Keras softmax model was missed)
            settings = settings.replace(precision="fp32")
            notes.append(
                "precision fp32: the model returns probabilities, whose logarithm bf16 rounds too coarsely"
            )

        prints = fingerprints(self.model)  # both from one pass over the weights
        identity = {
            "model": prints.model,
            # the output scanned (--output-key) changes which images the model gets right: named first
            **({"output_key": model_info["output_key"]} if model_info and "output_key" in model_info else {}),
            "images": tensor_fingerprint(pool.images),
            "labels": targets,
            "settings": settings.to_dict(),
        }
        if optimised is not self.model:
            identity["outputs"] = "sigmoid" if isinstance(optimised, SigmoidLogits) else "probabilities"
        resumed: list[LabelState] = []
        earlier = 0.0  # seconds the scan ran before it was interrupted (its checkpoint says)
        if checkpoint is not None and resume:
            resumed = load_checkpoint(checkpoint, identity)
            earlier = checkpoint_seconds(checkpoint)
            log.info("resuming from %s: %d labels started", checkpoint, len(resumed))
            finished = sum(s.done for s in resumed)
            notes.append(
                f"resumed from a checkpoint with {finished} label{'' if finished == 1 else 's'} finished"
            )
            started = checkpoint_threads(checkpoint)
            if started is not None and started != torch.get_num_threads():
                notes.append(
                    f"the checkpoint was written with {started} torch threads, the scan resumed with "
                    f"{torch.get_num_threads()}: CPU sums are accumulated in another order, so its norms may "
                    "differ slightly from an uninterrupted scan's (the same thread count repeats them exactly)"
                )
        last_save = [time.perf_counter()]
        finished_saved: dict[Path | None, int] = {}  # labels finished at each checkpoint's last save

        def saver(where: Path | None, ident: dict[str, Any]) -> Callable[[StepSnapshot], None]:
            return lambda snap: on_step(snap, where, ident)

        def on_step(snap: StepSnapshot, where: Path | None, ident: dict[str, Any]) -> None:
            now = time.perf_counter()
            if progress is not None:
                active = tuple((s.label, s.step, s.cost, s.best_reg) for s in snap.active)
                finished = tuple((s.label, s.step, s.stop_reason) for s in snap.finished)
                progress(
                    ScanProgress(
                        len(snap.finished),
                        snap.total,
                        active,
                        snap.images,
                        now - start,
                        finished,
                        settings.max_steps,
                        settings.batch_size * settings.batches_per_step,
                    )  # fmt: skip
                )
            if where is not None and (
                now - last_save[0] >= checkpoint_every or len(snap.finished) > finished_saved.get(where, 0)
            ):
                save_checkpoint(where, ident, snap.finished + snap.active, seconds=earlier + now - start)
                last_save[0] = now
                finished_saved[where] = len(snap.finished)

        def extra_pass(
            run_labels: list[int],
            run_settings: ReverseSettings,
            ident: dict[str, Any],
            folder: str,
            patterns: dict[int, torch.Tensor] | None,
        ) -> list[LabelState]:
            """Another optimisation after the scan's own (more starts, the natural reference) on the same
            images, checkpointed in ``checkpoint/folder`` and resumed from it."""
            where = None if checkpoint is None else Path(checkpoint) / folder
            known = load_checkpoint(where, ident) if where and resume and has_checkpoint(where) else []
            return reverse_engineer(
                optimised, pool.images, run_labels, run_settings, device=self.device, resume=known,
                on_step=saver(where, ident), on_note=notes.append, patterns=patterns,
            )  # fmt: skip

        stat = get_statistic(self.statistic)
        states = reverse_engineer(
            optimised,
            pool.images,
            targets,
            settings,
            device=self.device,
            resume=resumed,
            on_step=saver(None if checkpoint is None else Path(checkpoint), identity),
            on_note=notes.append,
            threshold=self.threshold,
            max_ratio=stat.max_ratio,
            compact_ratio=stat.compact_ratio,
        )
        if settings.starts > 1:
            states = _more_starts(states, settings, identity, extra_pass, notes)
        if self.natural_reference:
            known = labels is not None
            classes = (
                pool.labels
                if known
                else predict(self.model, pool.images, device=self.device, what="the clean images")
            )
            reference = _natural_reference(
                pool.images, classes, targets, known, settings, identity, extra_pass, notes
            )
        if checkpoint is not None and not keep_checkpoint:
            remove_checkpoint(checkpoint)
        seconds = earlier + time.perf_counter() - start
        if earlier:
            notes.append(
                f"the scan's time includes the {earlier:.0f} s it ran before it was interrupted (up to its "
                "last checkpoint)"
            )
        report = self._report(states, pool, names, labels is not None, settings, reference)
        processed = sum(s.images_seen for s in states)
        run: dict[str, Any] = {
            "seconds": round(seconds, 2),
            "images_processed": processed,
            "device": str(self.device),
            "threads": torch.get_num_threads(),  # CPU norms repeat bit for bit only with the same count
            "images_given": total_images,
            "images_used": len(pool),
        }
        run["images_per_second"] = round(processed / max(seconds, 1e-9), 1)
        from ..versions import software_versions

        run["software"] = software_versions()
        model_meta = {
            "fingerprint": identity["model"],
            "weights_fingerprint": prints.weights,
            "num_classes": num_classes,
            **(model_info or {}),
        }
        data_meta = {
            "images": len(pool),
            "fingerprint": identity["images"],
            "input_fingerprint": input_fingerprint,
            **draw,
            "class_counts": pool.class_counts() if labels is not None else None,
            **(data_info or {}),
        }
        result = DetectionReport(
            verdict=report["verdict"],
            flagged=report["flagged"],
            labels=report["rows"],
            median=report["median"],
            mad=report["mad"],
            threshold=self.threshold,
            statistic=self.statistic,
            reference=reference,
            settings=_settings_record(settings),
            data=data_meta,
            model=model_meta,
            run=run,
            notes=notes + report["notes"],
            triggers=report["triggers"],
            example=pool.images[0].clone(),
        )
        check, why = self._transfer_wanted(result, images=total_images, classes=num_classes)
        if why:
            result.notes.append(why)
        if self.transfer_check is not None and check:
            if progress is not None:
                n = len(states)
                done = tuple((s.label, s.step, s.stop_reason) for s in states)
                used = min(len(images), self.transfer_check.image_cap(num_classes))
                held = held_out_count(used)
                stage = (
                    f"transfer check: distilling a student from the model on {used - held} clean images "
                    f"({held} more held out to measure it)"
                )
                progress(ScanProgress(n, n, (), processed, seconds, done, stage=stage))
            began = time.perf_counter()
            result = check_transfer(
                result, self.model, images.float(), settings=self.transfer_check, outputs=self.outputs,
                device=self.device,
            )  # fmt: skip
            run["transfer_seconds"] = round(time.perf_counter() - began, 2)
        return result

    def _transfer_wanted(
        self, report: DetectionReport, *, images: int, classes: int
    ) -> tuple[bool, str | None]:
        """Whether the transfer check runs on this scan's report, and a note when ``auto`` leaves a weak
        verdict unchecked."""
        if self.transfer_check is None:
            return False, None
        if self.transfer_auto:
            return auto_check(report, images=images, classes=classes)
        return report.verdict == "backdoored", None

    def _self_reference(
        self,
        images: torch.Tensor,
        pool: ImageDataset,
        targets: list[int],
        known: bool,
        input_fingerprint: str,
        notes: list[str],
    ) -> Reference:
        """Distil a student from the model on the clean ``images`` and scan it on the scan's own ``pool``
        with the same settings: its norms are the reference of the relative statistic."""
        assert self.self_reference is not None
        log.info("distilling a student from the model for the self-made reference")
        student = distil_student(
            self.model, images.float(), settings=self.self_reference, outputs=self.outputs, device=self.device
        )
        notes.append(f"self-made reference: {student.describe()}")
        if student.agreement < _WEAK_STUDENT:
            notes.append(
                f"the student agrees with the model on only {student.agreement:.1%} of held-out images: "
                "a weak reference (more clean images help); its norms may differ from the model's for "
                "reasons that are not a backdoor"
            )
        inner = NeuralCleanse(student.model, settings=self.settings, statistic="l1", device=self.device)
        scanned = inner.scan(
            pool.images,
            # a source-specific pool holds one class: the student's scan then goes without labels
            labels=pool.labels if known and len(torch.unique(pool.labels)) > 1 else None,
            scan_labels=targets,
            samples=None,
            correct_only=False,
            class_names=pool.class_names,
        )
        reference = Reference.from_reports([scanned])
        source = {
            **reference.sources[0],
            "model": SELF_MADE,
            "student": student.arch,
            "agreement": round(student.agreement, 4),
            "distillation": student.settings.to_dict(),
            "images": input_fingerprint,
        }
        return Reference(reference.l1_norms, [source])

    def _select_images(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        num_classes: int,
        names: list[str],
        *,
        source: int | None,
        skipped_source: bool,
        correct_only: bool,
        samples: int | None,
    ) -> tuple[ImageDataset, list[str]]:
        """The images the triggers are optimised on, and notes on how they were chosen."""
        notes: list[str] = []
        pool = ImageDataset(
            images.float(),
            labels if labels is not None else torch.zeros(len(images), dtype=torch.int64),
            num_classes,
            tuple(names),
            "scan",
        )
        if source is not None:
            if labels is None:
                raise SettingsError("a source-label scan (--source) needs the images' labels")
            if not 0 <= source < num_classes:
                raise SettingsError(f"source label {source} is outside the model's {num_classes} outputs")
            pool = pool.subset(torch.nonzero(pool.labels == source).flatten())
            if len(pool) == 0:
                raise DataError(f"no images of source label {source} to scan with")
            notes.append(f"source-specific scan: only images of label {source} ({names[source]}) were used")
            if skipped_source:
                notes.append(f"label {source} itself was not scanned: its images need no trigger to reach it")
        if labels is not None and correct_only:
            pred = predict(self.model, pool.images, device=self.device, what="the clean images")
            keep = torch.nonzero(pred == pool.labels).flatten()
            notes.append(f"{len(keep)} of the {len(pool)} images given were classified correctly")
            notes += _order_notes(pred, pool.labels, names) + _dominant_notes(pred, pool.labels, names)
            if len(keep) == 0:
                raise DataError("the model classifies none of the given images correctly")
            right = torch.unique(pool.labels[keep])
            if source is None and len(right) < 2:
                raise DataError(
                    f"the model classifies only images of label {int(right[0])} correctly ({len(keep)} of "
                    f"{len(pool)}); a scan needs correctly classified images of at least 2 classes (is it the "
                    "model for these images, with the right preprocessing? pixels go in as [0, 1]: a model that "
                    "expects 0-255 needs --input-range 0-255, one that expects normalised input --mean/--std)"
                )
            pool = pool.subset(keep)
        if samples is not None and len(pool) > samples:
            pool = pool.sample(samples, seed=self.settings.seed, stratified=labels is not None)
            kind = "seeded, class-stratified" if labels is not None else "seeded"
            notes.append(f"a {kind} sample of {samples} of them was used")
        if labels is None and num_classes >= 3:  # on the images used: the sample, not every image given
            notes += _dominant_notes(predict(self.model, pool.images, device=self.device), None, names)
        notes += _coverage_notes(pool, num_classes=num_classes, labelled=labels is not None, source=source)
        return pool, notes

    def _report(
        self,
        states: list[LabelState],
        pool: ImageDataset,
        names: list[str],
        known: bool,
        settings: ReverseSettings,
        reference: Reference | None,
    ) -> dict[str, Any]:
        def finite(t: torch.Tensor) -> torch.Tensor:  # a label stopped by NaN/inf keeps a blank trigger
            return torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0).clamp(0, 1)

        triggers = {s.label: Trigger(finite(s.mask()), finite(s.pattern()), "reversed") for s in states}
        norms = [s.test_norm() for s in states]  # the clamped mask's sum (NaN after a NaN stop) or estimate
        labels = [s.label for s in states]
        stat = get_statistic(self.statistic)
        success: dict[int, float] = {}  # each trigger's attack success, measured as the scan ran the model
        with scan_mode(self.model, settings, self.device):
            for s in states:
                victims = pool.images[pool.labels != s.label] if known else pool.images
                if len(victims) and s.stop_reason != "nan":
                    stamped = triggers[s.label].apply(victims)
                    what = f"clean images stamped with label {s.label}'s reversed trigger"
                    hits = predict(self.model, stamped, device=self.device, what=what) == s.label
                    success[s.label] = float(hits.float().mean())
        unreachable = unreachable_labels(states, success)  # left out of the test: a note below says why
        outlier = mad_outlier_test(
            norms,
            left_out=[s.label in unreachable for s in states],
            threshold=self.threshold,
            eligible=[s.reached for s in states],
            names=labels,
            statistic=self.statistic,
            **stat.test_inputs(
                reference,
                labels,
                masks={k: t.mask for k, t in triggers.items()},
                screened=[s.label for s in states if s.stop_reason == "screened"],
            ),
        )
        verdict = "inconclusive" if not outlier.conclusive else ("backdoored" if outlier.flagged else "clean")
        unsettled = unsettled_reason(
            states, outlier.flagged, max_steps=settings.max_steps, attack_threshold=settings.attack_threshold,
            success=success,
        )  # fmt: skip
        # an unsettled verdict flags nothing: flagged labels and "backdoored" go together
        flagged = [] if unsettled is not None else outlier.flagged
        rows = []
        for s, norm, index in zip(states, norms, outlier.anomaly_index, strict=True):
            asr = success.get(s.label, math.nan)
            rows.append(
                LabelResult(
                    label=s.label,
                    name=names[s.label],
                    l1_norm=norm,
                    attack_success=asr,
                    reached=s.reached,
                    steps=s.step,
                    stop_reason=s.stop_reason,
                    final_cost=s.cost,
                    best_step=s.best_step,
                    anomaly_index=index,
                    flagged=s.label in flagged,
                    images_seen=s.images_seen,
                    history=s.history,
                    screened_bound=s.screened_bound,
                    screened_upper=s.screened_upper,
                )
            )
        unreached = [s.label for s in states if not s.reached and s.label not in unreachable]
        extra = list(outlier.notes)
        if unreachable:
            extra.append(
                f"labels {label_ranges(unreachable)} were never reached: after {settings.max_steps} steps their "
                f"triggers send at most {max(success[k] for k in unreachable):.0%} of the images there; the model "
                "hardly ever gives them from these images (outputs its task does not use?), so their norms are "
                "those of masks that do not work: they are left out of the outlier test (or leave them out with --labels)"
            )
        if unreached:
            extra.append(
                f"labels {unreached} never reached {settings.attack_threshold:.0%} attack success; "
                "their L1 is that of the last mask and they cannot be flagged"
            )
        extra.extend(stat.notes(reference))
        if stat.needs_reference and reference is not None:
            refs = reference.sources
            for diff in reference.mismatches(_settings_record(settings)):
                extra.append(
                    f"reference scan with other settings ({diff}): rescan it with this scan's settings"
                )
            alarmed = [s.get("path", s.get("model")) for s in refs if s.get("flagged")]
            if alarmed and reference.trusted:  # a student is not a statement of trust
                extra.append(f"the paper's test flags labels in reference scans {alarmed} (used as trusted)")
        extra.append(
            f"misclassification loss: {'cross-entropy' if settings.loss == 'ce' else 'original linear-probability term'}"
        )
        if unsettled is not None and verdict != "inconclusive":
            verdict = "inconclusive"
            extra.insert(0, unsettled)
        if unsettled is not None and outlier.flagged:
            extra.insert(
                1, f"on these norms the outlier test would flag labels {outlier.flagged}: not a verdict"
            )
        return {
            "verdict": verdict,
            "flagged": flagged,
            "rows": rows,
            "median": outlier.median,
            "mad": outlier.mad,
            "notes": extra,
            "triggers": triggers,
        }


#: :meth:`NeuralCleanse.scan`'s extra optimisation after its own: labels, settings, checkpoint identity,
#: checkpoint sub-folder, fixed patterns
_ExtraPass = Callable[
    [list[int], ReverseSettings, dict[str, Any], str, "dict[int, torch.Tensor] | None"], list[LabelState]
]


def _more_starts(
    states: list[LabelState],
    settings: ReverseSettings,
    identity: dict[str, Any],
    extra_pass: _ExtraPass,
    notes: list[str],
) -> list[LabelState]:
    """The labels near the verdict's line optimised from ``settings.starts`` random starts each, every
    start to the end (:mod:`.starts`); each keeps its smallest trigger. Each start checkpoints in its own
    directory inside the scan's checkpoint."""
    candidates = start_candidates(states, ratio=settings.start_ratio)
    runs: list[list[LabelState]] = []
    for k in range(2, settings.starts + 1) if candidates else ():
        again = settings.replace(seed=start_seed(settings.seed, k), screening=False)
        ident = {**identity, "labels": candidates, "settings": again.to_dict(), "start": k}
        runs.append(extra_pass(candidates, again, ident, f"start-{k}", None))
    every = [*states, *(s for run in runs for s in run)]
    norms = {k: [s.l1_norm() for s in every if s.label == k] for k in candidates}
    notes.append(starts_note(candidates, norms, starts=settings.starts, ratio=settings.start_ratio))
    return keep_smallest(states, runs)


def _natural_reference(
    images: torch.Tensor,
    classes: torch.Tensor,
    targets: list[int],
    known: bool,
    settings: ReverseSettings,
    identity: dict[str, Any],
    extra_pass: _ExtraPass,
    notes: list[str],
) -> Reference:
    """Every label optimised again on the scan's images with its pattern fixed to the mean of its clean
    images (``classes``: their labels, or the model's predictions; :mod:`.natural`); those norms are the
    reference of the relative statistic. Checkpoints in ``checkpoint/natural``."""
    patterns, missing = mean_patterns(images, classes, targets)
    log.info("optimising every label again with its mean image as the pattern (natural reference)")
    states = extra_pass(targets, settings, {**identity, "natural": True}, "natural", patterns)
    norms = {s.label: s.l1_norm() for s in states}
    bad = [k for k, v in norms.items() if not math.isfinite(v)]
    if bad:
        raise DataError(f"the natural reference's optimisation of labels {bad} produced NaN/inf")
    notes.append(natural_note(known=known, missing=missing))
    unreached = [s.label for s in states if not s.reached]
    return Reference(norms, [{"model": NATURAL, "labels": targets, "unreached": unreached}])


def scan(
    model: nn.Module | Any,
    images: torch.Tensor | np.ndarray | ImageDataset | Iterable[Any],
    labels: torch.Tensor | np.ndarray | Sequence[int] | None = None,
    *,
    device: str | torch.device = "cpu",
    threshold: float = 2.0,
    statistic: Statistic | None = None,
    reference: Reference | None = None,
    self_reference: bool | DistillSettings = False,
    transfer_check: bool | DistillSettings | Literal["auto"] = "auto",
    sequential: bool = False,
    samples: int | None = 1000,
    scan_labels: Sequence[int] | None = None,
    source: int | None = None,
    class_names: Sequence[str] | None = None,
    correct_only: bool = True,
    outputs: OutputKind = "auto",
    output_key: int | str | None = None,
    progress: Callable[[ScanProgress], None] | None = None,
    **settings: Any,
) -> DetectionReport:
    """Scan an in-memory model: ``neuralcleanse.scan(model, images, labels)``.

    Args:
        model: an ``nn.Module`` taking pixels in ``[0, 1]`` (any normalisation inside it), or a
            :class:`~neuralcleanse.models.loading.LoadedModel` from :func:`neuralcleanse.load_model`.
        images: a ``(N, C, H, W)`` tensor in ``[0, 1]``, an :class:`ImageDataset`, or a DataLoader /
            iterable of ``(images, labels)`` batches.
        labels: the images' labels (for a tensor), if known.
        reference: scans of trusted models of the task (:meth:`Reference.from_reports`): the outlier
            test then measures each label against itself in those models (``statistic="relative"``).
        self_reference: no trusted model: distil a student from the model on ``images`` and use it as the
            reference (``True`` or :class:`~neuralcleanse.detection.distill.DistillSettings`).
        transfer_check: when labels are flagged, distil a student from the model on ``images`` and set
            aside the flagged labels whose trigger also moves it, as natural features do
            (:func:`~neuralcleanse.detection.transfer.check_transfer`; ``True`` or ``DistillSettings``).
            ``"auto"`` (the default): only a weak verdict of the default statistic, on a task of at most
            20 classes with at least 500 clean images (:func:`~neuralcleanse.detection.transfer.
            auto_check`); ``False``: never.
        outputs: ``"auto"`` (detect probabilities on the clean images), ``"logits"``, ``"probabilities"``
            or ``"sigmoid"``: probabilities are optimised on their logarithm; ``"sigmoid"``: one sigmoid
            probability per class, optimised on its logit (the report says so).
        output_key: for a network returning several outputs (a tuple, a dict, a named tuple), which one
            holds the class scores: an index, a key or a dotted path (as ``--output-key``).
        settings: :class:`ReverseSettings` fields (``seed``, ``loss``, ``max_steps``...);
            ``sequential=True`` starts from the original code's schedule instead of the batched default.
    """
    try:
        cfg = ReverseSettings.original(**settings) if sequential else ReverseSettings(**settings)
    except TypeError as exc:
        raise SettingsError(f"unknown scan setting: {exc}") from None
    net = as_network(model, "nc.scan")
    if output_key is not None:  # an in-memory network with several outputs: the class scores are one
        net = OutputPick(net, parse_output(output_key))
    notes = list(getattr(model, "notes", []))
    if isinstance(images, np.ndarray):  # one array of images, as a tensor would be
        images = _tensor(images, "the images")
    if labels is not None and not isinstance(labels, torch.Tensor):
        labels = _tensor(np.asarray(labels), "the labels")
    if not isinstance(images, (torch.Tensor, ImageDataset)):
        images, labels = _collect_batches(images)
    if isinstance(images, torch.Tensor) and images.dtype in (torch.float64, torch.float16, torch.bfloat16):
        images = images.float()  # the optimisation runs in float32; a model in another type casts itself
    model_info = None
    if isinstance(model, LoadedModel):  # a loaded file: record it, and check its declared input range
        model_info = _loaded_info(model, images, labels, torch.device(device))
        if "input_range_doubt" in model_info:
            notes.append(model_info["input_range_doubt"])
    nc = NeuralCleanse(
        net,
        settings=cfg,
        threshold=threshold,
        statistic=statistic,
        reference=reference,
        outputs=outputs,
        device=device,
        self_reference=self_reference,
        transfer_check=transfer_check,
    )
    return nc.scan(
        images,
        labels=labels,
        samples=samples,
        scan_labels=scan_labels,
        source=source,
        correct_only=correct_only,
        class_names=class_names,
        progress=progress,
        extra_notes=notes,
        model_info=model_info,
    )


def _loaded_info(
    model: LoadedModel, images: torch.Tensor | ImageDataset, labels: torch.Tensor | None, device: torch.device
) -> dict[str, Any]:
    """:meth:`LoadedModel.scan_info` on the labelled clean images when they fit the model as given (images
    the scan must first convert, or without labels, are not checked here; the scan says what is wrong)."""
    x, y = (images.images, images.labels) if isinstance(images, ImageDataset) else (images, labels)
    if y is None or x.ndim != 4 or not x.is_floating_point() or len(y) != len(x):
        return model.describe()
    if model.input_shape is not None and tuple(x.shape[1:]) != tuple(model.input_shape):
        return model.describe()
    return model.scan_info(x, y, device=device)[0]


def _tensor(value: Any, what: str) -> torch.Tensor:
    """Images or labels as a tensor, or a one-line error saying what they are (``what``: "the labels")."""
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{what} are not numbers ({type(value).__name__}: {first_line(exc)})") from None


def _settings_record(settings: ReverseSettings) -> dict[str, Any]:
    """The settings as a report records them."""
    return {**settings.to_dict(), "mode": "sequential" if settings.sequential else "batched"}


def _collect_batches(batches: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(images, labels)`` batches (a DataLoader) or bare image batches → one tensor each."""
    xs, ys = [], []
    for batch in batches:
        if isinstance(batch, dict):
            raise DataError(
                f"the data loader yields dicts (keys {', '.join(map(repr, batch))}): give batches of images "
                "or (images, labels) pairs"
            )
        if isinstance(batch, (tuple, list)):
            xs.append(_tensor(batch[0], "a batch's images"))
            if len(batch) > 1:
                ys.append(_tensor(batch[1], "a batch's labels"))
        else:
            xs.append(_tensor(batch, "a batch's images"))
    if not xs:
        raise DataError("the data loader yielded no batches")
    if ys and len(ys) != len(xs):
        raise DataError("some batches have labels and some do not")
    return torch.cat(xs), (torch.cat(ys) if ys else None)
