"""The paper's architectures, model cards and safe model directories."""

from .architectures import ARCHITECTURES, GTSRBNet, MNISTNet, build_model
from .card import ModelCard, PlantedBackdoor
from .store import ModelBundle, load_model_dir, load_state_dict_strict, save_model_dir

__all__ = [
    "ARCHITECTURES",
    "GTSRBNet",
    "MNISTNet",
    "ModelBundle",
    "ModelCard",
    "PlantedBackdoor",
    "build_model",
    "load_model_dir",
    "load_state_dict_strict",
    "save_model_dir",
]
