"""How every command that works on a user's model opens it: one set of options, one loader.

``scan``, ``validate`` and ``mitigate`` take the same model-loading options (``--arch``,
``--arch-kwargs``, ``--input-shape``, ``--input-range``/``--mean``/``--std``/``--channel-order``,
``--allow-torchscript``, ``--class-names``) and clean-data options (``--data``, ``--dataset``,
``--data-dir``), defined once here; :func:`model_options` adds them to a command and hands it a single
:class:`ModelSource`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from .._io import read_json
from ..data.convert import MAX_SIDE
from ..errors import DataError, SettingsError
from ..models.adapt import parse_output

__all__ = [
    "ModelSource",
    "model_options",
    "default_out",
    "check_result_dir",
    "parse_shape",
    "build_preprocessing",
]


@dataclass(frozen=True)
class ModelSource:
    """The model file and the clean images, as the command line named them."""

    model: Path
    arch: str | None = None
    arch_kwargs: str | None = None
    allow_torchscript: bool = False
    output_key: str | None = None
    input_shape: str | None = None
    input_range: str | None = None
    mean: str | None = None
    std: str | None = None
    channel_order: str | None = None
    class_names: Path | None = None
    data: Path | None = None
    dataset: str | None = None
    data_dir: Path | None = None

    @property
    def inputs(self) -> tuple[Path, ...]:
        """The files and folders the command reads: the model, ``--arch file.py``'s file, the images and
        class names (a result folder may not hold them: it is replaced as a whole)."""
        from ..fleet.manifest import arch_file

        given = (self.model, arch_file(self.arch or ""), self.data, self.data_dir, self.class_names)
        return tuple(p for p in given if p is not None)

    def check(self) -> None:
        """Everything knowable without reading a file (before any work)."""
        if self.data is not None and self.dataset is not None:
            raise SettingsError("give either --data or --dataset, not both")
        parse_shape(self.input_shape)
        if self.output_key is not None:
            parse_output(self.output_key)
        self.parsed_arch_kwargs()
        build_preprocessing(self.input_range, self.mean, self.std, self.channel_order)

    def check_data_files(self) -> None:
        """The images, the data folder and the class names exist: a fleet names a model's missing file
        before it scans any (the model files and ``--arch`` files are checked as the fleet collects them)."""
        given = (
            (self.data, "data path"),
            (self.data_dir, "data folder"),
            (self.class_names, "class names file"),
        )
        for path, what in given:
            if path is not None and not path.exists():
                raise DataError(f"{path}: {what} not found")

    def parsed_arch_kwargs(self) -> dict[str, Any] | None:
        try:
            kwargs = json.loads(self.arch_kwargs) if self.arch_kwargs else None
        except json.JSONDecodeError as exc:
            raise SettingsError(f"--arch-kwargs is not valid JSON ({exc})") from None
        if kwargs is not None and not isinstance(kwargs, dict):
            raise SettingsError("--arch-kwargs must be a JSON object")
        return kwargs

    def load(self, device: str) -> Any:
        """The :class:`~neuralcleanse.models.loading.LoadedModel` (any format ``load_model`` reads)."""
        from ..models.loading import load_model

        return load_model(
            self.model,
            arch=self.arch,
            arch_kwargs=self.parsed_arch_kwargs(),
            input_shape=parse_shape(self.input_shape),
            preprocessing=build_preprocessing(self.input_range, self.mean, self.std, self.channel_order),
            device=device,
            allow_torchscript=self.allow_torchscript,
            output_key=self.output_key,
        )

    def names(self, loaded: Any) -> tuple[list[str] | None, str]:
        """The class names (``--class-names``, else the card's) and where they came from."""
        from ..data.convert import read_class_names

        if self.class_names is not None:
            return read_class_names(self.class_names), f"--class-names {self.class_names}"
        return loaded.class_names, f"{self.model} (its card)"

    def images(self, loaded: Any, names: Any, *, split: str = "test") -> tuple[Any, dict[str, Any]]:
        """Clean labelled images shaped for the model (``--data``, else ``--dataset`` or the card's data
        set; ``split`` of either) and a description for reports: its ``split`` is the one read, or
        ``"single"`` for ``--data`` without train/test parts (an image folder, an ``.npz`` file), whatever
        ``split`` asked for; an ``.npz`` file's ``keys`` (and ``ignored_keys``) are recorded too."""
        from ..data.convert import conformed
        from ..data.files import detect_data_format, load_images
        from ..data.registry import load_dataset

        shape = loaded.input_shape
        if self.data is not None:
            images = load_images(self.data, input_shape=shape, class_names=names, split=split)
            info: dict[str, Any] = {
                "path": str(self.data),
                "format": detect_data_format(self.data),
                "split": split,
                **images.source_info,  # the split a source without train/test parts has, .npz keys
            }
        else:
            name = self.dataset_name(loaded)
            splits = load_dataset(name, root=self.data_dir)
            images = splits.train if split == "train" else splits.test
            if shape is not None:
                images = conformed(images, shape)
            info = {"dataset": name, "split": split}
        if shape is not None and images.input_shape != tuple(shape):
            raise DataError(f"images are {images.input_shape}, the model takes {tuple(shape)}")
        info["images_read"] = len(images)
        if images.converted_from is not None:
            info["converted_from"] = list(images.converted_from)
        return images, info

    def splits(self, loaded: Any, names: Any) -> tuple[Any, Any, str]:
        """``(train, test, how)`` for mitigations that fine-tune: a built-in data set's own splits, or,
        for ``--data``, a seeded class-stratified half of the images each (fine-tuned on the first half,
        measured on the second)."""
        from ..data.convert import conformed
        from ..data.registry import load_dataset

        if self.data is None:
            name = self.dataset_name(loaded)
            data = load_dataset(name.split("/")[0], root=self.data_dir)
            train, test = data.train, data.test
            shape = loaded.input_shape
            if shape is not None:
                train, test = conformed(train, shape), conformed(test, shape)
            return train, test, f"{name}: train split fine-tuned, test split measured"
        images, _ = self.images(loaded, names)
        if len(images) < 4:
            raise DataError(
                f"{self.data}: {len(images)} images; unlearning needs at least 4 (half to fine-tune)"
            )
        first_idx, rest_idx = _halves(images.labels.numpy())
        first, test = images.subset(first_idx), images.subset(rest_idx)
        how = f"{self.data}: {len(first)} images fine-tuned, the other {len(test)} measured (seeded halves)"
        return first, test, how

    def dataset_name(self, loaded: Any) -> str:
        """The built-in data set the clean images come from without ``--data`` (``--dataset``, else the card's)."""
        name = self.dataset or (loaded.card.dataset if loaded.card is not None else None)
        if name is None:
            raise SettingsError("no clean images: pass --data PATH (or --dataset NAME)")
        return str(name)


def _halves(labels: np.ndarray, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded class-stratified halves: each class's images shuffled, every other one to each half."""
    rng = np.random.default_rng(seed)
    first: list[int] = []
    second: list[int] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c)).tolist()
        first += idx[0::2]
        second += idx[1::2]
    return sorted(first), sorted(second)


