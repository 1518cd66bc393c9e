"""The JSON model card saved beside every model's weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError

__all__ = ["CARD_FORMAT_VERSION", "ModelCard", "PlantedBackdoor"]

CARD_FORMAT_VERSION = 1


@dataclass(frozen=True)
class PlantedBackdoor:
    """Ground truth of one planted trigger: which file holds it, which label it targets."""

    target: int
    trigger_file: str
    spec: str
    l1_norm: float
    bbox: list[int] | None = None
    source_labels: list[int] | None = None
    attack_success: float | None = None
    #: for a source-label-specific backdoor: how often the trigger also fires on other labels' images
    off_source_success: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlantedBackdoor:
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """What a model is, how it was made and, for infected models, the planted backdoor.

    ``input_range`` is the pixel range the network's first layer expects; ``mean``/``std`` (if given) are
    applied after scaling to that range. neuralcleanse always stamps triggers in ``[0, 1]`` pixel space.
    """

    arch: str
    num_classes: int
    class_names: list[str]
    input_shape: list[int]
    input_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    mean: list[float] | None = None
    std: list[float] | None = None
    penultimate_layer: str | None = None
    dataset: str | None = None
    seed: int | None = None
    clean_accuracy: float | None = None
    training: dict[str, Any] = field(default_factory=dict)
    attack: str | None = None
    poison_rate: float | None = None
    attack_success: float | None = None
    attack_details: dict[str, Any] = field(default_factory=dict)
    backdoors: list[PlantedBackdoor] = field(default_factory=list)
    software: dict[str, str] = field(default_factory=dict)
    weights_sha256: str | None = None
    format_version: int = CARD_FORMAT_VERSION

    @property
    def infected(self) -> bool:
        return bool(self.backdoors)

    @property
    def targets(self) -> list[int]:
        return sorted({b.target for b in self.backdoors})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "model card") -> ModelCard:
        if not isinstance(d, dict):
            raise ModelError(f"{source}: expected a JSON object")
        version = d.get("format_version")
        if version != CARD_FORMAT_VERSION:
            raise ModelError(
                f"{source}: unsupported card format version {version!r} (expected {CARD_FORMAT_VERSION})"
            )
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(f"{source}: unknown card key {unknown[0]!r}")
        for key in ("arch", "num_classes", "class_names", "input_shape"):
            if key not in d:
                raise ModelError(f"{source}: missing card key {key!r}")
        data = dict(d)
        try:
            data["backdoors"] = [PlantedBackdoor.from_dict(b) for b in d.get("backdoors", [])]
            card = cls(**data)
        except TypeError as exc:
            raise ModelError(f"{source}: malformed card ({exc})") from None
        if len(card.input_shape) != 3 or len(card.class_names) != card.num_classes:
            raise ModelError(
                f"{source}: input_shape must be [C, H, W] and class_names must have num_classes entries"
            )
        return card

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"{p}: model card not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{p}: cannot read model card ({exc})") from None
        return cls.from_dict(data, source=str(p))
