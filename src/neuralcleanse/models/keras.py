"""Keras models — the original Neural Cleanse's own format — through Keras 3 on its PyTorch backend.

A ``.keras`` file (a zip: ``config.json``, ``metadata.json``, ``model.weights.h5``) or a legacy ``.h5``
file (HDF5 with a ``model_config`` attribute) is inspected before Keras sees it:

* the ``.keras`` archive passes :func:`~neuralcleanse.models.archive.open_archive` (names, sizes, native
  code) and an allow-list of its members; Keras loads a re-packed copy;
* the model's JSON config is walked: a ``Lambda`` layer or a plain Python function (a lambda given as an
  activation: both carry Python bytecode) and any object whose
  ``module`` is not Keras' own (loading it would import that module) are refused;
* an ``.h5`` file may not link to other files (HDF5 external links or external raw data);
* Keras then loads it with ``safe_mode=True`` and ``compile=False`` from a private temporary copy (the
  file cannot change between the check and the load).

With the PyTorch backend a Keras model *is* a ``torch.nn.Module``: gradients flow to the input as for
any other model. Keras image models take channels-last input ``(N, H, W, C)``; :class:`KerasClassifier`
takes ``(N, C, H, W)`` like every model here and permutes. ``KERAS_BACKEND=torch`` is set by us when we
are the first to import Keras; Keras already imported with another backend is a one-line error.
Keras is an optional extra: ``pip install 'neuralcleanse[keras]'``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, SettingsError, first_line
from .archive import ZipArchive

__all__ = ["KerasClassifier", "KerasInfo", "load_keras", "HDF5_SIGNATURE"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_CODE_CLASSES = frozenset({"Lambda", "__lambda__", "TFOpLambda", "SlicingOpLambda"})


@dataclass(frozen=True)
class KerasInfo:
    """What the Keras file says: the input shape as ``(C, H, W)``, its layout, the final activation."""

    input_shape: tuple[int, int, int] | None
    channels_last: bool
    final_activation: str | None


class KerasClassifier(nn.Module):
    """A Keras model taking ``(N, C, H, W)`` images like every other model here.

    Shape:
        input ``(N, C, H, W)``; output whatever the Keras model returns: ``(N, classes)``, or a list or
        dict of outputs (a model with several heads) of which ``--output-key`` chooses one.
    """

    def __init__(self, keras_model: nn.Module, *, channels_last: bool) -> None:
        super().__init__()
        self.keras_model = keras_model
        self.channels_last = channels_last

    def train(self, mode: bool = True) -> KerasClassifier:
        self.training = mode  # Keras layers take `training` per call; ours are always called for inference
        return self

    def forward(self, x: torch.Tensor) -> Any:
        if self.channels_last:
            x = x.permute(0, 2, 3, 1)
        out = self.keras_model(x, training=False)
        if not isinstance(out, (torch.Tensor, list, tuple, dict)):
            raise ModelError(f"the Keras model returned {type(out).__name__}, not a tensor of class scores")
        return out  # several outputs (a list, a dict) are chosen from with --output-key


def _import_keras() -> Any:
    """Keras on the torch backend; a one-line error when it is missing or runs another backend."""
    loaded = sys.modules.get("keras")
    if loaded is None:
        os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras reads it once, at its first import
        try:
            import keras
        except ImportError:
            raise SettingsError(
                "this is a Keras model: install the extra with pip install 'neuralcleanse[keras]'"
            ) from None
        loaded = keras
    backend = loaded.backend.backend()
    if backend != "torch":
        raise SettingsError(
            f"Keras is already running on the {backend!r} backend in this process; neuralcleanse needs the "
            "torch backend (set KERAS_BACKEND=torch before importing keras)"
        )
    return loaded


def _check_config(node: Any, source: str) -> None:
    """Refuse layers that carry code and objects from modules other than Keras' own."""
    if isinstance(node, list):
        for item in node:
            _check_config(item, source)
        return
    if not isinstance(node, dict):
        return
    cls = node.get("class_name")
    if cls in _CODE_CLASSES:
        name = (node.get("config") or {}).get("name") if isinstance(node.get("config"), dict) else None
        raise ModelError(
            f"{source}: refused: layer {name or cls!r} is a {cls} layer, which carries Python code that "
            "Keras would run"
        )
    if _is_function_dump(node):
        raise ModelError(
            f"{source}: refused: the config holds a Python function's bytecode (a lambda, e.g. as an "
            "activation), which Keras would run"
        )
    module = node.get("module")
    if isinstance(module, str) and not (module == "keras" or module.startswith("keras.")):
        raise ModelError(f"{source}: refused: the config names module {module!r}, which Keras would import")
    for value in node.values():
        _check_config(value, source)


