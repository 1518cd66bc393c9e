"""Model zoos: many clean and infected models built from one spec file, each with its ground-truth card.

A spec is TOML (or JSON with the same structure)::

    [defaults]                # optional: applies to every model
    dataset = "mnist-sample"
    arch = "mnist"
    epochs = 8
    seed = 0

    [[model]]
    name = "mnist-clean"      # no attack: a clean control

    [[model]]
    name = "mnist-badnets"
    attack = "badnets"
    target = 0
    trigger = "square:size=4,at=bottom-right"
    poison_rate = 0.1

    [[model]]
    name = "mnist-two-labels"
    attack = "multi"
    backdoors = [{target = 1, trigger = "square:size=4,at=top-left"},
                 {target = 7, trigger = "square:size=4,at=bottom-right"}]

Model keys: ``name``, ``dataset``, ``arch`` (a built-in architecture: ``mnist``, ``gtsrb``, ``bn-cnn``,
``resnet``), ``data_dir``, ``epochs``, ``batch_size``, ``lr``, ``seed``, ``attack`` and the attack's own
settings (:data:`~neuralcleanse.lab.attacks.ATTACKS`); ``control`` (the clean entry an infected model's
accuracy is compared with) and ``reference = true`` (a clean model the scans of the other models of its
dataset and architecture are also tested against, with the relative statistic).
Every entry is checked against its dataset before anything is trained, so a bad spec builds nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_json, read_json, refuse_special
from ..data.dataset import DatasetSplits
from ..data.registry import load_dataset
from ..detection.checkpoint import CHECKPOINT_SUFFIX
from ..errors import DataError, NeuralCleanseError, SettingsError
from ..models.architectures import ARCHITECTURES
from ..models.card import ModelCard
from ..models.store import ModelBundle, load_model_dir
from .attacks import ATTACKS, Attack, MultiBackdoor, build_attack
from .recipes import Recipe
from .training import TrainSettings

__all__ = [
    "MANIFEST_FILE",
    "Trainer",
    "ZooEntry",
    "ZooRow",
    "ZooSpec",
    "build_zoo",
    "dataset_cache",
    "default_spec_path",
    "load_spec",
    "parse_spec",
]

log = logging.getLogger(__name__)

MANIFEST_FILE = "zoo.json"
#: what the zoo writes beside its models' directories: a model may not be named after them
_OWN_NAMES = (MANIFEST_FILE, "scans", "source-scans")
_MODEL_KEYS = {
    "name", "dataset", "arch", "data_dir", "epochs", "batch_size", "lr", "shift", "seed", "attack", "control",
    "reference",
}  # fmt: skip
#: keys that say how a model is compared, not how it is built (left out of the rebuild digest)
_REPORT_KEYS = {"control", "reference"}
_TRAIN_KEYS = {"epochs", "batch_size", "lr", "shift", "seed"}


#: specs shipped with the package, by name
SHIPPED_SPECS = {"default": "zoo_default.toml", "signs": "zoo_signs.toml"}


def default_spec_path(name: str = "default") -> Path:
    """A spec shipped with the package: ``default`` (every attack on the MNIST sample and Fashion-MNIST)
    or ``signs`` (the 43-class colour task with BadNets and Trojan)."""
    return Path(__file__).parent / SHIPPED_SPECS[name]


@dataclass(frozen=True)
class ZooEntry:
    """One model of a zoo: a recipe and the raw settings it came from (hashed to detect spec changes)."""

    name: str
    recipe: Recipe
    raw: dict[str, Any]

    @property
    def digest(self) -> str:
        built = {k: v for k, v in self.raw.items() if k not in _REPORT_KEYS}
        return hashlib.sha256(json.dumps(built, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def attack_name(self) -> str:
        return self.recipe.attack.name if self.recipe.attack is not None else "none"

    @property
    def is_reference(self) -> bool:
        return bool(self.raw.get("reference", False))


@dataclass(frozen=True)
class ZooSpec:
    entries: list[ZooEntry]
    source: str = "spec"

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def references_for(self, entry: ZooEntry) -> list[str]:
        """The reference entries ``entry``'s scan is compared with: every other entry marked
        ``reference`` of the same dataset (and data directory) and architecture."""
        r = entry.recipe
        return [
            e.name
            for e in self.entries
            if e.is_reference
            and e.name != entry.name
            and (e.recipe.dataset, e.recipe.data_dir, e.recipe.arch) == (r.dataset, r.data_dir, r.arch)
        ]


def load_spec(path: str | os.PathLike[str]) -> ZooSpec:
    """Read and check a spec file (TOML, or JSON by its ``.json`` suffix)."""
    p = Path(path)
    refuse_special(p, what="the zoo spec", error=SettingsError)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"{p}: zoo spec not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{p}: cannot read zoo spec ({exc})") from None
    try:
        raw = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise SettingsError(f"{p}: not a valid spec file ({exc})") from None
    return parse_spec(raw, source=str(p))


def parse_spec(raw: dict[str, Any], *, source: str = "spec") -> ZooSpec:
    """Build the entries of a parsed spec; one-line :class:`SettingsError` naming the entry otherwise."""
    if not isinstance(raw, dict):
        raise SettingsError(f"{source}: a spec is a table with [defaults] and [[model]] entries")
    unknown = sorted(set(raw) - {"defaults", "model"})
    if unknown:
        raise SettingsError(f"{source}: unknown top-level key {unknown[0]!r} (use [defaults] and [[model]])")
    defaults = raw.get("defaults", {})
    models = raw.get("model", [])
    if not isinstance(defaults, dict) or not isinstance(models, list) or not models:
        raise SettingsError(f"{source}: needs at least one [[model]] entry")
    bad_defaults = sorted(set(defaults) - (_MODEL_KEYS - {"name", "attack"}))
    if bad_defaults:
        raise SettingsError(f"{source}: [defaults] has unknown key {bad_defaults[0]!r}")
    entries: list[ZooEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(models):
        if not isinstance(item, dict):
            raise SettingsError(f"{source}: model entry {i} is not a table")
        name = item.get("name")
        where = f"{source}: model {name!r}" if name else f"{source}: model entry {i}"
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise SettingsError(f"{where}: needs a name usable as a directory name")
        if name.lower() in _OWN_NAMES or name.lower().endswith(CHECKPOINT_SUFFIX):
            raise SettingsError(
                f"{where}: the name is one of the zoo's own files or folders ({', '.join(_OWN_NAMES)}, "
                f"*{CHECKPOINT_SUFFIX}): choose another"
            )
        if name in seen:
            raise SettingsError(f"{where}: duplicate model name")
        seen.add(name)
        merged = {**defaults, **item}
        entries.append(ZooEntry(name, _recipe(merged, where), merged))
    clean = {e.name for e in entries if e.recipe.attack is None}
    for e in entries:
        if not isinstance(e.raw.get("reference", False), bool):
            raise SettingsError(f"{source}: model {e.name!r}: reference must be true or false")
        if e.is_reference and e.recipe.attack is not None:
            raise SettingsError(f"{source}: model {e.name!r}: only a clean model can be a reference")
        ctrl = e.raw.get("control")
        if ctrl is not None and (ctrl not in clean or e.recipe.attack is None):
            why = (
                "only an infected model has a control"
                if e.recipe.attack is None
                else "no clean entry has that name"
            )
            raise SettingsError(f"{source}: model {e.name!r}: control {ctrl!r}: {why}")
    return ZooSpec(entries, source)


_STRING_KEYS = ("dataset", "arch", "data_dir", "attack", "control")


def _recipe(d: dict[str, Any], where: str) -> Recipe:
    for key in _STRING_KEYS:
        if key in d and not isinstance(d[key], str):
            raise SettingsError(f"{where}: {key} must be a string, got {d[key]!r}")
    kind = d.get("attack", "none")
    attack_keys = set(d) - _MODEL_KEYS
    if kind == "none":
        if attack_keys:
            raise SettingsError(f"{where}: unknown key {sorted(attack_keys)[0]!r} (a model without attack)")
        attack = None
    elif kind in ATTACKS:
        attack = build_attack(kind, {k: d[k] for k in attack_keys}, where=where)
    else:
        raise SettingsError(f"{where}: unknown attack {kind!r}; known: none, {', '.join(ATTACKS)}")
    arch = d.get("arch", "mnist")
    if arch not in ARCHITECTURES:
        raise SettingsError(f"{where}: unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    try:
        training = TrainSettings(**{k: d[k] for k in _TRAIN_KEYS if k in d})
    except (NeuralCleanseError, TypeError) as exc:
        raise SettingsError(f"{where}: {exc}") from None
    return Recipe(
        dataset=str(d.get("dataset", "mnist-sample")),
        arch=arch,
        training=training,
        attack=attack,
        data_dir=d.get("data_dir"),
    )


def check_against_data(spec: ZooSpec, loader: Callable[[str, str | None], DatasetSplits]) -> None:
    """Check every entry against its dataset (labels in range, triggers inside the image and not
    overlapping between different targets) before any model is trained."""
    for e in spec.entries:
        where = f"{spec.source}: model {e.name!r}"
        r = e.recipe
        try:
            data = loader(r.dataset, r.data_dir)
        except NeuralCleanseError as exc:
            raise SettingsError(f"{where}: {exc}") from None
        if r.attack is None:
            continue
        try:
            r.attack.check(data.num_classes, data.input_shape)
        except NeuralCleanseError as exc:
            msg = str(exc)
            raise SettingsError(msg if msg.startswith(where) else f"{where}: {msg}") from None
        _check_overlap(r.attack, data.input_shape, where)


def _check_overlap(attack: Attack, shape: tuple[int, int, int], where: str) -> None:
    if not isinstance(attack, MultiBackdoor):
        return
    triggers = [b.build_trigger(shape) for b in attack.backdoors]
    for i, a in enumerate(triggers):
        for j in range(i):
            if attack.backdoors[i].target == attack.backdoors[j].target:
                continue
            if bool((a.region & triggers[j].region).any()):
                raise SettingsError(
                    f"{where}: backdoors {j} and {i} have different targets "
                    f"({attack.backdoors[j].target}, {attack.backdoors[i].target}) but overlapping triggers"
                )


@dataclass
class ZooRow:
    """One model's line in the zoo summary."""

    name: str
    dataset: str
    arch: str
    attack: str
    targets: list[int]
    trigger: str
    trigger_area: float | None
    clean_accuracy: float
    attack_success: float | None
    control: str | None = None
    accuracy_drop: float | None = None
    built: str = "built"
    reference: bool = False
    scan: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summarise(entry: ZooEntry, card: ModelCard, status: str) -> ZooRow:
    c, h, w = card.input_shape
    triggers = "; ".join(b.spec for b in card.backdoors) or "-"
    area = max((b.l1_norm for b in card.backdoors), default=None)
    return ZooRow(
        name=entry.name,
        dataset=card.dataset or entry.recipe.dataset,
        arch=card.arch,
        attack=card.attack or "none",
        targets=card.targets,
        trigger=triggers,
        trigger_area=None if area is None else round(area / (h * w), 4),
        clean_accuracy=card.clean_accuracy or 0.0,
        attack_success=card.attack_success,
        built=status,
        reference=entry.is_reference,
    )


