"""What ``scan-many`` scans: model files, model directories, folders of them and manifests, each model
under a name of its own (its report directory)."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from ..detection.checkpoint import CHECKPOINT_SUFFIX
from ..errors import ModelError, SettingsError
from .manifest import MANIFEST_SUFFIXES, ModelEntry, arch_file, read_manifest

__all__ = ["collect_models", "find_models", "unique_names", "MODEL_SUFFIXES"]

log = logging.getLogger(__name__)

#: files a folder search takes as models (the format is still read from each file's content)
MODEL_SUFFIXES = (".pt2", ".pt", ".pth", ".safetensors", ".keras", ".h5")

_CARD = "card.json"
#: folders a search does not enter: a scan's results (its report, a checkpoint)
_RESULT_FILES = ("report.json", "state.json")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def find_models(folder: Path) -> list[Path]:
    """Model files (:data:`MODEL_SUFFIXES`) and model directories (holding ``card.json``) in ``folder``
    and its subfolders, sorted; hidden entries and scan results are left out, and a model directory is
    not searched further."""
    found: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if (entry / _CARD).is_file():
                found.append(entry)
            elif not any((entry / name).is_file() for name in _RESULT_FILES):
                found += find_models(entry)
        elif entry.suffix.lower() in MODEL_SUFFIXES:
            found.append(entry)
    return found


def collect_models(sources: Sequence[str | Path]) -> list[ModelEntry]:
    """The models the sources name: a manifest (``.csv``, ``.jsonl``: :func:`read_manifest`), a model
    file, a model directory, or a folder searched by :func:`find_models`. A repeated model (same path,
    same options) is scanned once. One-line errors for a missing model (given or listed) or a folder
    without models."""
    if not sources:
        raise SettingsError("no models to scan: give model files, model directories, folders or a manifest")
    entries: list[ModelEntry] = []
    for given in sources:
        source = Path(given)
        if source.suffix.lower() in MANIFEST_SUFFIXES:
            listed = read_manifest(source)
            missing = next((e for e in listed if not e.path.exists()), None)
            if missing is not None:
                raise ModelError(f"{missing.origin}: {missing.path}: model file not found")
            for entry in listed:
                arch = entry.options.get("arch")
                file = None if arch is None else arch_file(str(arch))
                if file is not None and not file.is_file():
                    raise SettingsError(f"{entry.origin}: architecture file {file} not found")
            entries += listed
        elif not source.exists():
            raise ModelError(f"{source}: model file not found")
        elif source.is_file() or (source / _CARD).is_file():
            entries.append(ModelEntry(source.absolute(), origin=str(source)))
        else:
            found = find_models(source)
            if not found:
                kinds = ", ".join(MODEL_SUFFIXES)
                raise ModelError(f"{source}: no model files ({kinds}) or model directories in this folder")
            entries += [ModelEntry(p.absolute(), origin=str(p)) for p in found]
    unique: list[ModelEntry] = []
    seen: set[str] = set()
    for entry in entries:
        key = f"{entry.path.resolve()}\0{sorted(entry.options.items())!r}\0{entry.name}"
        if key in seen:
            log.info("%s: listed twice; scanned once", entry.origin)
            continue
        seen.add(key)
        unique.append(entry)
    return unique


#: names a fleet's folder holds besides the models' report directories: a model may not take them
_RESERVED = ("summary.json", "index.html")


def _reserved(name: str) -> bool:
    return name.lower() in _RESERVED or name.lower().endswith(CHECKPOINT_SUFFIX)


def _base_name(path: Path) -> str:
    stem = path.name if path.is_dir() else path.name.split(".")[0] or path.name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".-_") or "model"
    return name.replace(".", "_") if _reserved(name) else name


def unique_names(entries: Sequence[ModelEntry]) -> list[str]:
    """A report-directory name for every entry: its manifest ``name``, else the model's file or folder
    name; models of the same name get their parent folder's name in front, then a short hash of their
    path and options. Explicit names must be unique and plain (letters, digits, ``.``, ``_``, ``-``)."""
    explicit = [e.name for e in entries if e.name is not None]
    for entry in entries:
        if entry.name is not None and not _NAME.match(entry.name):
            raise SettingsError(
                f"{entry.origin}: name {entry.name!r} must be 1-100 letters, digits, '.', '_' or '-' "
                "(it names the model's report directory)"
            )
        if entry.name is not None and _reserved(entry.name):
            raise SettingsError(
                f"{entry.origin}: name {entry.name!r} is the fleet's own: {', '.join(_RESERVED)} and names "
                f"ending in {CHECKPOINT_SUFFIX} (a running scan's checkpoint) name files of the fleet's folder"
            )
    dupes = sorted({n for n in explicit if explicit.count(n) > 1})
    if dupes:
        raise SettingsError(f"two models are named {dupes[0]!r}: names must be unique")
    taken = set(explicit)
    auto = {i: _base_name(e.path) for i, e in enumerate(entries) if e.name is None}

    def clashing() -> list[int]:
        values = list(auto.values())
        return [i for i, n in auto.items() if values.count(n) > 1 or n in taken]

    for i in clashing():
        auto[i] = f"{_base_name(entries[i].path.parent)}-{auto[i]}"
    for i in clashing():
        key = f"{entries[i].path.resolve()}\0{sorted(entries[i].options.items())!r}"
        auto[i] += "-" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:6]
    return [e.name if e.name is not None else auto[i] for i, e in enumerate(entries)]