def _is_function_dump(node: dict[str, Any]) -> bool:
    """Keras' dump of a plain Python function (a lambda given as an activation or a loss): ``{"value":
    [marshalled bytecode as base64, defaults, closure]}``, with no class name to recognise it by."""
    value = node.get("value")
    return (
        "class_name" not in node
        and isinstance(value, (list, tuple))
        and len(value) == 3
        and isinstance(value[0], str)
        and len(value[0]) > 16
    )


def _h5_config(path: Path, data: bytes) -> dict[str, Any]:
    """The ``model_config`` of a legacy ``.h5`` file; refuses files linking to other files."""
    import h5py

    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            raw = f.attrs.get("model_config")
            outside: list[str] = []

            def visit(name: str) -> None:
                link = f.get(name, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    outside.append(name)
                    return
                obj = f.get(name)
                if isinstance(obj, h5py.Dataset) and obj.external:
                    outside.append(name)

            f.visit(visit)
    except OSError as exc:
        raise ModelError(f"{path}: not a readable HDF5 file ({exc})") from None
    if outside:
        raise ModelError(f"{path}: refused: HDF5 object {outside[0]!r} reads data from another file")
    if raw is None:
        raise ModelError(f"{path}: an HDF5 file without a Keras model_config (weights only, or not Keras)")
    text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    return _parse_json(text, path)


def _parse_json(text: str | bytes, path: Path) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: the Keras model config is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: the Keras model config is not a JSON object")
    return config


def _describe(model: Any, config: dict[str, Any], path: Path) -> KerasInfo:
    try:
        shape = tuple(model.input_shape)
    except (AttributeError, ValueError, TypeError):
        shape = ()
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise ModelError(
            f"{path}: the Keras model's input is {shape or 'unknown'}; expected one image batch "
            "(None, H, W, C) or (None, C, H, W)"
        )
    _, a, b, c = shape
    channels_last = c in (1, 3) or a not in (1, 3)
    chw = (c, a, b) if channels_last else (a, b, c)
    return KerasInfo(chw, channels_last, _final_activation(config))


def _final_activation(config: dict[str, Any]) -> str | None:
    """The last layer's activation (``"softmax"`` also for a final ``Softmax`` layer), if the config says."""
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    last = layers[-1] if isinstance(layers, list) and layers else None
    if not isinstance(last, dict):
        return None
    if last.get("class_name") == "Softmax":
        return "softmax"
    settings = last.get("config")
    activation = settings.get("activation") if isinstance(settings, dict) else None
    return activation if isinstance(activation, str) else None


def load_keras(path: Path, data: bytes, archive: ZipArchive | None) -> tuple[KerasClassifier, KerasInfo]:
    """Load the Keras model in ``data`` (the bytes of ``path``: a checked ``.keras`` archive, or an
    ``.h5`` file when ``archive`` is ``None``) after the checks in the module docstring."""
    if archive is not None:
        archive.check_members("keras")
        config = _parse_json(archive.read("config.json"), path)
        payload, suffix = archive.repack(), ".keras"
    else:
        config = _h5_config(path, data)
        payload, suffix = data, ".h5"
    _check_config(config, str(path))
    keras = _import_keras()
    with tempfile.TemporaryDirectory(prefix="nc-keras-") as tmp:
        copy = Path(tmp) / f"model{suffix}"
        copy.write_bytes(payload)
        try:
            model = keras.saving.load_model(copy, safe_mode=True, compile=False)
        except Exception as exc:  # Keras raises many kinds on files it cannot read
            first = first_line(exc, limit=200)
            raise ModelError(f"{path}: cannot load the Keras model ({first})") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{path}: Keras did not return a PyTorch-backed model")
    info = _describe(model, config, path)
    model.requires_grad_(False)
    return KerasClassifier(model, channels_last=info.channels_last), info
