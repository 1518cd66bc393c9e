"""Recipes: dataset + architecture + (optional) attack + training → a model with its card."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .._io import check_output_dir
from ..data.dataset import DatasetSplits
from ..data.registry import load_dataset
from ..device import resolve_device
from ..errors import SettingsError
from ..metrics import accuracy, attack_success_rate
from ..models.architectures import build_model
from ..models.card import ModelCard, PlantedBackdoor
from ..models.store import ModelBundle
from ..versions import software_versions
from .attacks.base import Attack, Planting
from .training import TrainProgress, TrainSettings, train_classifier

__all__ = ["Recipe", "train_recipe"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How to build one model: the dataset, the architecture, the training settings and the attack."""

    dataset: str = "mnist-sample"
    #: a built-in architecture (:data:`~neuralcleanse.models.ARCHITECTURES`): ``mnist``, ``gtsrb``,
    #: ``bn-cnn``, ``resnet``
    arch: str = "mnist"
    training: TrainSettings = field(default_factory=TrainSettings)
    attack: Attack | None = None
    data_dir: str | None = None

    def __post_init__(self) -> None:
        if self.attack is not None and not (
            callable(getattr(self.attack, "check", None)) and callable(getattr(self.attack, "plant", None))
        ):
            raise SettingsError(
                f"attack must be an attack object (BadNets(...), Trojan(...), MultiBackdoor(...)), not "
                f"{self.attack!r}"
            )
        if not isinstance(self.training, TrainSettings):
            raise SettingsError(f"training must be TrainSettings(...), not {self.training!r}")


def train_recipe(
    recipe: Recipe,
    *,
    device: str | torch.device = "auto",
    data: DatasetSplits | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> ModelBundle:
    """Train the model a recipe describes and measure it.

    Args:
        recipe: what to build.
        device: ``auto``, ``cpu``, ``cuda``...
        data: the dataset, if already loaded (otherwise loaded by ``recipe.dataset``).
        progress: called after every mini-batch.
        out: save the model directory there (checked before training: an occupied folder fails at once
            unless ``force=True``); by default nothing is written to disk.
        force: replace an existing model directory at ``out``.
    """
    if out is not None:
        check_output_dir(out, force=force)
    dev = resolve_device(device)
    splits = data if data is not None else load_dataset(recipe.dataset, root=recipe.data_dir)
    seed = recipe.training.seed
    attack = recipe.attack
    # Validate everything cheap before spending training time.
    if attack is not None:
        attack.check(splits.num_classes, splits.input_shape)
    model = build_model(
        recipe.arch, input_shape=splits.input_shape, num_classes=splits.num_classes, seed=seed
    )
    if attack is not None:
        planting = attack.plant(model, splits, recipe.training, device=dev, progress=progress)
        history = planting.history
    else:
        planting = None
        history = train_classifier(model, splits.train, recipe.training, device=dev, progress=progress)
    model.eval().requires_grad_(False)
    clean_acc = accuracy(model, splits.test, device=dev)
    backdoors: list[PlantedBackdoor] = []
    triggers = []
    for i, planted in enumerate(planting.backdoors if planting else []):
        sources = planted.source_labels
        asr = attack_success_rate(
            model, splits.test, planted.trigger, target=planted.target, source_labels=sources, device=dev
        )
        off = None
        if sources is not None:
            others = [k for k in range(splits.num_classes) if k not in sources and k != planted.target]
            off = attack_success_rate(
                model, splits.test, planted.trigger, target=planted.target, source_labels=others, device=dev
            )
        info = planted.trigger.to_dict()
        backdoors.append(
            PlantedBackdoor(
                target=planted.target,
                trigger_file=f"triggers/trigger_{i}.safetensors",
                spec=planted.trigger.spec,
                l1_norm=info["l1_norm"],
                bbox=info["bbox"],
                source_labels=None if sources is None else list(sources),
                attack_success=round(asr, 6),
                off_source_success=None if off is None else round(off, 6),
            )
        )
        triggers.append(planted.trigger)
    asr_min = min((b.attack_success or 0.0 for b in backdoors), default=None)
    train_images = len(splits.train)
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
            "shift": recipe.training.shift,
            "train_images": train_images,
            "poisoned_images": planting.poisoned if planting else 0,
            "cover_images": planting.covered if planting else 0,
            "test_images": len(splits.test),
            "seconds": round(history.seconds, 2),
            "device": str(dev),
            # CPU results are bit-for-bit reproducible only with the same thread count (summation order)
            "threads": torch.get_num_threads(),
        },
        attack=attack.name if attack else None,
        poison_rate=round(planting.poisoned / train_images, 6) if planting else None,
        attack_success=asr_min,
        attack_details=attack_details(attack, planting) if attack and planting else {},
        backdoors=backdoors,
        software=software_versions(),
    )
    model.cpu()
    bundle = ModelBundle(model, card, tuple(triggers))
    return bundle.save(out, force=force) if out is not None else bundle


def attack_details(attack: Attack, planting: Planting) -> dict[str, Any]:
    """The attack's settings and what it reported, for the card (JSON-safe)."""
    settings = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in dataclasses.asdict(attack).items()  # type: ignore[call-overload]
        if k != "name"
    }
    return {"settings": settings, **{k: v for k, v in planting.details.items()}}