def attach_controls(rows: list[ZooRow], spec: ZooSpec) -> None:
    """Each infected model's clean control: the entry its ``control`` key names, else the first clean
    entry (not marked ``reference``, if there is one) with the same dataset, arch and training."""
    controls: dict[tuple[str, str, str], ZooRow] = {}
    by_name = {e.name: e for e in spec.entries}
    rows_by_name = {r.name: r for r in rows}
    for row in sorted(rows, key=lambda r: r.reference):  # a reference is a control only if nothing else is
        if row.attack == "none":
            e = by_name[row.name]
            controls.setdefault((e.recipe.dataset, e.recipe.arch, repr(e.recipe.training)), row)
    for row in rows:
        e = by_name[row.name]
        named = e.raw.get("control")
        if named is not None:
            ctrl = rows_by_name.get(named)
        else:
            ctrl = controls.get((e.recipe.dataset, e.recipe.arch, repr(e.recipe.training)))
        if ctrl is not None and ctrl is not row:
            row.control = ctrl.name
            row.accuracy_drop = round(ctrl.clean_accuracy - row.clean_accuracy, 6)


def write_manifest(out: Path, spec: ZooSpec, rows: list[ZooRow]) -> None:
    """Record the rows (with their entries' digests) in ``zoo.json``, keeping earlier rows of other models
    (a run with ``--only`` must not forget the rest of the zoo)."""
    digests = {e.name: e.digest for e in spec.entries}
    fresh = [{**r.to_dict(), "digest": digests[r.name]} for r in rows]
    names = {r.name for r in rows}
    kept = [m for m in _manifest_models(out) if isinstance(m, dict) and m.get("name") not in names]
    atomic_write_json(
        out / MANIFEST_FILE,
        {"format_version": 1, "spec": spec.source, "models": kept + fresh, "torch": torch.__version__},
    )


