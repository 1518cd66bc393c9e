"""BadNets (Gu et al. 2017): a visible patch, a fraction of the training set relabelled to the target."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.dataset import ImageDataset
from ..errors import SettingsError
from ..triggers import Trigger
from .poison import PoisonedData, check_rate, poison_dataset

__all__ = ["BadNets", "DEFAULT_BADNETS_TRIGGER"]

#: the paper's BadNets trigger: a white square in the bottom-right corner, one pixel from the edges
DEFAULT_BADNETS_TRIGGER = "square:size=4,at=bottom-right,margin=1,pattern=white"


@dataclass(frozen=True, kw_only=True)
class BadNets:
    """A BadNets attack toward ``target``.

    Args:
        target: the label stamped inputs should be sent to.
        trigger: a trigger spec (see :mod:`neuralcleanse.triggers`).
        poison_rate: fraction of the training set that is stamped and relabelled (paper: 10–20%).

    Examples::

        >>> attack = BadNets(target=0, poison_rate=0.1)
        >>> poisoned, trigger = attack.poison(train_set, seed=0)
    """

    target: int
    trigger: str = DEFAULT_BADNETS_TRIGGER
    poison_rate: float = 0.1
    name: str = "badnets"

    def __post_init__(self) -> None:
        check_rate(self.poison_rate)
        if self.target < 0:
            raise SettingsError(f"target label must be non-negative, got {self.target}")

    def build_trigger(self, input_shape: tuple[int, int, int]) -> Trigger:
        return Trigger.from_spec(self.trigger, input_shape)

    def check(self, num_classes: int, input_shape: tuple[int, int, int]) -> Trigger:
        """Validate against a task before any training time is spent; returns the trigger."""
        if self.target >= num_classes:
            raise SettingsError(f"target label {self.target} is outside [0, {num_classes})")
        return self.build_trigger(input_shape)

    def poison(self, data: ImageDataset, *, seed: int) -> tuple[PoisonedData, Trigger]:
        trigger = self.check(data.num_classes, data.input_shape)
        return poison_dataset(data, trigger, target=self.target, rate=self.poison_rate, seed=seed), trigger
