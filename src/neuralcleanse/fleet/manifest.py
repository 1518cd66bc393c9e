"""Manifests: a list of models to scan, each with its own data and loading options.

A manifest is CSV (a header row, then one model per row; an empty cell means "not set") or JSON Lines
(one object per line)::

    path,name,data,arch,input_shape,mean,std
    models/a.pt2,,images/,,,,
    models/b.safetensors,b-fmnist,fmnist.npz,mnist,1x28x28,0.2860,0.3530

    {"path": "models/b.safetensors", "arch": "mnist", "input_shape": [1, 28, 28], "mean": [0.286]}

Columns (``-`` and ``_`` are the same): ``path`` (required: a model file or model directory) and
``name`` (its report directory; default: from the path), and per model, overriding the command line's
value: the loading options ``data``, ``dataset``, ``data_dir``, ``arch``, ``arch_kwargs``,
``allow_torchscript``, ``output_key``, ``input_shape``, ``input_range``, ``mean``, ``std``,
``channel_order``, ``class_names``, and the scan options ``split``, ``labels``, ``source``, ``outputs``, ``reference``
(several paths: ``;`` between them in CSV, a list in JSON). Relative paths are relative to the
manifest's folder. An unknown column, a bad value or a missing ``path`` is refused before any work.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import refuse_special
from ..errors import SettingsError
from ..models.adapt import parse_output

__all__ = ["ModelEntry", "arch_file", "read_manifest", "MANIFEST_SUFFIXES", "COLUMNS"]

MANIFEST_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class ModelEntry:
    """One model to scan, with the options that are its own.

    Attributes:
        path: the model file or directory (absolute).
        options: option values for this model alone, by the name the scan takes them under
            (``arch``, ``input_shape``, ``data``, ``source_label``, ``references``...).
        name: the name asked for (a manifest's ``name``), else ``None``.
        origin: where the entry comes from, for messages (``models.csv line 3``, or the path).
    """

    path: Path
    options: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    origin: str = ""


def _text(value: Any, where: str, column: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SettingsError(f"{where}: {column} must be text, got {json.dumps(value)}")
    return str(value)


def _choice(*choices: str) -> Callable[[Any, str, str, Path], str]:
    def parse(value: Any, where: str, column: str, base: Path) -> str:
        text = _text(value, where, column)
        if text not in choices:
            raise SettingsError(f"{where}: {column} must be one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def _plain(value: Any, where: str, column: str, base: Path) -> str:
    return _text(value, where, column)


def _path(value: Any, where: str, column: str, base: Path) -> Path:
    if not isinstance(value, str):  # a JSON number is no file name: {"path": 5} is a mistake
        raise SettingsError(f"{where}: {column} must be a path (text), got {json.dumps(value)}")
    text = value
    if not text.strip():
        raise SettingsError(f"{where}: {column} is empty")
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def arch_file(arch: str) -> Path | None:
    """The Python file an architecture names (``path/to/file.py:Class``); ``None`` for a built-in name
    or ``package.module:Class``."""
    file, sep, _ = arch.rpartition(":")
    return Path(file) if sep and file.endswith(".py") else None


def _arch(value: Any, where: str, column: str, base: Path) -> str:
    """A built-in name, ``package.module:Class``, or ``path/to/file.py:Class`` with the file's path
    relative to the manifest's folder like every other path."""
    text = _text(value, where, column).strip()
    file = arch_file(text)
    if file is None:
        return text
    return f"{_path(str(file), where, column, base)}:{text.rpartition(':')[2]}"


def _paths(value: Any, where: str, column: str, base: Path) -> tuple[Path, ...]:
    items = value if isinstance(value, list) else _text(value, where, column).split(";")
    return tuple(_path(v, where, column, base) for v in items if not isinstance(v, str) or v.strip())


def _joined(sep: str, expected: str, *, integers: bool) -> Callable[[Any, str, str, Path], str]:
    """A column the command line takes as text of numbers (``1x28x28``, ``0,3,5``, ``0.5,0.5,0.5``),
    given as that text or as a JSON list of numbers (``integers``: of integers), which is joined by
    ``sep`` into that text."""
    kinds: tuple[type, ...] = (int,) if integers else (int, float)

    def parse(value: Any, where: str, column: str, base: Path) -> str:
        if not isinstance(value, list):
            return _text(value, where, column)
        if not value or not all(isinstance(v, kinds) and not isinstance(v, bool) for v in value):
            raise SettingsError(f"{where}: {column} must be {expected}, got {json.dumps(value)}")
        return sep.join(str(v) if integers else repr(float(v)) for v in value)

    return parse


_shape = _joined("x", "CxHxW or a list of 3 integers", integers=True)
_labels = _joined(",", "labels like 0,3,5 or a list of integers", integers=True)
_numbers = _joined(",", "numbers like 0.5,0.5,0.5 or a list of numbers", integers=False)


_EXACT = 2.0**53  # the largest float below which every integer is exact


def _integer(value: Any, where: str, column: str, base: Path) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and abs(value) <= _EXACT and value == int(value):
        return int(value)  # a JSON 3.0; not 1e308, which no float holds as an exact integer
    text = _text(value, where, column).strip()
    try:
        return int(text)
    except ValueError:
        raise SettingsError(f"{where}: {column} must be an integer, got {text!r}") from None


def _label(value: Any, where: str, column: str, base: Path) -> int:
    """A label: an integer from 0 up to the most classes a data set may have (whether the model has it is
    known only when it is loaded; a label no model can have names its row now, before any scan)."""
    from ..data.npz import MAX_CLASSES

    label = _integer(value, where, column, base)
    if not 0 <= label < MAX_CLASSES:
        raise SettingsError(f"{where}: {column} must be a label from 0 to {MAX_CLASSES - 1}, got {label}")
    return label


def _output_key(value: Any, where: str, column: str, base: Path) -> str:
    """An output's index (a number of a JSON/YAML manifest, ``0.0`` included, is one) or a dict key,
    checked here so a bad one names its row before any model is scanned."""
    if isinstance(value, bool):
        raise SettingsError(f"{where}: {column} must be an index (0) or a key (logits), got {value!r}")
    if isinstance(value, (int, float)):
        value = _integer(value, where, column, base)
    text = _text(value, where, column)
    try:
        parse_output(text)
    except SettingsError as exc:
        raise SettingsError(f"{where}: {exc}") from None
    return text


def _flag(value: Any, where: str, column: str, base: Path) -> bool:
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):  # a JSON 1 is not a yes: the flag opts into running a file's code
        raise SettingsError(f"{where}: {column} must be true or false, got {json.dumps(value)}")
    text = _text(value, where, column).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise SettingsError(f"{where}: {column} must be true or false, got {text!r}")


