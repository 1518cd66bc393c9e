"""Attacks that plant backdoors, used to build the infected models detection is evaluated on."""

from .badnets import DEFAULT_BADNETS_TRIGGER, BadNets
from .poison import PoisonedData, poison_dataset

__all__ = ["DEFAULT_BADNETS_TRIGGER", "BadNets", "PoisonedData", "poison_dataset"]
