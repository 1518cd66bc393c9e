"""Load a model the way the user received it: an exported program, a state dict + architecture,
a TorchScript archive or a neuralcleanse model directory — never by unpickling arbitrary objects.

The format is read from the file's content, not its name:

==================  =========================================================================
``export``          ``torch.export.save`` archive (``.pt2``), loaded by :mod:`.export` with the
                    unsafe parts of ``torch.export.load`` shut off
``safetensors``     weights only; needs ``arch`` (a built-in name or ``package.module:Class``)
``state-dict``      ``torch.save`` of a state dict, read with ``torch.load(weights_only=True)``;
                    needs ``arch``
``torchscript``     ``torch.jit.save`` archive: always runs code embedded in the file, so it is
                    refused unless the caller opts in (``allow_torchscript=True``,
                    ``--allow-torchscript``); only for files you trust
``keras``           a Keras 3 ``.keras`` or legacy ``.h5`` model, loaded by :mod:`.keras` on Keras'
                    PyTorch backend (optional extra ``neuralcleanse[keras]``), ``safe_mode`` on
``model-dir``       a directory written by neuralcleanse (``card.json`` + ``model.safetensors``)
==================  =========================================================================
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import io
import logging
import os
import pickle
import re
import struct
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .._io import refuse_special
from ..device import resolve_device
from ..errors import DataError, ModelError, SettingsError, first_line
from ..metrics import check_rows
from ..modes import frozen_eval
from .adapt import InputCast, OutputPick, parse_output
from .architectures import ARCHITECTURES, WeightsShape, build_model
from .archive import ZipArchive, archive_kind, open_archive
from .card import ModelCard
from .keras import HDF5_SIGNATURE, load_keras
from .outputs import are_probabilities, are_sigmoid
from .preprocess import FixedBatchModel, Preprocessing
from .store import CARD_FILE, load_model_dir, load_state_dict_strict

__all__ = ["LoadedModel", "load_model", "sniff_format", "FORMATS"]

log = logging.getLogger(__name__)

FORMATS = ("export", "safetensors", "state-dict", "torchscript", "keras", "model-dir")


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready to scan: ``model`` maps pixels in ``[0, 1]`` to class scores.

    Attributes:
        model: the declared preprocessing and (for static-batch exports) batch chunking wrapped around
            the loaded network; in eval mode, parameters frozen, gradients flow to the input.
        network: the network as loaded (expects preprocessed input).
        format: one of :data:`FORMATS`.
        input_shape: ``(C, H, W)`` the network takes, when the file says (exports, cards) or it was given.
        static_batch: the fixed batch size of an exported program (inputs are chunked and padded to it).
        card: the model card of a neuralcleanse model directory.
    """

    model: nn.Module
    network: nn.Module
    format: str
    path: Path
    sha256: str
    preprocessing: Preprocessing
    input_shape: tuple[int, int, int] | None = None
    static_batch: int | None = None
    class_names: list[str] | None = None
    card: ModelCard | None = None
    arch: str | None = None
    notes: list[str] = field(default_factory=list)
    output_key: int | str | None = None

    def with_preprocessing(self, pre: Preprocessing, *, channels: int) -> nn.Module:
        """The loaded network behind another preprocessing than the declared one (to compare them)."""
        net = FixedBatchModel(self.network, self.static_batch) if self.static_batch else self.network
        # in eval mode like the network: a new wrapper is in training mode, which frozen_eval would restore
        # onto the whole network after the block (a BatchNorm network would then scan in training mode)
        return pre.wrap(net, channels=channels).eval()

    def range_note(self, images: torch.Tensor, labels: torch.Tensor, *, device: torch.device) -> str | None:
        """A note when the other input range (0-1 against 0-255) fits the model clearly better on labelled
        clean images than the declared one: ``None`` when the declaration fits. Accuracy alone does not
        tell (a ReLU network fed 255 times its input mostly keeps its argmax: 96.6% against 97.3% on the
        zoo's MNIST model); its cross-entropy does (19.4 against 0.075)."""
        pick = torch.arange(0, len(images), max(1, len(images) // 512))
        x, y = images[pick].to(device), labels[pick].to(device)
        pre = self.preprocessing
        other = dataclasses.replace(pre, scale=1.0 if pre.scale == 255.0 else 255.0)
        fits = []
        for model in (self.model, self.with_preprocessing(other, channels=x.shape[1]).to(device)):
            batches = [*(x[i : i + 256] for i in range(0, len(x), 256)), x[:2]]  # the last: a small batch
            with torch.no_grad(), frozen_eval(model):
                outs = [model(b) for b in batches]
            for scores, batch in zip(outs, batches, strict=True):
                check_rows(scores, len(batch))
            widths = sorted({int(t.shape[1]) for t in outs})
            if len(widths) > 1:
                raise DataError(
                    f"the model returns {widths[0]} class scores for some batch sizes and {widths[-1]} for "
                    f"others ({len(x[:256])} and 2 images): an image's scores must not depend on its batch"
                )
            out = torch.cat(outs[:-1]).float()
            if not torch.isfinite(out).all():
                return None  # the scan's own checks say what is wrong with non-finite scores
            if are_probabilities(out) or are_sigmoid(out):  # a softmax (sigmoid) head: its log is the score
                out = out.clamp_min(1e-12).log()
            fits.append((float(F.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())))
        (loss, right), (other_loss, other_right) = fits
        if other_loss > loss / 4 or other_right < right - 0.02:
            return None
        said, instead = (p.to_dict()["input_range"] for p in (pre, other))
        return (
            f"the model fits the clean images far better with input range {instead} than with the declared "
            f"{said} (cross-entropy {other_loss:.3g} against {loss:.3g}, {other_right:.0%} right against "
            f"{right:.0%}): is --input-range (or the card's input_range) right?"
        )

    def scan_info(
        self, images: torch.Tensor, labels: torch.Tensor, *, device: torch.device
    ) -> tuple[dict[str, Any], str | None]:
        """What a scan's report records of the model (:meth:`describe`), checked against its labelled clean
        images: the :meth:`range_note`, if any, is warned about at once and recorded as
        ``input_range_doubt`` (the verdict then says its evidence is weak); returns both."""
        doubt = self.range_note(images, labels, device=device)
        info = self.describe()
        if doubt is not None:
            log.warning("%s", doubt)
            info["input_range_doubt"] = doubt
        return info, doubt

    def describe(self) -> dict[str, Any]:
        """What was loaded, for reports."""
        return {
            "path": str(self.path),
            "format": self.format,
            "sha256": self.sha256,
            "arch": self.arch,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "static_batch": self.static_batch,
            "preprocessing": self.preprocessing.to_dict(),
            **({"output_key": self.output_key} if self.output_key is not None else {}),
        }


class _EvalOnly(nn.Module):
    """Holds a module that is used as it was loaded, in inference mode: an exported program's module
    (which refuses ``.eval()``) or a TorchScript module (which refuses ``requires_grad_``);
    ``train()``/``eval()`` on the wrapper leave it alone."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def train(self, mode: bool = True) -> _EvalOnly:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.module(x)
        return out


def sniff_format(path: Path, data: bytes | None = None) -> str:
    """Which of :data:`FORMATS` the file is, from its bytes; a one-line :class:`ModelError` otherwise.

    Zip-based files are inspected (:func:`~neuralcleanse.models.archive.open_archive`) on the way: an
    archive with native code, unsafe member names or zip-bomb sizes is refused here.
    """
    if path.is_dir():
        if (path / CARD_FILE).exists():
            return "model-dir"
        raise ModelError(f"{path}: a directory without {CARD_FILE} is not a model directory")
    return _identify(path, _read(path) if data is None else data)[0]


#: what a self-describing model file is, for sentences
_KINDS = {
    "export": "a torch.export program",
    "torchscript": "a TorchScript archive",
    "keras": "a Keras model",
}


def _identify(path: Path, data: bytes) -> tuple[str, ZipArchive | None]:
    """The file's format and, for zip-based formats, the checked archive."""
    if len(data) == 0:
        raise ModelError(f"{path}: empty file")
    if data[:4] == b"PK\x03\x04":
        archive = open_archive(data, str(path))
        return archive_kind(archive), archive
    if data.startswith(HDF5_SIGNATURE):
        return "keras", None
    if len(data) >= 10 and data[8:9] == b"{":
        (n,) = struct.unpack("<Q", data[:8])
        if 0 < n <= len(data) - 8:
            return "safetensors", None
        raise ModelError(
            f"{path}: a safetensors header that declares {n:,} bytes in a file of {len(data):,}: truncated or corrupt"
        )
    if data[:1] == b"\x80":  # a pickle stream (legacy torch.save)
        return "state-dict", None
    raise ModelError(
        f"{path}: not a model file neuralcleanse reads (torch.export .pt2, safetensors, torch.save state dict, "
        "TorchScript, Keras .keras/.h5, or a model directory)"
    )


def _read(path: Path) -> bytes:
    refuse_special(path, what="the model file", error=ModelError)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: model file not found") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: is a directory") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file ({exc.strerror or exc})") from None


def _state_from_bytes(
    path: Path, data: bytes, fmt: str, archive: ZipArchive | None
) -> dict[str, torch.Tensor]:
    if fmt == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            return dict(load(data))
        except (SafetensorError, ValueError, OSError) as exc:
            raise ModelError(f"{path}: not a valid safetensors file ({exc})") from None
    if archive is not None:
        archive.check_members("state-dict")
        data = archive.repack()
    try:
        with warnings.catch_warnings():  # torch warns about the refused pickle before raising
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" (it calls {found.group(1)})" if found else ""
        raise ModelError(
            f"{path}: refused: the file holds pickled Python objects, not only tensors, and would run code "
            f"if unpickled{what}"
        ) from None
    except Exception as exc:  # truncated zip, bad magic number, ...
        first = first_line(exc, limit=160)
        raise ModelError(f"{path}: cannot read state dict ({first})") from None
    return _unwrap_state(path, obj)


def _unwrap_state(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    """A state dict, possibly inside ``{"state_dict": ...}``/``{"model": ...}``, possibly ``module.``-prefixed."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise ModelError(f"{path}: does not hold a state dict (a mapping of names to tensors)")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _import_class(spec: str) -> type[nn.Module]:
    """``package.module:Class`` or ``path/to/file.py:Class`` → the class (importing the user's code)."""
    mod_name, sep, cls_name = spec.rpartition(":")
    if not sep or not mod_name or not cls_name:
        raise SettingsError(
            f"architecture {spec!r}: use a built-in name ({', '.join(ARCHITECTURES)}) or package.module:Class"
        )
    log.warning("importing %s to build the architecture: this runs that code (your choice)", mod_name)
    try:
        if mod_name.endswith(".py"):
            file = Path(mod_name)
            if not file.is_file():
                raise SettingsError(f"architecture {spec!r}: {file} not found")
            unit = importlib.util.spec_from_file_location(f"_nc_user_arch_{file.stem}", file)
            if unit is None or unit.loader is None:
                raise SettingsError(f"architecture {spec!r}: cannot import {file}")
            module = importlib.util.module_from_spec(unit)
            folder = str(file.resolve().parent)  # like `python file.py`: its own folder's modules import
            added = folder not in sys.path
            if added:
                sys.path.insert(0, folder)
            try:
                unit.loader.exec_module(module)
            finally:
                if added and folder in sys.path:
                    sys.path.remove(folder)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.append(os.getcwd())  # like `python -m`: the working directory's packages
            module = importlib.import_module(mod_name)
    except SettingsError:
        raise
    except Exception as exc:
        raise SettingsError(f"architecture {spec!r}: import failed ({type(exc).__name__}: {exc})") from None
    cls = getattr(module, cls_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise SettingsError(f"architecture {spec!r}: {cls_name} is not an nn.Module class in {mod_name}")
    return cls


def _builtin_shape(arch: str, state: dict[str, torch.Tensor], path: Path) -> WeightsShape:
    """Input channels, image size (``None`` if the weights do not fix it) and classes of a built-in
    architecture, read off its weights."""
    try:
        return ARCHITECTURES[arch].weights_shape(state)
    except KeyError as exc:
        raise ModelError(
            f"{path}: weights do not fit the architecture {arch!r}: missing key {exc.args[0]!r}"
        ) from None


def load_model(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    input_shape: tuple[int, int, int] | None = None,
    preprocessing: Preprocessing | None = None,
    device: str | torch.device = "cpu",
    allow_torchscript: bool = False,
    output_key: int | str | None = None,
) -> LoadedModel:
    """Load a model file or directory for scanning.

    Args:
        path: a ``.pt2`` export, a safetensors or ``torch.save`` state dict, a TorchScript archive, or a
            neuralcleanse model directory. The format is detected from the content.
        arch: for state dicts: a built-in architecture (``mnist``, ``gtsrb``, ``bn-cnn``, ``resnet``) or
            ``package.module:Class`` / ``path/to/file.py:Class`` — importing that code is the caller's
            explicit choice.
        arch_kwargs: keyword arguments for the architecture class.
        input_shape: ``(C, H, W)`` the network takes, if the file does not say.
        preprocessing: what the network expects (range, mean/std, channel order); for model directories
            the card's declaration is used unless this is given.
        device: where the model runs.
        allow_torchscript: load a TorchScript archive (whatever its file name). TorchScript always runs
            code embedded in the file, so it is refused unless you opt in for a file you trust.
        output_key: for a network that returns several outputs (a tuple or list, a dict), which one holds
            the class scores: its index or key (``--output-key``).
    """
    p = Path(path)
    dev = resolve_device(device)
    key = None if output_key is None else parse_output(output_key)
    if p.is_dir():
        sniff_format(p)  # a directory without a card: a one-line error
        if key is not None:
            raise SettingsError(
                f"{p}: a model directory's network returns its class scores: drop --output-key"
            )
        if arch_kwargs:
            raise SettingsError(
                f"{p}: a model directory's card says how its network is built: drop --arch-kwargs"
            )
        loaded = _from_model_dir(p, preprocessing, dev)
        if arch is not None and arch != loaded.arch:
            raise SettingsError(
                f"{p}: the model directory's card says its network is {loaded.arch!r}, not {arch!r}"
            )
        if input_shape is not None and tuple(input_shape) != loaded.input_shape:
            raise SettingsError(
                f"{p}: the model directory's card says it takes {loaded.input_shape}, not {tuple(input_shape)}"
            )
        return loaded
    data = _read(p)
    fmt, archive = _identify(p, data)
    sha = hashlib.sha256(data).hexdigest()
    pre = preprocessing or Preprocessing()
    notes: list[str] = []
    static = None
    shape = input_shape
    if arch is not None and fmt in ("export", "torchscript", "keras"):
        raise SettingsError(
            f"{p}: --arch is for state dicts; this file is {_KINDS[fmt]}, which carries its own architecture: "
            "drop --arch"
        )
    if fmt == "export":
        from .export import load_exported_program

        assert archive is not None  # an export is always a zip archive
        module, info = load_exported_program(p, archive)
        network: nn.Module = _EvalOnly(module)
        if info.dtype is not None:
            network = InputCast(network, info.dtype)
            kind = str(info.dtype).removeprefix("torch.")
            slow = (
                "; float16 arithmetic is emulated on most CPUs, so expect the scan to be several times "
                "slower than in float32 there (a GPU runs it natively: --device cuda)"
                if info.dtype == torch.float16
                else ""
            )
            notes.append(
                f"the exported program runs in {kind}: images are cast to it, its scores back to float32{slow}"
            )
        if info.input_shape is not None:
            if shape is not None and tuple(shape) != info.input_shape:
                raise SettingsError(
                    f"{p}: the program takes {info.input_shape}, not the given {tuple(shape)}"
                )
            shape = info.input_shape
        static = info.static_batch
        if static is not None:
            notes.append(
                f"the exported program has a fixed batch size of {static}: inputs are run in chunks of it "
                "(all chunks in one vectorised call where that gives the same outputs; export with a dynamic "
                "batch dimension to run faster)"
            )
        network = network.to(dev)
    elif fmt == "keras":
        network, kinfo = load_keras(p, data, archive)
        if shape is not None and kinfo.input_shape is not None and tuple(shape) != kinfo.input_shape:
            raise SettingsError(
                f"{p}: the Keras model takes {kinfo.input_shape}, not the given {tuple(shape)}"
            )
        shape = shape or kinfo.input_shape
        layout = (
            "channels-last input (permuted from N, C, H, W)"
            if kinfo.channels_last
            else "channels-first input"
        )
        notes.append(f"Keras model (Keras 3, PyTorch backend, safe mode): {layout}")
        if kinfo.final_activation == "softmax":
            notes.append("the Keras model's last layer is a softmax: it outputs probabilities")
        network = network.to(dev)
    elif fmt == "torchscript":
        if not allow_torchscript:
            raise ModelError(
                f"{p}: refused: a TorchScript archive runs code embedded in the file; load it only if you "
                "trust its origin (--allow-torchscript, or allow_torchscript=True in the API)"
            )
        log.warning(
            "%s is TorchScript: a deprecated format whose archives run embedded code; load only files you trust",
            p,
        )
        notes.append("TorchScript archive: runs code embedded in the file (trusted files only)")
        assert archive is not None
        archive.check_members("torchscript")
        try:
            script = torch.jit.load(io.BytesIO(archive.repack()), map_location=dev)  # type: ignore[no-untyped-call]
            script.eval()
            network = _EvalOnly(script)
        except Exception as exc:
            first = first_line(exc, limit=160)
            raise ModelError(f"{p}: cannot load TorchScript archive ({first})") from None
    else:
        state = _state_from_bytes(p, data, fmt, archive)  # read (safely) first: is it weights at all?
        if arch is None:
            raise SettingsError(
                f"{p} holds only weights ({fmt}, {len(state)} tensors): name the architecture with --arch "
                f"({', '.join(ARCHITECTURES)} or package.module:Class)"
            )
        if arch in ARCHITECTURES:
            channels, size, classes = _builtin_shape(arch, state, p)
            if shape is None and size is not None:
                shape = (channels, *size)
            # a network that pools adaptively takes any image size: the weights fit whichever is given
            network = build_model(arch, input_shape=shape or (channels, 32, 32), num_classes=classes, seed=0)
        else:
            cls = _import_class(arch)
            try:
                network = cls(**(arch_kwargs or {}))
            except Exception as exc:
                raise SettingsError(
                    f"architecture {arch!r}: cannot build it ({type(exc).__name__}: {exc})"
                ) from None
        load_state_dict_strict(network, state, source=str(p))
        network = network.to(dev)
    if key is not None:
        network = OutputPick(network, key)
        notes.append(f"class scores: the model's output {key!r} (--output-key)")
    network.eval().requires_grad_(False)
    model: nn.Module = FixedBatchModel(network, static) if static else network
    if shape is not None:
        model = pre.wrap(model, channels=shape[0])
    elif not pre.is_identity:
        model = _LazyPixelModel(model, pre)
    model.eval().requires_grad_(False)
    return LoadedModel(
        model=model,
        network=network,
        format=fmt,
        path=p,
        sha256=sha,
        preprocessing=pre,
        input_shape=shape,
        static_batch=static,
        arch=arch,
        notes=notes,
        output_key=key,
    )


class _LazyPixelModel(nn.Module):
    """Preprocessing for a network whose channel count is only known from the first input."""

    def __init__(self, model: nn.Module, pre: Preprocessing) -> None:
        super().__init__()
        self.model, self.pre = model, pre
        self._wrapped: dict[int, nn.Module] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = int(x.shape[1])
        if c not in self._wrapped:
            self._wrapped[c] = self.pre.wrap(self.model, channels=c).to(x.device)
        out: torch.Tensor = self._wrapped[c](x)
        return out


def _from_model_dir(p: Path, pre: Preprocessing | None, dev: torch.device) -> LoadedModel:
    bundle = load_model_dir(p, device=dev)
    card = bundle.card
    pre = pre or Preprocessing.from_card(card.input_range, card.mean, card.std)
    c, h, w = card.input_shape
    model = pre.wrap(bundle.model, channels=c)
    model.eval().requires_grad_(False)
    return LoadedModel(
        model=model,
        network=bundle.model,
        format="model-dir",
        path=p,
        sha256=card.weights_sha256 or "",
        preprocessing=pre,
        input_shape=(c, h, w),
        class_names=list(card.class_names),
        card=card,
        arch=card.arch,
    )
