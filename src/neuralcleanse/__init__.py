"""neuralcleanse: find, explain and remove backdoors in image classifiers.

Implements Neural Cleanse (Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in
Neural Networks", IEEE S&P 2019) for PyTorch.
"""

from .data import DatasetSplits, ImageDataset, load_dataset  # noqa: E402
from .data.files import load_images  # noqa: E402
from .detection import (  # noqa: E402
    DetectionReport,
    NeuralCleanse,
    Reference,
    ReverseSettings,
    mad_outlier_test,
    scan,
)
from .errors import CheckpointError, DataError, ModelError, NeuralCleanseError, SettingsError, TriggerError  # noqa: E402
from .lab import (  # noqa: E402
    BadNets,
    MultiBackdoor,
    Recipe,
    TrainSettings,
    Trojan,
    poison_dataset,
    train_classifier,
    train_recipe,
)
from .metrics import accuracy, attack_success_rate  # noqa: E402
from .mitigation import InputFilter, MitigationResult, filter_inputs, prune_neurons, unlearn  # noqa: E402
from .models import ModelBundle, ModelCard, build_model, load_model_dir, save_model_dir  # noqa: E402
from .models.loading import LoadedModel, load_model  # noqa: E402
from .models.preprocess import Preprocessing  # noqa: E402
from .report import write_html_report  # noqa: E402
from .suspect import SuspectedBackdoor  # noqa: E402
from .triggers import Trigger  # noqa: E402
from .validation import ValidationResult, validate_trigger  # noqa: E402
from .versions import __version__

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
