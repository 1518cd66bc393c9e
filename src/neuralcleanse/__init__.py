"""neuralcleanse: find, explain and remove backdoors in image classifiers.

Implements Neural Cleanse (Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in
Neural Networks", IEEE S&P 2019) for PyTorch.
"""

import importlib
from typing import TYPE_CHECKING, Any

# the version and the error types are light; everything else is imported when first used
# (``nc.scan``, ``from neuralcleanse import scan``), so that the command line's entry point can catch a
# Ctrl-C or SIGTERM that arrives while torch is still being imported
from .errors import CheckpointError, DataError, ModelError, NeuralCleanseError, SettingsError, TriggerError
from .versions import __version__

if TYPE_CHECKING:
    from .data import DatasetSplits, ImageDataset, load_dataset
    from .data.files import load_images
    from .detection import (
        DetectionReport,
        NeuralCleanse,
        Reference,
        ReverseSettings,
        mad_outlier_test,
        scan,
    )
    from .lab import (
        BadNets,
        MultiBackdoor,
        Recipe,
        TrainSettings,
        Trojan,
        poison_dataset,
        train_classifier,
        train_recipe,
    )
    from .metrics import accuracy, attack_success_rate
    from .mitigation import InputFilter, MitigationResult, filter_inputs, prune_neurons, unlearn
    from .models import ModelBundle, ModelCard, build_model, load_model_dir, save_model_dir
    from .models.loading import LoadedModel, load_model
    from .models.preprocess import Preprocessing
    from .report import write_html_report
    from .suspect import SuspectedBackdoor
    from .triggers import Trigger
    from .validation import ValidationResult, validate_trigger

_WHERE = {
    "BadNets": ".lab",
    "DatasetSplits": ".data",
    "DetectionReport": ".detection",
    "ImageDataset": ".data",
    "InputFilter": ".mitigation",
    "LoadedModel": ".models.loading",
    "MitigationResult": ".mitigation",
    "ModelBundle": ".models",
    "ModelCard": ".models",
    "MultiBackdoor": ".lab",
    "NeuralCleanse": ".detection",
    "Preprocessing": ".models.preprocess",
    "Recipe": ".lab",
    "Reference": ".detection",
    "ReverseSettings": ".detection",
    "SuspectedBackdoor": ".suspect",
    "TrainSettings": ".lab",
    "Trigger": ".triggers",
    "Trojan": ".lab",
    "ValidationResult": ".validation",
    "accuracy": ".metrics",
    "attack_success_rate": ".metrics",
    "build_model": ".models",
    "filter_inputs": ".mitigation",
    "load_dataset": ".data",
    "load_images": ".data.files",
    "load_model": ".models.loading",
    "load_model_dir": ".models",
    "mad_outlier_test": ".detection",
    "poison_dataset": ".lab",
    "prune_neurons": ".mitigation",
    "save_model_dir": ".models",
    "scan": ".detection",
    "train_classifier": ".lab",
    "train_recipe": ".lab",
    "unlearn": ".mitigation",
    "validate_trigger": ".validation",
    "write_html_report": ".report",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'neuralcleanse' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BadNets",
    "CheckpointError",
    "DataError",
    "DatasetSplits",
    "DetectionReport",
    "ImageDataset",
    "InputFilter",
    "LoadedModel",
    "MitigationResult",
    "ModelBundle",
    "ModelCard",
    "ModelError",
    "MultiBackdoor",
    "NeuralCleanse",
    "NeuralCleanseError",
    "Preprocessing",
    "Recipe",
    "Reference",
    "ReverseSettings",
    "SettingsError",
    "SuspectedBackdoor",
    "TrainSettings",
    "Trigger",
    "TriggerError",
    "Trojan",
    "ValidationResult",
    "__version__",
    "accuracy",
    "attack_success_rate",
    "build_model",
    "filter_inputs",
    "load_dataset",
    "load_images",
    "load_model",
    "load_model_dir",
    "mad_outlier_test",
    "poison_dataset",
    "prune_neurons",
    "save_model_dir",
    "scan",
    "train_classifier",
    "train_recipe",
    "unlearn",
    "validate_trigger",
    "write_html_report",
]
