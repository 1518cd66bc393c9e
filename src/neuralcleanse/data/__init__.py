"""Dataset sources and the :class:`ImageDataset` abstraction."""

from .dataset import DatasetSplits, ImageDataset
from .idx import read_idx, write_idx
from .mnist import (
    FASHION_MNIST_CLASSES,
    load_fashion_mnist,
    load_idx_directory,
    load_mnist,
    load_mnist_sample,
)
from .registry import DATASETS, load_dataset

__all__ = [
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "DatasetSplits",
    "ImageDataset",
    "load_dataset",
    "load_fashion_mnist",
    "load_idx_directory",
    "load_mnist",
    "load_mnist_sample",
    "read_idx",
    "write_idx",
]
