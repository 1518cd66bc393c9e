"""Dataset names understood by the CLI and the recipes."""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import SettingsError
from .dataset import DatasetSplits
from .gtsrb import load_gtsrb
from .mnist import load_fashion_mnist, load_mnist, load_mnist_sample
from .signs import load_traffic_signs

__all__ = ["DATASETS", "load_dataset"]

_Loader = Callable[["str | os.PathLike[str] | None"], DatasetSplits]

DATASETS: dict[str, tuple[_Loader, str]] = {
    "mnist-sample": (lambda _root: load_mnist_sample(), "5,000 MNIST digits embedded in the package"),
    "fashion-mnist": (
        load_fashion_mnist,
        "Fashion-MNIST 60k/10k (Debian's dataset-fashion-mnist or --data-dir)",
    ),
    "mnist": (load_mnist, "MNIST 60k/10k from --data-dir holding its IDX files"),
    "traffic-signs": (
        load_traffic_signs,
        "43-class generated traffic-sign set, 32x32 colour, GTSRB format (cached; --data-dir moves the cache)",
    ),
    "traffic-signs-200": (
        lambda root: load_traffic_signs(root, classes=200),
        "200-class generated sign set (the 43 signs, then numbered signs in 6 shapes x 6 colour schemes), "
        "32x32 colour, GTSRB format (cached)",
    ),
    "gtsrb": (
        lambda root: _load_real_gtsrb(root),
        "the real GTSRB benchmark from --data-dir (its own layout)",
    ),
}


def _load_real_gtsrb(root: str | os.PathLike[str] | None) -> DatasetSplits:
    if root is None:
        raise SettingsError(
            "dataset gtsrb needs --data-dir pointing at a GTSRB directory (Final_Training/, Final_Test/)"
        )
    return DatasetSplits(
        name="gtsrb", train=load_gtsrb(root, split="train"), test=load_gtsrb(root, split="test")
    )


def load_dataset(name: str, *, root: str | os.PathLike[str] | None = None) -> DatasetSplits:
    """Load a dataset by name; ``root`` overrides where its files are read from."""
    try:
        loader, _ = DATASETS[name]
    except KeyError:
        raise SettingsError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
    return loader(root)
