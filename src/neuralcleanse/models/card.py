"""The JSON model card saved beside every model's weights.

A card is input like any model file: every field is type-checked, paths it names (``trigger_file``) must
be relative paths inside the model directory, and its content is covered by a digest (``card_sha256``,
over the card's canonical JSON, which itself holds the sha256 of the weights and of every trigger file),
so an edited card is refused rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .._io import read_json
from ..errors import ModelError, SettingsError

__all__ = ["CARD_FORMAT_VERSION", "ModelCard", "PlantedBackdoor", "check_relative_path"]

log = logging.getLogger(__name__)

#: 2 adds ``card_sha256`` and the triggers' ``trigger_sha256``; version-1 cards are still read
CARD_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_SAFE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


def check_relative_path(text: str, *, what: str, source: str) -> str:
    """``text`` if it is a plain relative path (``a/b.ext``: no ``..``, no absolute path, no backslash,
    no hidden or empty parts), else a one-line :class:`ModelError` — paths read from files stay inside
    their directory."""
    parts = text.split("/")
    if not text or len(text) > 255 or not all(_SAFE_PART.match(p) for p in parts):
        raise ModelError(f"{source}: {what} {text[:80]!r} must be a relative path inside the model directory")
    return text


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a dataclass field's type (the subset of types cards use)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint)
        return isinstance(value, dict) and all(
            _type_ok(k, key) and _type_ok(v, item) for k, v in value.items()
        )
    return isinstance(value, hint) if isinstance(hint, type) else False


def _checked_fields(cls: type, d: dict[str, Any], source: str, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in d and f.name not in skip and not _type_ok(d[f.name], hints[f.name]):
            shown = json.dumps(d[f.name])[:60]
            raise ModelError(
                f"{source}: card field {f.name!r} has the wrong type ({shown}; expected {hints[f.name]})"
            )


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
    #: sha256 of the trigger file (covered by the card's digest)
    trigger_sha256: str | None = None

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "model card") -> PlantedBackdoor:
        if not isinstance(d, dict):
            raise ModelError(f"{source}: each backdoor must be a JSON object")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ModelError(f"{source}: unknown backdoor key {unknown[0]!r}")
        missing = [f.name for f in fields(cls) if f.name not in d and f.default is not None]
        if missing:
            raise ModelError(f"{source}: backdoor without {missing[0]!r}")
        _checked_fields(cls, d, source)
        check_relative_path(d["trigger_file"], what="trigger_file", source=source)
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
    #: sha256 of the card's canonical JSON without this field (see :meth:`digest`)
    card_sha256: str | None = None

    @property
    def infected(self) -> bool:
        return bool(self.backdoors)

    @property
    def targets(self) -> list[int]:
        return sorted({b.target for b in self.backdoors})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        """sha256 of the card's canonical JSON (sorted keys, no ``card_sha256``): what ``card_sha256`` holds."""
        d = self.to_dict()
        d.pop("card_sha256", None)
        text = json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def sealed(self) -> ModelCard:
        """This card at the current format version with its digest filled in (done when a model is saved)."""
        card = replace(self, format_version=CARD_FORMAT_VERSION, card_sha256=None)
        return replace(card, card_sha256=card.digest())

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "model card") -> ModelCard:
        if not isinstance(d, dict):
            raise ModelError(f"{source}: expected a JSON object")
        version = d.get("format_version")
        if version not in _READABLE_VERSIONS:
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
        _checked_fields(cls, d, source, skip=("backdoors",))
        if not isinstance(d.get("backdoors", []), list):
            raise ModelError(f"{source}: card field 'backdoors' must be a list")
        data = dict(d)
        data["backdoors"] = [PlantedBackdoor.from_dict(b, source=source) for b in d.get("backdoors", [])]
        card = cls(**data)
        if (
            len(card.input_shape) != 3
            or min(card.input_shape) < 1
            or len(card.class_names) != card.num_classes
        ):
            raise ModelError(
                f"{source}: input_shape must be [C, H, W] and class_names must have num_classes entries"
            )
        if card.num_classes < 2:
            raise ModelError(f"{source}: num_classes must be at least 2, got {card.num_classes}")
        if card.dataset is not None and not _SAFE_PART.match(card.dataset):
            raise ModelError(f"{source}: dataset must be a data set's name, got {card.dataset!r}")
        from .preprocess import Preprocessing

        try:  # the declared preprocessing is checked with the card, which is named, not when it is used
            Preprocessing.from_card(card.input_range, card.mean, card.std)
        except SettingsError as exc:
            raise ModelError(f"{source}: {exc}") from None
        if version == 1:
            log.warning(
                "%s: a version-1 card: its content is not covered by a digest (re-save the model)", source
            )
        elif card.card_sha256 != card.digest():
            raise ModelError(
                f"{source}: the card's content does not match its card_sha256 (edited or corrupt)"
            )
        return card

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        p = Path(path)
        return cls.from_dict(read_json(p, what="model card", error=ModelError), source=str(p))
