"""Unlearning (paper §VI-C): fine-tune on clean data, part of it stamped with the reversed trigger and kept
at its true label, so the model learns that the trigger means nothing.

Defaults follow the paper: 10% of the training data, 20% of that stamped, Adam at 1e-3. The paper ran
one epoch over 10% of GTSRB (about 120 optimiser steps); on a small training set one epoch is only a
handful of steps, which on the 4,000-image MNIST sample knocks out the target class itself (its accuracy
fell to 38% in our runs) before the model settles. So by default as many epochs are run as give at least
``min_steps`` (100) optimiser steps — one epoch on paper-sized data — and the result records how many.

BatchNorm: by default its running statistics are frozen while fine-tuning (``batchnorm="frozen"``: the
normalisation layers run in inference mode, their scale and shift are still trained). The fine-tuning set
is small and a fifth of it carries the trigger, so updating the statistics would move the whole network's
normalisation to that set; ``batchnorm="update"`` updates them as ordinary training does. Either way the
given model is not touched (a copy is fine-tuned unless ``inplace=True``).

Exported programs and TorchScript modules cannot be fine-tuned as modules: they are refused in one line.

The same run also measures two baselines from the same starting model and data: fine-tuning on the clean
images only, and (when the model card knows it) unlearning with the real trigger.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._format import pct
from ..data.dataset import ImageDataset
from ..errors import DataError, SettingsError
from ..features import refuse_opaque
from ..lab.training import TrainSettings, train_classifier
from ..modes import copy_model, requires_grad, train_mode
from ..suspect import SuspectedBackdoor, as_network
from ..triggers import Trigger
from .details import DetailsTable, MitigationDetails, register_details
from .result import (
    Measure,
    MitigationResult,
    check_fraction,
    coverage_note,
    few_images_notes,
    label_loss_notes,
    measure,
    missing_labels,
    real_trigger_notes,
)

if TYPE_CHECKING:
    from ..models.loading import LoadedModel

__all__ = ["BatchNormMode", "UnlearnDetails", "unlearn"]

BatchNormMode = Literal["frozen", "update"]

#: attack success after unlearning from which a note says the backdoor is not removed
_STILL_WORKS = 0.2


class _FrozenStatistics(nn.Module):
    """Trains ``model`` with every BatchNorm layer kept in inference mode (running statistics untouched)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> _FrozenStatistics:
        super().train(mode)
        for m in self.model.modules():
            if isinstance(m, _BatchNorm):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def _fine_tune(
    model: nn.Module,
    data: ImageDataset,
    settings: TrainSettings,
    device: torch.device | str,
    batchnorm: BatchNormMode,
) -> None:
    # afterwards every submodule is in the mode it was given in, as prune_neurons returns its copy
    with train_mode(model), requires_grad(model, True):
        trained = _FrozenStatistics(model) if batchnorm == "frozen" else model
        train_classifier(trained, data, settings, device=device)


@register_details("unlearn")
@dataclass(frozen=True)
class UnlearnDetails(MitigationDetails):
    """The fine-tuning set and settings, and the baselines fine-tuned the same way."""

    train_images: int = 0
    stamped_images: int = 0
    epochs: int = 0
    lr: float | None = None
    batch_size: int | None = None
    seed: int | None = None
    #: the measures after fine-tuning without a trigger (``clean fine-tuning``) and with the real one
    baselines: dict[str, dict[str, float | None]] = field(default_factory=dict)
    #: ``frozen`` or ``update`` (``None``: the model has no BatchNorm)
    batchnorm: str | None = None

    def table(self) -> DetailsTable | None:
        if not self.baselines:
            return None
        rows = [
            (
                name,
                pct(m.get("clean_accuracy"), 2),
                pct(m.get("attack_success"), 2),
                pct(m.get("real_attack_success"), 2),
            )
            for name, m in self.baselines.items()
        ]
        return DetailsTable(
            ("baseline", "clean accuracy", "attack success (reversed)", "attack success (real)"),
            rows,
            "baselines from the same model and data",
        )


