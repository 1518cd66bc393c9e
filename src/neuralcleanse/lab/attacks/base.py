"""What every attack hands back, and the shared data-poisoning route most attacks take."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from ...data.dataset import DatasetSplits, ImageDataset
from ...triggers import Trigger
from ..training import TrainHistory, TrainProgress, TrainSettings, train_classifier
from .poison import poison_dataset, stamp_cover

__all__ = ["Attack", "PlantedTrigger", "Planting", "PoisonSpec", "poison_and_train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PlantedTrigger:
    """One planted backdoor: stamping ``trigger`` sends inputs (of ``source_labels``, or any) to ``target``."""

    target: int
    trigger: Trigger
    source_labels: tuple[int, ...] | None = None


@dataclass
class Planting:
    """What an attack did while training: the planted triggers and how many training images it changed."""

    backdoors: list[PlantedTrigger]
    history: TrainHistory
    poisoned: int = 0
    covered: int = 0
    details: dict[str, object] = field(default_factory=dict)


class Attack(Protocol):
    """An attack trains a model on a task and plants one or more backdoors in it."""

    @property
    def name(self) -> str:
        """Short name recorded in the model card."""
        ...

    @property
    def targets(self) -> list[int]:
        """The labels the attack infects."""
        ...

    def check(self, num_classes: int, input_shape: tuple[int, int, int]) -> object:
        """Validate against a task before any training time is spent (one-line errors)."""

    def plant(
        self,
        model: nn.Module,
        data: DatasetSplits,
        training: TrainSettings,
        *,
        device: torch.device,
        progress: Callable[[TrainProgress], None] | None = None,
    ) -> Planting:
        """Train ``model`` in place on ``data`` with the backdoor(s) planted."""
        ...


@dataclass(frozen=True, eq=False)
class PoisonSpec:
    """One backdoor to poison a training set with."""

    target: int
    trigger: Trigger
    rate: float
    source_labels: tuple[int, ...] | None = None
    cover_rate: float = 0.0


def poison_many(
    data: ImageDataset, specs: Sequence[PoisonSpec], *, seed: int
) -> tuple[ImageDataset, int, int]:
    """Poison ``data`` with every spec, each on images no other spec has touched.

    Returns the poisoned set, the number of relabelled images and of cover images (stamped, label kept).
    """
    used = torch.zeros(0, dtype=torch.int64)
    poisoned = covered = 0
    for i, spec in enumerate(specs):
        p = poison_dataset(
            data,
            spec.trigger,
            target=spec.target,
            rate=spec.rate,
            seed=seed + 7919 * i,
            source_labels=spec.source_labels,
            exclude=used,
        )
        data, used = p.dataset, torch.cat([used, p.indices])
        poisoned += len(p.indices)
        if spec.source_labels is not None and spec.cover_rate > 0:
            c = stamp_cover(
                data,
                spec.trigger,
                target=spec.target,
                source_labels=spec.source_labels,
                rate=spec.cover_rate,
                seed=seed + 7919 * i,
                exclude=used,
            )
            data, used = c.dataset, torch.cat([used, c.indices])
            covered += len(c.indices)
        log.info("backdoor %d: %d images relabelled to %d", i, len(p.indices), spec.target)
    return data, poisoned, covered


def poison_and_train(
    model: nn.Module,
    data: DatasetSplits,
    training: TrainSettings,
    specs: Sequence[PoisonSpec],
    *,
    device: torch.device,
    progress: Callable[[TrainProgress], None] | None = None,
) -> Planting:
    """The data-poisoning route (BadNets and its variants): poison the training set, train on it."""
    train_set, poisoned, covered = poison_many(data.train, specs, seed=training.seed)
    history = train_classifier(model, train_set, training, device=device, progress=progress)
    planted = [PlantedTrigger(s.target, s.trigger, s.source_labels) for s in specs]
    return Planting(planted, history, poisoned, covered)