def parse_shape(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        dims = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1 or dims[0] not in (1, 3) or max(dims[1:]) > MAX_SIDE:
        raise SettingsError(
            f"--input-shape must be CxHxW with C 1 or 3 and sides up to {MAX_SIDE}, e.g. 3x32x32; got {text!r}"
        )
    return dims[0], dims[1], dims[2]


def build_preprocessing(
    input_range: str | None, mean: str | None, std: str | None, channel_order: str | None
) -> Any:
    """The declared preprocessing from CLI flags, or ``None`` when no flag was given (card/default applies)."""
    from ..models.preprocess import Preprocessing, parse_floats, parse_input_range

    if input_range is None and mean is None and std is None and channel_order is None:
        return None
    return Preprocessing(
        scale=parse_input_range(input_range or "0-1"),
        mean=parse_floats(mean, what="--mean") if mean is not None else None,  # "" is refused, not ignored
        std=parse_floats(std, what="--std") if std is not None else None,
        channel_order=channel_order or "rgb",
    )


def default_out(root: str, model: Path, suffix: str = "") -> Path:
    """A default result folder that no other model shares: ``ROOT/<parent>-<name><suffix>-<hash>``, the
    hash of the model's resolved path (``runs/a/model`` and ``runs/b/model`` get different folders, the
    same model always the same one)."""
    resolved = model.resolve()
    name = resolved.name.split(".")[0] if resolved.suffix else resolved.name
    parent = resolved.parent.name
    digest = hashlib.sha256(str(resolved).encode("utf-8", "surrogateescape")).hexdigest()[:6]
    return Path(root) / f"{parent + '-' if parent else ''}{name}{suffix}-{digest}"


def _recorded_model(folder: Path) -> str | None:
    """The model path a result folder records (a scan's ``report.json``), if it is readable."""
    try:
        path = read_json(folder / "report.json", what="scan report")["model"]["path"]
    except (DataError, KeyError, TypeError):
        return None
    return path if isinstance(path, str) else None


def check_result_dir(
    out: Path, model: Path, *, force: bool, explicit: bool, inputs: Sequence[Path] = ()
) -> None:
    """Before any work: the result folder can be written, and holds none of ``inputs`` (every file the
    command reads, the model among them: they would go with it). A default folder that holds another
    model's result is never replaced, even with ``--force``: the user names a folder instead."""
    from .._io import check_output_dir

    if not explicit and out.is_dir() and any(out.iterdir()):
        other = _recorded_model(out)
        if other is not None and Path(other).resolve() != model.resolve():
            raise SettingsError(
                f"the default folder {out} holds the scan of another model ({other}); choose one with --out"
            )
    check_output_dir(out, force=force, option="--out", inputs=inputs)


_DATA_HELP = (
    "Clean labelled images: an image folder (<class>/<images>), a GTSRB directory, CIFAR binary batches, "
    "an .npz file or IDX files."
)

_OPTIONS: list[Callable[[Any], Any]] = [
    click.argument("model", type=click.Path(path_type=Path)),
    click.option("--data", "data_path", type=click.Path(path_type=Path), help=_DATA_HELP),
    click.option(
        "--dataset", help="A built-in dataset's test split instead of --data (default: the model card's)."
    ),
    click.option(
        "--data-dir", type=click.Path(path_type=Path), help="Where the built-in dataset's files are."
    ),
    click.option(
        "--arch",
        help="For a weights-only file: mnist, gtsrb, bn-cnn, resnet, or package.module:Class / "
        "file.py:Class (imports that code: your choice).",
    ),
    click.option(
        "--arch-kwargs", help="JSON keyword arguments for the architecture class, e.g. '{\"classes\": 10}'."
    ),
    click.option(
        "--allow-torchscript",
        is_flag=True,
        help="Load a TorchScript archive: it runs code embedded in the file (only for files you trust).",
    ),
    click.option(
        "--output-key",
        help="For a network that returns several outputs (a tuple, a dict, a named tuple): the index (0), "
        "key or field name (logits) of the class scores, or a dotted path to a nested one (heads.1.cls).",
    ),
    click.option("--input-shape", help="CxHxW the network takes, if the file does not say (e.g. 3x32x32)."),
    click.option(
        "--input-range",
        type=click.Choice(["0-1", "0-255"]),
        help="Pixel range the network expects (default 0-1).",
    ),
    click.option(
        "--mean", help="Per-channel mean the network subtracts after scaling, e.g. 0.485,0.456,0.406."
    ),
    click.option("--std", help="Per-channel std the network divides by, e.g. 0.229,0.224,0.225."),
    click.option(
        "--channel-order", type=click.Choice(["rgb", "bgr"]), help="Channel order the network expects."
    ),
    click.option("--class-names", type=click.Path(path_type=Path), help="File with one class name per line."),
]

_KEYS = (
    "model", "data_path", "dataset", "data_dir", "arch", "arch_kwargs", "allow_torchscript", "output_key", "input_shape",
    "input_range", "mean", "std", "channel_order", "class_names",
)  # fmt: skip


def model_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the model-loading and clean-data options to a command; it receives them as ``source``."""

    @functools.wraps(f)
    def wrapper(**kwargs: Any) -> Any:
        values = {k: kwargs.pop(k) for k in _KEYS}
        values["data"] = values.pop("data_path")
        return f(source=ModelSource(**values), **kwargs)

    command: Callable[..., Any] = wrapper
    for deco in reversed(_OPTIONS):
        command = deco(command)
    return command
