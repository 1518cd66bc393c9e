"""The lab: builds the clean and infected models detection is evaluated on — attacks that plant
backdoors, seeded training, recipes (dataset + architecture + attack + training → a model with its
card) and model zoos built and scanned from a spec. The scanner (detection, validation, mitigation,
report) never needs it, and detection never imports it."""

from .attacks import ATTACKS, Attack, BadNets, MultiBackdoor, Trojan, build_attack, poison_dataset
from .recipes import Recipe, train_recipe
from .training import TrainHistory, TrainProgress, TrainSettings, train_classifier
from .zoo import ZooEntry, ZooRow, ZooSpec, default_spec_path, load_spec, parse_spec

__all__ = [
    "ATTACKS",
    "Attack",
    "BadNets",
    "MultiBackdoor",
    "Recipe",
    "TrainHistory",
    "TrainProgress",
    "TrainSettings",
    "Trojan",
    "ZooEntry",
    "ZooRow",
    "ZooSpec",
    "build_attack",
    "default_spec_path",
    "load_spec",
    "parse_spec",
    "poison_dataset",
    "train_classifier",
    "train_recipe",
]
