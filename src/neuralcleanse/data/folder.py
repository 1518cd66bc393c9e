"""Image folders: ``root/<class>/*.png|jpg|...``, the usual class-subfolder convention."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._io import inside
from ..errors import DataError
from .convert import (
    IMAGE_SUFFIXES,
    arrays_to_dataset,
    check_input_shape,
    check_resize,
    read_image,
    warn_resized,
)
from .dataset import ImageDataset

__all__ = ["load_image_folder", "folder_classes"]

log = logging.getLogger(__name__)


def folder_classes(root: Path) -> list[str]:
    """Class folders in label order: numerically when every name is an integer (``0..42``, ``00012``),
    else sorted by name."""
    dirs = [d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if all(d.isdigit() for d in dirs):
        return sorted(dirs, key=int)
    return sorted(dirs)


def _class_images(root: Path, folder: Path) -> list[Path]:
    """The image files of one class folder, its subfolders included (``cat/indoor/1.png``), sorted by
    path. Hidden files and folders are skipped (macOS writes ``._name.png`` metadata beside each file);
    linked subfolders are not followed, and a class folder or image that is a link out of ``root`` is
    refused (:func:`~neuralcleanse._io.inside`), so nothing outside the data folder is read."""
    inside(root, folder, what="the class folder")
    files: list[Path] = []
    for here, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            p = Path(here) / name
            if p.suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".") and p.is_file():
                files.append(inside(root, p, what="the image"))
    return sorted(files)


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    input_shape: tuple[int, int, int] | None = None,
    max_per_class: int | None = None,
) -> ImageDataset:
    """Read every image under ``root/<class>/`` (and its subfolders).

    Labels follow ``class_names`` (a names file's order; every folder must be one of them) or, without
    it, the folder order of :func:`folder_classes`; numeric folder names (``0``, ``7``, ``00042``) are
    their label. Images are converted to ``input_shape`` (grey/RGB, resized) when it is given, else to the
    first image's size and mode.
    """
    r = Path(root)
    if input_shape is not None:
        input_shape = check_input_shape(input_shape)
    if not r.is_dir():
        raise DataError(f"{r}: image folder not found")
    folders = folder_classes(r)
    if not folders:
        raise DataError(f"{r}: no class folders (expected {r}/<class>/<image files>)")
    if class_names is not None:
        names = list(class_names)
        unknown = [f for f in folders if f not in names]
        if unknown:
            raise DataError(f"{r / unknown[0]}: folder {unknown[0]!r} is not in the class names file")
        label_of = {f: names.index(f) for f in folders}
    elif all(f.isdigit() for f in folders):
        top = max(int(f) for f in folders)
        label_of = {f: int(f) for f in folders}
        names = [next((f for f in folders if int(f) == i), str(i)) for i in range(top + 1)]
    else:
        names = folders
        label_of = {f: i for i, f in enumerate(folders)}
    images: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[Path] = []
    read_as: list[tuple[int, int, int]] = []  # each file's own shape
    channels = input_shape[0] if input_shape else None
    size = (input_shape[1], input_shape[2]) if input_shape else None
    for folder in folders:
        files = _class_images(r, r / folder)
        if not files:
            raise DataError(f"{r / folder}: class folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for f in files[:max_per_class]:
            arr = read_image(f, channels=channels, size=size, read_as=read_as)
            if size is not None:
                check_resize(f, read_as[-1][1:], size)
            if channels is None:  # the first image fixes mode and size for the rest
                channels, size = arr.shape[2], (arr.shape[0], arr.shape[1])
            images.append(arr)
            labels.append(label_of[folder])
            paths.append(f)
    data = arrays_to_dataset(np.stack(images), np.asarray(labels), class_names=names, name=str(r))
    data = dataclasses.replace(data, source_info={"split": "single"})
    conflicts = data.label_conflicts()
    if conflicts:
        i, j = conflicts[0]
        log.warning(
            "%s: images copied into another class folder: %d (e.g. %s and %s, the same pixels): mislabelled "
            "copies; the model can be right on only one of each",
            r, len(conflicts), paths[i].relative_to(r), paths[j].relative_to(r),
        )  # fmt: skip
    changed = Counter(shape for shape in read_as if shape != data.input_shape)
    if not changed:
        return data
    resized = Counter(shape[1:] for shape in read_as if shape[1:] != data.input_shape[1:])
    if resized:
        (hw, _), n = resized.most_common(1)[0], sum(resized.values())
        warn_resized(
            r, hw, data.input_shape[1:], count="" if n == len(read_as) else f"{n} of {len(read_as)} "
        )
    return dataclasses.replace(data, converted_from=changed.most_common(1)[0][0])
