"""The dataset abstraction every other module uses."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import DataError, SettingsError

__all__ = ["ImageDataset", "DatasetSplits", "label_conflicts"]


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images and labels held in memory.

    Attributes:
        images: float32 tensor, shape ``(N, C, H, W)``: pixels in ``[0, 1]``, the space triggers are
            stamped in (:mod:`neuralcleanse.triggers`); a model's own input scaling or normalisation is
            applied after stamping, by the model (:class:`~neuralcleanse.models.preprocess.Preprocessing`).
        labels: int64 tensor, shape ``(N,)``, values in ``[0, num_classes)``.
        num_classes: number of classes of the task (not only those present).
        class_names: one name per class.
        name: a short identifier (``"mnist-sample/train"``).
        converted_from: ``(C, H, W)`` of the images as they were read, when they were converted to the
            model's input shape (grey↔RGB, resized); ``None`` when they were used as read.
        source_info: what the loader records about how the images were read, for the data section of a
            report: the arrays of an ``.npz`` file (``{"keys": {"images": ..., "labels": ...}}``, with
            ``"ignored_keys"`` when others were there), ``{"split": "single"}`` for a source without
            train/test parts (an image folder, an ``.npz`` file, one CIFAR batch file); empty by default.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]
    name: str
    converted_from: tuple[int, int, int] | None = None
    source_info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DataError(f"{self.name}: images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.images.dtype != torch.float32:
            raise DataError(f"{self.name}: images must be float32, got {self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"{self.name}: {self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}"
            )
        if self.labels.dtype != torch.int64:
            raise DataError(f"{self.name}: labels must be int64, got {self.labels.dtype}")
        if len(self.class_names) != self.num_classes:
            raise DataError(
                f"{self.name}: {self.num_classes} classes but {len(self.class_names)} class names"
            )
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            raise DataError(f"{self.name}: labels outside [0, {self.num_classes})")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, shape={self.input_shape}, "
            f"classes={self.num_classes})"
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def conversion_note(self) -> str | None:
        """What was done to the images to fit the model, for a report's notes (``None``: nothing)."""
        channels, size = self.conversions()
        done = [part for part in (channels, size) if part is not None]
        if not done:
            return None
        return (
            f"{self.name}: "
            + "; ".join(done)
            + "; a trigger found on converted images may differ from one on the model's own data"
        )

    def conversions(self) -> tuple[str | None, str | None]:
        """The channel conversion (grey↔colour) and the resize done to fit the model, each a phrase or None."""
        if self.converted_from is None or self.converted_from == self.input_shape:
            return None, None
        (c0, h0, w0), (c, h, w) = self.converted_from, self.input_shape
        channels = None
        if c0 == 1 and c == 3:
            channels = (
                "grey images were given to a colour model: each image's one channel was copied to R, G and B"
            )
        elif c0 == 3 and c == 1:
            channels = "colour images were given to a grey model: each was converted to grey (luma)"
        size = (
            f"the images were resized from {h0}x{w0} to the model's {h}x{w} (antialiased bilinear)"
            if (h0, w0) != (h, w)
            else None
        )
        return channels, size

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def label_conflicts(self) -> list[tuple[int, int]]:
        """:func:`label_conflicts` of these images and labels."""
        return label_conflicts(self.images, self.labels)

    def subset(
        self, indices: Sequence[int] | torch.Tensor | np.ndarray, *, name: str | None = None
    ) -> ImageDataset:
        """The images at ``indices``, in that order."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageDataset(
            images=self.images[idx],
            labels=self.labels[idx],
            num_classes=self.num_classes,
            class_names=self.class_names,
            name=name or self.name,
        )

    def replace(
        self,
        *,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        name: str | None = None,
    ) -> ImageDataset:
        """A copy with new images and/or labels (same classes)."""
        return ImageDataset(
            images=self.images if images is None else images,
            labels=self.labels if labels is None else labels,
            num_classes=self.num_classes,
            class_names=self.class_names,
            name=self.name if name is None else name,
            converted_from=self.converted_from,
            source_info=self.source_info,
        )

    def sample(
        self,
        n: int,
        *,
        seed: int,
        stratified: bool = True,
        classes: Sequence[int] | None = None,
    ) -> ImageDataset:
        """A seeded random subset of ``n`` images (or all, if fewer are available).

        With ``stratified`` the classes are represented as evenly as the data allows. ``classes`` restricts
        the draw to images of those labels.
        """
        if n <= 0:
            raise SettingsError(f"sample size must be positive, got {n}")
        rng = np.random.default_rng(seed)
        labels = self.labels.numpy()
        pool = np.arange(len(self))
        if classes is not None:
            for c in classes:
                if not 0 <= c < self.num_classes:
                    raise SettingsError(f"label {c} is outside [0, {self.num_classes})")
            pool = pool[np.isin(labels, np.asarray(list(classes)))]
        if len(pool) == 0:
            raise DataError(f"{self.name}: no images to sample from")
        if n >= len(pool):
            chosen = rng.permutation(pool)
        elif not stratified:
            chosen = rng.choice(pool, size=n, replace=False)
        else:
            chosen = _stratified(rng, pool, labels[pool], n)
        return self.subset(chosen)


def label_conflicts(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, of images that are identical pixel for pixel but carry different
    labels (a file copied into two class folders, a mislabelled duplicate): ``j`` against the first image
    with those pixels."""
    first: dict[bytes, int] = {}
    out = []
    flat = images.detach().reshape(len(images), -1).cpu().contiguous().numpy()
    for j, row in enumerate(flat):
        i = first.setdefault(hashlib.blake2b(row.tobytes(), digest_size=16).digest(), j)
        if i != j and int(labels[i]) != int(labels[j]):
            out.append((i, j))
    return out


def _stratified(rng: np.random.Generator, pool: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Round-robin over shuffled per-class queues so every class gets its share."""
    queues = [rng.permutation(pool[labels == c]).tolist() for c in np.unique(labels)]
    order = rng.permutation(len(queues))
    chosen: list[int] = []
    while len(chosen) < n:
        for q in order:
            if queues[q] and len(chosen) < n:
                chosen.append(queues[q].pop())
    return rng.permutation(np.asarray(chosen, dtype=np.int64))


@dataclass(frozen=True)
class DatasetSplits:
    """A task's training and test sets."""

    name: str
    train: ImageDataset
    test: ImageDataset
    info: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.train.input_shape != self.test.input_shape:
            raise DataError(
                f"{self.name}: train {self.train.input_shape} and test {self.test.input_shape} differ"
            )
        if self.train.num_classes != self.test.num_classes:
            raise DataError(f"{self.name}: train and test disagree on the number of classes")

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.train.input_shape

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names
