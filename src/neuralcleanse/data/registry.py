"""Dataset names understood by the CLI and the recipes."""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import SettingsError
from .dataset import DatasetSplits
from .mnist import load_fashion_mnist, load_mnist, load_mnist_sample

__all__ = ["DATASETS", "load_dataset"]

_Loader = Callable[["str | os.PathLike[str] | None"], DatasetSplits]

DATASETS: dict[str, tuple[_Loader, str]] = {
    "mnist-sample": (lambda _root: load_mnist_sample(), "5,000 MNIST digits embedded in the package"),
    "fashion-mnist": (
        load_fashion_mnist,
        "Fashion-MNIST 60k/10k (Debian's dataset-fashion-mnist or --data-dir)",
    ),
    "mnist": (load_mnist, "MNIST 60k/10k from --data-dir holding its IDX files"),
}


def load_dataset(name: str, *, root: str | os.PathLike[str] | None = None) -> DatasetSplits:
    """Load a dataset by name; ``root`` overrides where its files are read from."""
    try:
        loader, _ = DATASETS[name]
    except KeyError:
        raise SettingsError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
    return loader(root)