def read_manifest_digests(out: Path) -> dict[str, str]:
    try:
        return {m["name"]: m["digest"] for m in _manifest_models(out)}
    except (KeyError, TypeError):
        return {}


def _manifest_models(out: Path) -> list[Any]:
    """The model rows an earlier run recorded in ``zoo.json``; none when it is missing or unreadable (the
    zoo is then built as if new)."""
    try:
        d = read_json(out / MANIFEST_FILE, what="zoo manifest")
    except DataError:
        return []
    models = d.get("models", []) if isinstance(d, dict) else []
    return models if isinstance(models, list) else []


#: builds one model: ``train(recipe, model_dir, data)`` → the saved bundle (the CLI passes one with a
#: progress bar)
Trainer = Callable[[Recipe, Path, DatasetSplits], ModelBundle]


def dataset_cache() -> Callable[[str, str | None], DatasetSplits]:
    """``load(name, root)``: :func:`~neuralcleanse.data.registry.load_dataset`, each dataset read once."""
    cache: dict[tuple[str, str | None], DatasetSplits] = {}

    def load(name: str, root: str | None) -> DatasetSplits:
        if (name, root) not in cache:
            cache[(name, root)] = load_dataset(name, root=root)
        return cache[(name, root)]

    return load


def build_zoo(
    out: Path,
    spec: ZooSpec,
    data_for: Callable[[str, str | None], DatasetSplits],
    *,
    train: Trainer,
    force: bool = False,
    announce: Callable[[int, ZooEntry], None] | None = None,
) -> list[ZooRow]:
    """Build the models of ``spec`` under ``out`` (one directory each), keeping those already built from
    the same spec entry; returns their summary rows with their clean controls attached.

    Every entry is checked against its dataset, and a model built from a different entry is refused
    (unless ``force``), before anything is trained. ``zoo.json`` is updated after every model, so a killed
    run keeps what is built. ``announce(i, entry)`` is called before the i-th model (from 0) is trained.
    """
    check_against_data(spec, data_for)
    out.mkdir(parents=True, exist_ok=True)
    digests = read_manifest_digests(out)
    for e in spec.entries:  # refuse stale models before building anything
        if (out / e.name / "card.json").exists() and digests.get(e.name) != e.digest and not force:
            raise SettingsError(
                f"{out / e.name} was built from a different spec entry {e.name!r}; use --force to rebuild it"
            )
    rows: list[ZooRow] = []
    for i, e in enumerate(spec.entries):
        model_dir = out / e.name
        if (model_dir / "card.json").exists() and digests.get(e.name) == e.digest:
            bundle, status = load_model_dir(model_dir), "kept"
        else:
            if announce is not None:
                announce(i, e)
            bundle = train(e.recipe, model_dir, data_for(e.recipe.dataset, e.recipe.data_dir))
            status = "built"
        rows.append(summarise(e, bundle.card, status))
        digests[e.name] = e.digest
        write_manifest(out, type(spec)(spec.entries[: i + 1], spec.source), rows)
    attach_controls(rows, spec)
    return rows
