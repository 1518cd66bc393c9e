"""Attacks that plant backdoors, used to build the infected models detection is evaluated on."""

from .badnets import DEFAULT_BADNETS_TRIGGER, BadNets, MultiBackdoor
from .base import Attack, PlantedTrigger, Planting
from .poison import PoisonedData, poison_dataset, stamp_cover
from .registry import ATTACKS, build_attack
from .trojan import Trojan, select_neurons, square_mask, watermark_mask

__all__ = [
    "ATTACKS",
    "DEFAULT_BADNETS_TRIGGER",
    "Attack",
    "BadNets",
    "MultiBackdoor",
    "PlantedTrigger",
    "Planting",
    "PoisonedData",
    "Trojan",
    "build_attack",
    "poison_dataset",
    "select_neurons",
    "square_mask",
    "stamp_cover",
    "watermark_mask",
]