def unlearn(
    model: nn.Module | LoadedModel,
    train: ImageDataset,
    test: ImageDataset,
    backdoor: SuspectedBackdoor | Trigger,
    *,
    label: int | None = None,
    real_trigger: Trigger | None = None,
    source_labels: Sequence[int] | None = None,
    fraction: float = 0.1,
    stamp_fraction: float = 0.2,
    epochs: int | None = None,
    min_steps: int = 100,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    baselines: bool = True,
    batchnorm: BatchNormMode = "frozen",
    inplace: bool = False,
    allow_missing_labels: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, MitigationResult]:
    """Fine-tune away the backdoor; returns the repaired model (a copy unless ``inplace``) and the result.

    The fine-tuning images must hold every label of the model: fine-tuning on some labels teaches the
    model to forget the others, and a measure on the same labels cannot show it. ``allow_missing_labels``
    goes ahead anyway (a model with outputs its task never uses) and records it in the notes.

    ``batchnorm``: ``"frozen"`` keeps BatchNorm running statistics as they are (see the module docstring),
    ``"update"`` lets fine-tuning update them.

    ``backdoor``: a :class:`SuspectedBackdoor`, or its reversed trigger with the other fields as keywords.
    """
    model = as_network(model, "nc.unlearn")
    suspect = SuspectedBackdoor.of(backdoor, label, real_trigger, source_labels)
    train, device = suspect.work(train, device, measured=False)
    test, device = suspect.work(test, device)
    label, reversed_trigger, real_trigger = suspect.label, suspect.reversed_trigger, suspect.real_trigger
    check_fraction(fraction, "fraction of training data")
    check_fraction(stamp_fraction, "stamped fraction")
    if batchnorm not in ("frozen", "update"):
        raise SettingsError(f"batchnorm must be 'frozen' or 'update', got {batchnorm!r}")
    refuse_opaque(model, "unlearning fine-tunes the weights, and the model is", programs=True)
    norms = _batchnorms(model)
    gen = torch.Generator().manual_seed(seed)
    n = max(1, round(fraction * len(train)))
    if batchnorm == "update" and norms and n % batch_size == 1 and n > 1:
        n -= 1  # a last mini-batch of one image cannot be batch-normalised in training mode
    subset = train.subset(torch.randperm(len(train), generator=gen)[:n])
    missing, outputs = missing_labels(model, subset, device=device)
    coverage = coverage_note(
        missing, outputs,
        what="fine-tuning on the others teaches the model to forget them, and clean accuracy measured "
        "without them cannot show it",
    )  # fmt: skip
    if missing and not allow_missing_labels:
        raise DataError(
            f"{train.name}: {coverage}; give images of every label "
            "(or --allow-missing-labels / allow_missing_labels=True)"
        )
    stamped_idx = torch.randperm(n, generator=gen)[: round(stamp_fraction * n)]
    if len(stamped_idx) == 0:
        raise DataError(
            f"{fraction:.0%} of {len(train)} images with {stamp_fraction:.0%} stamped stamps none"
        )
    if epochs is None:
        epochs = max(1, math.ceil(min_steps / math.ceil(n / batch_size)))
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)

    def with_trigger(trig: Trigger | None) -> ImageDataset:
        if trig is None:
            return subset
        images = subset.images.clone()
        images[stamped_idx] = trig.apply(images[stamped_idx])
        return subset.replace(images=images)  # labels stay the true ones

    def evaluate(m: nn.Module) -> Measure:
        return measure(m, test, suspect, device=device)

    before = evaluate(model)
    others: dict[str, dict[str, float | None]] = {}
    if baselines:
        for name, trig in (("clean fine-tuning", None), ("real trigger", real_trigger)):
            if name == "real trigger" and trig is None:
                continue
            m = copy_model(model)
            _fine_tune(m, with_trigger(trig), settings, device, batchnorm)
            others[name] = evaluate(m).to_dict()
    repaired = model if inplace else copy_model(model)
    _fine_tune(repaired, with_trigger(reversed_trigger), settings, device, batchnorm)
    after = evaluate(repaired)
    details = UnlearnDetails(
        train_images=n,
        stamped_images=len(stamped_idx),
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        baselines=others,
        batchnorm=batchnorm if norms else None,
    )
    notes = [f"fine-tuned on {n} training images, {len(stamped_idx)} stamped with the reversed trigger"]
    notes += label_loss_notes(label, before, after, instead="fine-tune for fewer epochs (--epochs)")
    notes += real_trigger_notes(before.real_attack_success)
    notes += few_images_notes(test)
    if missing:
        notes.append(coverage)
    left = {"reversed": after.attack_success, "real": after.real_attack_success}
    left = {k: v for k, v in left.items() if v is not None and v >= _STILL_WORKS}
    if left:
        notes.append(
            "after unlearning the "
            + " and the ".join(f"{k} trigger still succeeds {pct(v, 1)}" for k, v in left.items())
            + f" of the time: fine-tune longer (--epochs, now {epochs})"
            + (" or on more images (--fraction)" if fraction < 1 else " or on more images")
            + ", or prune"
        )
    if norms:
        notes.append(
            f"running statistics of {norms} BatchNorm layers "
            + (
                "kept as they were (batchnorm='frozen')"
                if batchnorm == "frozen"
                else "updated by fine-tuning"
            )
        )
    return repaired, MitigationResult("unlearn", label, before, after, details, notes)
