"""``--data PATH``: recognise an image folder, a GTSRB directory, CIFAR binary batches, an ``.npz`` file or
MNIST-style IDX files, and read it shaped for the model."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .._io import mode_kind
from ..errors import DataError, SettingsError
from .cifar import cifar_kind, load_cifar
from .convert import check_input_shape
from .dataset import ImageDataset
from .folder import load_image_folder
from .gtsrb import is_gtsrb, load_gtsrb
from .mnist import _IDX_STEMS, _find, load_idx_split
from .npz import load_npz

__all__ = ["load_images", "detect_data_format", "DATA_FORMATS"]

DATA_FORMATS = ("folder", "gtsrb", "cifar", "npz", "idx")

log = logging.getLogger(__name__)


def detect_data_format(path: Path) -> str:
    """Which of :data:`DATA_FORMATS` ``path`` holds; a one-line :class:`DataError` if none."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{path}: data path not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    kind = mode_kind(mode)
    if kind is not None:
        raise DataError(f"{path}: {kind}, not a regular file or a directory of images")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "npz"
        if path.suffix.lower() == ".bin":
            return "cifar"
        raise DataError(
            f"{path}: unknown data file (expected a directory, an .npz file or a CIFAR .bin batch)"
        )
    if is_gtsrb(path):
        return "gtsrb"
    if cifar_kind(path) is not None:
        return "cifar"
    if _find(path, _IDX_STEMS["test_images"]) or _find(path, _IDX_STEMS["train_images"]):
        return "idx"
    if any(p.is_dir() for p in path.iterdir()):
        return "folder"
    raise DataError(f"{path}: empty or unrecognised data directory (expected {path}/<class>/<images>)")


def load_images(
    path: str | os.PathLike[str],
    *,
    input_shape: tuple[int, int, int] | None = None,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    split: str = "test",
) -> ImageDataset:
    """Clean labelled images from ``path`` in any of :data:`DATA_FORMATS`, converted to ``input_shape``.

    ``split`` picks ``train`` or ``test`` where the format has both (GTSRB, CIFAR, IDX: a folder of only one
    split's IDX files serves that split). A source without train/test parts (an image folder, an ``.npz``
    file, one CIFAR batch file) is read whole, and its ``source_info`` records its own split
    (``"single"``, or ``"test"``/``"train"`` when its names say so); asked for ``train``, it logs a warning
    that ``split`` had no effect.
    """
    p = Path(path)
    if input_shape is not None:
        input_shape = check_input_shape(input_shape)
    if split not in ("train", "test"):
        raise SettingsError(f"split must be train or test, got {split!r}")
    fmt = detect_data_format(p)
    data = _load(p, fmt, input_shape, class_names, num_classes, split)
    if len(data) == 0:
        where = f" in the {split} split" if fmt in ("gtsrb", "cifar", "idx") else ""
        raise DataError(f"{p}: no images{where}")
    own = data.source_info.get("split")
    if split == "train" and own is not None and own != "train":
        what = "has a single split (no train/test parts)" if own == "single" else f"holds only {own} images"
        log.warning(
            "--split train has no effect: %s %s; all its images were read (recorded as split %r)",
            p, what, own,
        )  # fmt: skip
    return data


def _load(
    p: Path,
    fmt: str,
    input_shape: tuple[int, int, int] | None,
    class_names: Sequence[str] | None,
    num_classes: int | None,
    split: str,
) -> ImageDataset:
    if fmt == "folder":
        return load_image_folder(p, class_names=class_names, input_shape=input_shape)
    if fmt == "gtsrb":
        return load_gtsrb(p, split=split, input_shape=input_shape or (3, 32, 32), class_names=class_names)
    if fmt == "cifar":
        return load_cifar(p, split=split, input_shape=input_shape, class_names=class_names)
    if fmt == "npz":
        return load_npz(p, class_names=class_names, num_classes=num_classes, input_shape=input_shape)
    names = tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes or 10))
    data = load_idx_split(p, split, name=p.name, class_names=names)
    if input_shape is not None:
        from .convert import conformed

        data = conformed(data, input_shape)
    return data
