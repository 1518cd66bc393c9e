"""Recipes: dataset + architecture + (optional) attack + training → a model with its card."""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from . import __version__
from .attacks.badnets import BadNets
from .data.dataset import DatasetSplits
from .data.registry import load_dataset
from .device import resolve_device
from .metrics import accuracy, attack_success_rate
from .models.architectures import build_model
from .models.card import ModelCard, PlantedBackdoor
from .models.store import ModelBundle
from .training import TrainProgress, TrainSettings, train_classifier

__all__ = ["Recipe", "train_recipe", "software_versions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How to build one model: the dataset, the architecture, the training settings and the attack."""

    dataset: str = "mnist-sample"
    arch: str = "mnist"
    training: TrainSettings = field(default_factory=TrainSettings)
    attack: BadNets | None = None
    data_dir: str | None = None


def software_versions() -> dict[str, str]:
    return {
        "neuralcleanse": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def train_recipe(
    recipe: Recipe,
    *,
    device: str | torch.device = "auto",
    data: DatasetSplits | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
) -> ModelBundle:
    """Train the model a recipe describes and measure it; nothing is written to disk.

    Args:
        recipe: what to build.
        device: ``auto``, ``cpu``, ``cuda``...
        data: the dataset, if already loaded (otherwise loaded by ``recipe.dataset``).
        progress: called after every mini-batch.
    """
    dev = resolve_device(device)
    splits = data if data is not None else load_dataset(recipe.dataset, root=recipe.data_dir)
    seed = recipe.training.seed
    # Validate everything cheap before spending training time.
    trigger = recipe.attack.check(splits.num_classes, splits.input_shape) if recipe.attack else None
    model = build_model(
        recipe.arch, input_shape=splits.input_shape, num_classes=splits.num_classes, seed=seed
    )
    train_set = splits.train
    poisoned_count = 0
    if recipe.attack is not None:
        poisoned, trigger = recipe.attack.poison(splits.train, seed=seed)
        train_set, poisoned_count = poisoned.dataset, len(poisoned.indices)
        log.info(
            "poisoned %d of %d training images toward label %d",
            poisoned_count,
            len(train_set),
            recipe.attack.target,
        )
    history = train_classifier(model, train_set, recipe.training, device=dev, progress=progress)
    model.eval().requires_grad_(False)
    clean_acc = accuracy(model, splits.test, device=dev)
    asr = None
    backdoors: list[PlantedBackdoor] = []
    if recipe.attack is not None and trigger is not None:
        asr = attack_success_rate(model, splits.test, trigger, target=recipe.attack.target, device=dev)
        info = trigger.to_dict()
        backdoors.append(
            PlantedBackdoor(
                target=recipe.attack.target,
                trigger_file="triggers/trigger_0.safetensors",
                spec=trigger.spec,
                l1_norm=info["l1_norm"],
                bbox=info["bbox"],
            )
        )
    card = ModelCard(
        arch=recipe.arch,
        num_classes=splits.num_classes,
        class_names=list(splits.class_names),
        input_shape=list(splits.input_shape),
        penultimate_layer=getattr(model, "penultimate", None),
        dataset=splits.name,
        seed=seed,
        clean_accuracy=round(clean_acc, 6),
        training={
            "epochs": recipe.training.epochs,
            "batch_size": recipe.training.batch_size,
            "lr": recipe.training.lr,
            "train_images": len(train_set),
            "test_images": len(splits.test),
            "seconds": round(history.seconds, 2),
            "device": str(dev),
        },
        attack=recipe.attack.name if recipe.attack else None,
        poison_rate=recipe.attack.poison_rate if recipe.attack else None,
        attack_success=None if asr is None else round(asr, 6),
        backdoors=backdoors,
        software=software_versions(),
    )
    model.cpu()
    return ModelBundle(model, card, (trigger,) if trigger is not None and recipe.attack else ())
