"""BadNets (Gu et al. 2017): a visible patch, a fraction of the training set relabelled to the target.

The same data-poisoning route covers the paper's harder cases: a complex (random) pattern, a large
trigger, a blended whole-image trigger, a source-label-specific backdoor, and — with
:class:`MultiBackdoor` — several infected labels or several triggers for one label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ...data.dataset import DatasetSplits, ImageDataset
from ...errors import SettingsError
from ...triggers import Trigger
from ..training import TrainProgress, TrainSettings
from .base import Planting, PoisonSpec, poison_and_train
from .poison import PoisonedData, check_label, check_rate, poison_dataset

__all__ = ["BadNets", "MultiBackdoor", "DEFAULT_BADNETS_TRIGGER"]

#: the paper's BadNets trigger: a white square in the bottom-right corner, one pixel from the edges
DEFAULT_BADNETS_TRIGGER = "square:size=4,at=bottom-right,margin=1,pattern=white"


@dataclass(frozen=True, kw_only=True)
class BadNets:
    """A BadNets attack toward ``target``.

    Args:
        target: the label stamped inputs should be sent to.
        trigger: a trigger spec (see :mod:`neuralcleanse.triggers`).
        poison_rate: fraction of the training set that is stamped and relabelled (paper: 10–20%).
        source_labels: only images of these labels are poisoned: a source-label-specific backdoor
            (paper §VIII); stamped images of other labels keep their label (``cover_rate``).
        cover_rate: fraction of the training set stamped *without* relabelling, drawn from labels that are
            neither the target nor a source (default: ``poison_rate`` when ``source_labels`` is given).

    Examples::

        >>> attack = BadNets(target=0, poison_rate=0.1)
        >>> poisoned, trigger = attack.poison(train_set, seed=0)
    """

    target: int
    trigger: str = DEFAULT_BADNETS_TRIGGER
    poison_rate: float = 0.1
    source_labels: tuple[int, ...] | None = None
    cover_rate: float | None = None
    name: str = "badnets"

    def __post_init__(self) -> None:
        check_rate(self.poison_rate)
        if self.cover_rate is not None and self.cover_rate != 0:
            check_rate(self.cover_rate, what="cover rate")
        check_label(self.target)
        if self.source_labels is not None:
            for k in self.source_labels:
                check_label(k, what="source label")
            if not self.source_labels:
                raise SettingsError("source_labels is empty: give at least one source label or none")
            if self.target in self.source_labels:
                raise SettingsError(
                    f"source labels {list(self.source_labels)} include the target {self.target}"
                )

    @property
    def targets(self) -> list[int]:
        return [self.target]

    def build_trigger(self, input_shape: tuple[int, int, int]) -> Trigger:
        return Trigger.from_spec(self.trigger, input_shape)

    def check(self, num_classes: int, input_shape: tuple[int, int, int]) -> Trigger:
        """Validate against a task before any training time is spent; returns the trigger."""
        if self.target >= num_classes:
            raise SettingsError(f"target label {self.target} is outside [0, {num_classes})")
        for s in self.source_labels or ():
            if not 0 <= s < num_classes:
                raise SettingsError(f"source label {s} is outside [0, {num_classes})")
        return self.build_trigger(input_shape)

    def spec(self, input_shape: tuple[int, int, int]) -> PoisonSpec:
        cover = (
            self.cover_rate
            if self.cover_rate is not None
            else (self.poison_rate if self.source_labels else 0.0)
        )
        return PoisonSpec(
            self.target, self.build_trigger(input_shape), self.poison_rate, self.source_labels, cover
        )

    def poison(self, data: ImageDataset, *, seed: int) -> tuple[PoisonedData, Trigger]:
        """Poison one dataset (without cover samples); returns it and the trigger."""
        trigger = self.check(data.num_classes, data.input_shape)
        poisoned = poison_dataset(
            data,
            trigger,
            target=self.target,
            rate=self.poison_rate,
            seed=seed,
            source_labels=self.source_labels,
        )
        return poisoned, trigger

    def plant(
        self,
        model: nn.Module,
        data: DatasetSplits,
        training: TrainSettings,
        *,
        device: torch.device,
        progress: Callable[[TrainProgress], None] | None = None,
    ) -> Planting:
        self.check(data.num_classes, data.input_shape)
        return poison_and_train(
            model, data, training, [self.spec(data.input_shape)], device=device, progress=progress
        )


@dataclass(frozen=True, kw_only=True)
class MultiBackdoor:
    """Several backdoors planted in one model, each on its own poisoned images (paper §VII-C).

    Distinct targets give *several infected labels*; one target with several triggers gives *several
    triggers for one label*.
    """

    backdoors: tuple[BadNets, ...]
    name: str = "multi"

    def __post_init__(self) -> None:
        if len(self.backdoors) < 1:
            raise SettingsError("a multi-backdoor attack needs at least one backdoor")
        if sum(b.poison_rate for b in self.backdoors) >= 1:
            raise SettingsError("the backdoors' poison rates add up to 1 or more")

    @property
    def targets(self) -> list[int]:
        return sorted({b.target for b in self.backdoors})

    def check(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        triggers = [b.check(num_classes, input_shape) for b in self.backdoors]
        for i, a in enumerate(triggers):
            for j in range(i):
                if torch.equal(a.mask, triggers[j].mask) and torch.equal(a.pattern, triggers[j].pattern):
                    raise SettingsError(f"backdoors {j} and {i} use the same trigger")

    def plant(
        self,
        model: nn.Module,
        data: DatasetSplits,
        training: TrainSettings,
        *,
        device: torch.device,
        progress: Callable[[TrainProgress], None] | None = None,
    ) -> Planting:
        self.check(data.num_classes, data.input_shape)
        specs = [b.spec(data.input_shape) for b in self.backdoors]
        return poison_and_train(model, data, training, specs, device=device, progress=progress)
