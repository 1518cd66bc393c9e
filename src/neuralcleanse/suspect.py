"""A suspected backdoor: what validation and every mitigation work on."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._values import is_integer
from .errors import DataError, ModelError, SettingsError
from .triggers import Trigger

if TYPE_CHECKING:
    from .data.dataset import ImageDataset

__all__ = ["SuspectedBackdoor"]


@dataclass(frozen=True)
class SuspectedBackdoor:
    """A label a scan flagged and what is known of its trigger.

    Attributes:
        label: the target label.
        reversed_trigger: the trigger the scan reverse-engineered for it.
        real_trigger: the trigger actually planted, when known (a lab model's card says); validation
            compares with it and mitigations measure it too.
        source_labels: for a source-specific backdoor, the labels whose images it works on (attack success
            is measured on those only); ``None``: every other label.

    Examples::

        backdoor = SuspectedBackdoor(label, report.triggers[label])
        pruned, result = prune_neurons(model, data, backdoor)
    """

    label: int
    reversed_trigger: Trigger
    real_trigger: Trigger | None = None
    source_labels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.source_labels is not None and not isinstance(self.source_labels, tuple):
            object.__setattr__(self, "source_labels", tuple(self.source_labels))

    @property
    def sources(self) -> list[int] | None:
        """``source_labels`` as a list (what the metrics take), or ``None``."""
        return None if self.source_labels is None else list(self.source_labels)

    @classmethod
    def of(
        cls,
        backdoor: SuspectedBackdoor | Trigger,
        label: int | None = None,
        real_trigger: Trigger | None = None,
        source_labels: Sequence[int] | None = None,
    ) -> SuspectedBackdoor:
        """``backdoor`` itself, or one built from a reversed trigger and ``label`` (the keyword form the
        mitigation functions also accept: ``prune_neurons(model, data, trigger, label=0)``)."""
        if isinstance(backdoor, SuspectedBackdoor):
            if label is not None or real_trigger is not None or source_labels is not None:
                raise SettingsError(
                    "give either a SuspectedBackdoor or a reversed trigger with label=, real_trigger=, "
                    "source_labels=, not both"
                )
            return backdoor
        if not isinstance(backdoor, Trigger):
            raise SettingsError(
                f"the backdoor must be a SuspectedBackdoor or a reversed Trigger (report.triggers[label]), "
                f"not a {type(backdoor).__name__}"
            )
        if label is None:
            raise SettingsError("a reversed trigger needs the label it targets (label=)")
        sources = None if source_labels is None else tuple(_label(k, "source label") for k in source_labels)
        return cls(_label(label, "label"), backdoor, real_trigger, sources)

    def work(
        self, data: Any, device: torch.device | str, *, measured: bool = True
    ) -> tuple[ImageDataset, torch.device]:
        """What validation and the mitigations work on, checked: labelled clean images (an
        :class:`ImageDataset`) and an available device; one-line errors otherwise. Where the attack is
        ``measured`` on ``data``, each of the backdoor's source labels must have images there."""
        from .data.dataset import DatasetSplits, ImageDataset
        from .device import resolve_device

        if isinstance(data, DatasetSplits):
            raise SettingsError("give one split of the data set (data.test), not the whole DatasetSplits")
        if not isinstance(data, ImageDataset):
            raise SettingsError(
                f"the clean images must be an ImageDataset with labels (nc.load_images, nc.load_dataset(...)"
                f".test, or ImageDataset(images=..., labels=..., num_classes=...)), not a {type(data).__name__}"
            )
        absent = sorted(set(self.source_labels or ()) - set(torch.unique(data.labels).tolist()))
        if measured and absent:
            raise DataError(
                f"{data.name}: no image of source label {', '.join(map(str, absent))} to measure the attack on"
            )
        return data, resolve_device(device)


def as_network(model: Any, what: str) -> nn.Module:
    """The network to work on: an ``nn.Module`` as given, the one :func:`~neuralcleanse.load_model`
    returned (its declared preprocessing included) or a trained :class:`~neuralcleanse.ModelBundle`'s; a
    one-line :class:`ModelError` for anything else."""
    from .models import ModelBundle
    from .models.loading import LoadedModel

    if isinstance(model, (LoadedModel, ModelBundle)):
        return model.model
    if isinstance(model, (str, os.PathLike)):
        raise ModelError(f"{model}: {what} takes a model, not a path: load it with nc.load_model first")
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"{what} takes a torch nn.Module or nc.load_model's result, not a {type(model).__name__}"
        )
    return model


def _label(value: Any, what: str) -> int:
    """A label given as an integer (a whole number of another type is not guessed at)."""
    if not is_integer(value):
        raise SettingsError(f"{what} must be an integer, got {value!r}")
    return int(value)
