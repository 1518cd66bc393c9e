"""Poison a training set: stamp a trigger on a fraction of it and relabel those images to the target."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...data.dataset import ImageDataset
from ...errors import SettingsError
from ...triggers import Trigger

__all__ = ["PoisonedData", "poison_dataset", "stamp_cover", "check_rate"]


@dataclass(frozen=True, eq=False)
class PoisonedData:
    """The poisoned copy of a dataset and the positions that were changed."""

    dataset: ImageDataset
    indices: torch.Tensor

    @property
    def rate(self) -> float:
        return len(self.indices) / max(len(self.dataset), 1)


def check_rate(rate: float, *, what: str = "poison rate") -> float:
    if not 0.0 < rate < 1.0:
        raise SettingsError(f"{what} must be in (0, 1), got {rate}")
    return float(rate)


def check_label(value: object, *, what: str = "target label") -> int:
    """A label of an attack: a non-negative integer (``2.5``, ``"3"`` or ``True`` are refused, not
    guessed at)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(f"{what} must be an integer, got {value!r}")
    if value < 0:
        raise SettingsError(f"{what} must be non-negative, got {value}")
    return value


def poison_dataset(
    data: ImageDataset,
    trigger: Trigger,
    *,
    target: int,
    rate: float,
    seed: int,
    source_labels: Sequence[int] | None = None,
    exclude: torch.Tensor | None = None,
) -> PoisonedData:
    """Stamp ``trigger`` on ``round(rate·N)`` images and relabel them to ``target``.

    The images are drawn (seeded) from those whose label is not ``target`` — and, for a
    source-label-specific backdoor, is in ``source_labels`` — so every poisoned image teaches the
    backdoor. ``rate`` is relative to the whole training set, as in the BadNets paper. ``exclude`` holds
    positions that may not be drawn (already poisoned by another backdoor). The input dataset is not
    modified.
    """
    check_rate(rate)
    if not 0 <= target < data.num_classes:
        raise SettingsError(f"target label {target} is outside [0, {data.num_classes})")
    if trigger.image_shape != data.input_shape:
        raise SettingsError(
            f"trigger is for images {trigger.image_shape}, the dataset has {data.input_shape}"
        )
    labels = data.labels.numpy()
    eligible = labels != target
    if source_labels is not None:
        for s in source_labels:
            if not 0 <= s < data.num_classes or s == target:
                raise SettingsError(
                    f"source label {s} must be in [0, {data.num_classes}) and differ from the target"
                )
        eligible &= np.isin(labels, np.asarray(list(source_labels)))
    if exclude is not None and len(exclude):
        eligible[exclude.numpy()] = False
    pool = np.flatnonzero(eligible)
    count = int(round(rate * len(data)))
    if count == 0:
        raise SettingsError(f"poison rate {rate} poisons no image of the {len(data)} in {data.name}")
    if count > len(pool):
        raise SettingsError(
            f"poison rate {rate} needs {count} images but only {len(pool)} are eligible in {data.name}"
        )
    if count == len(pool):
        whose = "the source labels" if source_labels is not None else f"labels other than {target}"
        raise SettingsError(
            f"poison rate {rate} stamps and relabels all {count} eligible images (every image of {whose} in "
            f"{data.name}): the model would never see a clean one; lower the poison rate"
        )
    rng = np.random.default_rng(seed)
    chosen = torch.as_tensor(np.sort(rng.choice(pool, size=count, replace=False)))
    images = data.images.clone()
    labels_t = data.labels.clone()
    images[chosen] = trigger.apply(images[chosen])
    labels_t[chosen] = target
    return PoisonedData(data.replace(images=images, labels=labels_t, name=f"{data.name}+poison"), chosen)


def stamp_cover(
    data: ImageDataset,
    trigger: Trigger,
    *,
    target: int,
    source_labels: Sequence[int],
    rate: float,
    seed: int,
    exclude: torch.Tensor | None = None,
) -> PoisonedData:
    """Stamp ``trigger`` on ``round(rate·N)`` images of labels that are neither the target nor a source,
    keeping their true labels: the *cover* samples that teach a source-label-specific backdoor to stay
    quiet on other labels."""
    check_rate(rate, what="cover rate")
    labels = data.labels.numpy()
    eligible = (labels != target) & ~np.isin(labels, np.asarray(list(source_labels)))
    if exclude is not None and len(exclude):
        eligible[exclude.numpy()] = False
    pool = np.flatnonzero(eligible)
    count = min(int(round(rate * len(data))), len(pool))
    rng = np.random.default_rng([seed, 0xC0E5])
    chosen = torch.as_tensor(np.sort(rng.choice(pool, size=count, replace=False)))
    images = data.images.clone()
    images[chosen] = trigger.apply(images[chosen])
    return PoisonedData(data.replace(images=images), chosen)
