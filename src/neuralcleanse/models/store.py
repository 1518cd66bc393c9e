"""Model directories: ``model.safetensors`` + ``card.json`` (+ ``triggers/*.safetensors`` ground truth).

Loading never unpickles: weights are read with safetensors, the card is JSON and triggers are safetensors.
The card is type-checked and covered by a digest; the weights and trigger files by the sha256s it holds;
trigger paths stay inside the directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._io import atomic_directory, atomic_write_json, refuse_special
from ..errors import ModelError
from ..triggers import Trigger
from .architectures import ARCHITECTURES, build_model
from .card import ModelCard, PlantedBackdoor, check_relative_path

__all__ = ["ModelBundle", "save_model_dir", "load_model_dir", "trigger_path", "WEIGHTS_FILE", "CARD_FILE"]

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"


@dataclass(frozen=True, eq=False)
class ModelBundle:
    """A model with its card and (for infected models) the real triggers, one per planted backdoor."""

    model: nn.Module
    card: ModelCard
    triggers: tuple[Trigger, ...] = ()
    path: Path | None = None

    def save(self, path: str | os.PathLike[str], *, force: bool = False) -> ModelBundle:
        return save_model_dir(path, self.model, self.card, self.triggers, force=force)


def save_model_dir(
    path: str | os.PathLike[str],
    model: nn.Module,
    card: ModelCard,
    triggers: tuple[Trigger, ...] | list[Trigger] = (),
    *,
    force: bool = False,
) -> ModelBundle:
    """Write a model directory atomically; returns the bundle with the card as saved (hash filled in)."""
    from safetensors.torch import save

    if len(triggers) != len(card.backdoors):
        raise ValueError(f"{len(card.backdoors)} backdoors in the card but {len(triggers)} triggers given")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"arch": card.arch})
    card = dataclasses.replace(card, weights_sha256=hashlib.sha256(blob).hexdigest())
    for info in card.backdoors:
        check_relative_path(info.trigger_file, what="trigger_file", source="model card")
    with atomic_directory(path, force=force) as tmp:
        (tmp / WEIGHTS_FILE).write_bytes(blob)
        backdoors = []
        for trig, info in zip(triggers, card.backdoors, strict=True):
            (tmp / info.trigger_file).parent.mkdir(parents=True, exist_ok=True)
            trig.save(tmp / info.trigger_file)
            digest = hashlib.sha256((tmp / info.trigger_file).read_bytes()).hexdigest()
            backdoors.append(dataclasses.replace(info, trigger_sha256=digest))
        card = dataclasses.replace(card, backdoors=backdoors).sealed()
        atomic_write_json(tmp / CARD_FILE, card.to_dict())
    return ModelBundle(model, card, tuple(triggers), Path(path))


def load_model_dir(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> ModelBundle:
    """Load a model directory written by :func:`save_model_dir`, in eval mode with frozen parameters."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    root = Path(path)
    if not root.is_dir():
        raise ModelError(f"{root}: not a model directory")
    card = ModelCard.load(root / CARD_FILE)
    if card.arch not in ARCHITECTURES:
        raise ModelError(
            f"{root / CARD_FILE}: unknown architecture {card.arch!r}; known: {', '.join(ARCHITECTURES)}"
        )
    weights = root / WEIGHTS_FILE
    refuse_special(weights, what="the weights file", error=ModelError)
    try:
        blob = weights.read_bytes()
        state = load(blob)
    except FileNotFoundError:
        raise ModelError(f"{weights}: weights file not found") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{weights}: not a valid safetensors file ({exc})") from None
    if card.weights_sha256 and hashlib.sha256(blob).hexdigest() != card.weights_sha256:
        raise ModelError(f"{weights}: sha256 does not match the card (file changed or corrupt)")
    c, h, w = card.input_shape
    with torch.device("meta"):  # shapes only: a card's input shape that the weights do not fit (a forged
        # 4096x4096) is refused before real layers of that size are allocated
        probe = build_model(card.arch, input_shape=(c, h, w), num_classes=card.num_classes, seed=0)
    try:
        load_state_dict_strict(probe, state, source=str(weights), load=False)
    except ModelError as exc:
        raise ModelError(
            f"{root / CARD_FILE}: the card's input shape {c}x{h}x{w} and {card.num_classes} classes do not fit "
            f"its weights ({str(exc).split(': ', 1)[-1]})"
        ) from None
    model = build_model(card.arch, input_shape=(c, h, w), num_classes=card.num_classes, seed=0)
    load_state_dict_strict(model, state, source=str(weights))
    triggers = tuple(_load_trigger(root, b) for b in card.backdoors)
    model.to(device).eval().requires_grad_(False)
    return ModelBundle(model, card, triggers, root)


def trigger_path(root: Path, backdoor: PlantedBackdoor) -> Path:
    """Where a card's trigger file is: inside ``root`` after resolving symbolic links, or a ModelError."""
    rel = check_relative_path(backdoor.trigger_file, what="trigger_file", source=str(root / CARD_FILE))
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ModelError(f"{root / rel}: the trigger file points outside the model directory")
    return path


def _load_trigger(root: Path, backdoor: PlantedBackdoor) -> Trigger:
    path = trigger_path(root, backdoor)
    refuse_special(path, what="the trigger file", error=ModelError)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ModelError(
            f"{root / backdoor.trigger_file}: cannot read trigger file ({exc.strerror or exc})"
        ) from None
    if backdoor.trigger_sha256 and hashlib.sha256(blob).hexdigest() != backdoor.trigger_sha256:
        raise ModelError(
            f"{root / backdoor.trigger_file}: sha256 does not match the card (file changed or corrupt)"
        )
    return Trigger.load(path)


def load_state_dict_strict(
    model: nn.Module, state: dict[str, torch.Tensor], *, source: str, load: bool = True
) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped key is a one-line error naming it
    (``load=False``: only the checks, as for a model built on the meta device)."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise ModelError(f"{source}: weights do not fit the architecture: missing key {key!r}")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ModelError(
                f"{source}: weights do not fit the architecture: {key!r} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(value.shape)}"
            )
        if value.is_floating_point() and not state[key].is_floating_point():
            raise ModelError(
                f"{source}: weights do not fit the architecture: {key!r} holds {str(state[key].dtype)[6:]} values "
                f"where the architecture has {str(value.dtype)[6:]} (quantized or corrupt weights?)"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ModelError(f"{source}: weights do not fit the architecture: unexpected key {extra[0]!r}")
    if load:
        model.load_state_dict(state, strict=True)