def _json_object(value: Any, where: str, column: str, base: Path) -> str:
    """A JSON object, or its text (checked when the options are)."""
    return json.dumps(value) if isinstance(value, dict) else _text(value, where, column)


#: column → (the option's name in a scan, how its value is read)
COLUMNS: dict[str, tuple[str, Callable[[Any, str, str, Path], Any]]] = {
    "data": ("data", _path),
    "dataset": ("dataset", _plain),
    "data_dir": ("data_dir", _path),
    "arch": ("arch", _arch),
    "arch_kwargs": ("arch_kwargs", _json_object),
    "allow_torchscript": ("allow_torchscript", _flag),
    "output_key": ("output_key", _output_key),
    "input_shape": ("input_shape", _shape),
    "input_range": ("input_range", _choice("0-1", "0-255")),
    "mean": ("mean", _numbers),
    "std": ("std", _numbers),
    "channel_order": ("channel_order", _choice("rgb", "bgr")),
    "class_names": ("class_names", _path),
    "split": ("split", _choice("test", "train")),
    "labels": ("labels", _labels),
    "source": ("source_label", _label),
    "outputs": ("outputs", _choice("auto", "logits", "probabilities", "sigmoid")),
    "reference": ("references", _paths),
}
_SPECIAL = ("path", "name")


def _columns(keys: Iterable[Any], where: str) -> list[str]:
    """A row's column names as every format reads them (``Input-Shape`` is ``input_shape``); one-line
    errors for an unknown or repeated column."""
    names: list[str] = []
    for key in keys:
        name = str(key).strip().lower().replace("-", "_")
        if name not in COLUMNS and name not in _SPECIAL:
            known = ", ".join([*_SPECIAL, *COLUMNS])
            raise SettingsError(f"{where}: unknown column {str(key).strip()!r} (known: {known})")
        if name in names:
            raise SettingsError(f"{where}: column {name!r} appears twice")
        names.append(name)
    return names


def _entry(row: dict[str, Any], manifest: Path, where: str) -> ModelEntry:
    base = manifest.parent
    values = {k: v for k, v in row.items() if v is not None and not (isinstance(v, str) and not v.strip())}
    if "path" not in values:
        raise SettingsError(f"{where}: no path (every model needs a path column)")
    path = _path(values.pop("path"), where, "path", base)
    name = _text(values.pop("name"), where, "name").strip() if "name" in values else None
    options = {}
    for column, value in values.items():
        option, parse = COLUMNS[column]
        options[option] = parse(value, where, column, base)
    return ModelEntry(path.absolute(), options, name, where)


def _csv_rows(manifest: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """A header row (its columns checked once), then a model per row; an empty cell is not set."""
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise SettingsError(
            f"{manifest}: empty manifest (a header row with a path column, then one model per row)"
        )
    columns = _columns(header, str(manifest))
    if "path" not in columns:
        raise SettingsError(f"{manifest}: no path column in the header {','.join(header)!r}")
    for number, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(columns):
            raise SettingsError(f"{manifest} line {number}: {len(cells)} cells for {len(columns)} columns")
        yield number, dict(zip(columns, cells, strict=False))


def _jsonl_rows(manifest: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """A JSON object per line, its keys checked as a header's are."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{manifest} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{where}: not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict):
            raise SettingsError(f"{where}: not a JSON object")
        yield number, dict(zip(_columns(row, where), row.values(), strict=True))


def read_manifest(path: str | Path) -> list[ModelEntry]:
    """The models a manifest lists (``.csv`` or ``.jsonl``); one-line :class:`SettingsError` for a
    missing or malformed manifest, an unknown column or a bad value."""
    manifest = Path(path)
    if manifest.suffix.lower() not in MANIFEST_SUFFIXES:
        raise SettingsError(f"{manifest}: a manifest is .csv or .jsonl")
    refuse_special(manifest, what="the manifest", error=SettingsError)
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SettingsError(f"{manifest}: manifest not found") from None
    except IsADirectoryError:
        raise SettingsError(f"{manifest}: a directory, not a manifest file") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{manifest}: not a text file (a manifest is CSV or JSON Lines)") from None
    except OSError as exc:
        raise SettingsError(f"{manifest}: cannot read manifest ({exc.strerror or exc})") from None
    rows = _csv_rows(manifest, text) if manifest.suffix.lower() == ".csv" else _jsonl_rows(manifest, text)
    entries = [_entry(row, manifest, f"{manifest} line {number}") for number, row in rows]
    if not entries:
        raise SettingsError(f"{manifest}: the manifest lists no models")
    return entries
