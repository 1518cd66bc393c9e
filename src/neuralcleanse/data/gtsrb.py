"""The German Traffic Sign Recognition Benchmark's on-disk format (also written by our generated set).

Training: ``Final_Training/Images/<00000..00042>/GT-<class>.csv`` + ``*.ppm``; test:
``Final_Test/Images/*.ppm`` + ``GT-final_test.csv`` (in ``Final_Test/Images`` or the root). The CSVs are
``;``-separated: ``Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId``. Images are cropped to
their region of interest (the sign) and resized to the model's input.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .._io import atomic_directory, inside
from ..errors import DataError
from .convert import arrays_to_dataset, read_image
from .dataset import ImageDataset

__all__ = ["load_gtsrb", "write_gtsrb", "is_gtsrb", "GTSRB_CLASSES"]

GTSRB_CLASSES = 43
_FIELDS = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]


def is_gtsrb(root: Path) -> bool:
    return (root / "Final_Training" / "Images").is_dir() or (root / "Final_Test" / "Images").is_dir()


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read annotation file ({exc})") from None
    if not rows or "Filename" not in rows[0] or "ClassId" not in rows[0]:
        raise DataError(f"{path}: not a GTSRB annotation file (needs Filename;...;ClassId columns)")
    return rows


def _listed(root: Path, folder: Path, row: dict[str, str], csv_path: Path) -> Path:
    """The image an annotation row names, which must lie inside the data set's folder."""
    name = row.get("Filename") or ""
    return inside(root, folder / name, what=f"the image {name!r} listed in {csv_path.name}")


def _rows(root: Path, split: str) -> list[tuple[Path, dict[str, str]]]:
    out: list[tuple[Path, dict[str, str]]] = []
    if split == "train":
        base = root / "Final_Training" / "Images"
        if not base.is_dir():
            raise DataError(f"{root}: no Final_Training/Images directory")
        for d in sorted(p for p in base.iterdir() if p.is_dir()):
            gt = d / f"GT-{d.name}.csv"
            if not gt.is_file():
                raise DataError(f"{d}: annotation file GT-{d.name}.csv missing")
            out += [(_listed(root, d, r, gt), r) for r in _read_csv(gt)]
    else:
        base = root / "Final_Test" / "Images"
        found = next(
            (p for p in (base / "GT-final_test.csv", root / "GT-final_test.csv") if p.is_file()), None
        )
        if found is None:
            raise DataError(
                f"{root}: test labels GT-final_test.csv not found (in Final_Test/Images or the root)"
            )
        out = [(_listed(root, base, r, found), r) for r in _read_csv(found)]
    if not out:
        raise DataError(f"{root}: no {split} images listed")
    return out


def load_gtsrb(
    root: str | os.PathLike[str],
    *,
    split: str = "test",
    input_shape: tuple[int, int, int] | None = (3, 32, 32),
    class_names: Sequence[str] | None = None,
    crop: bool = True,
) -> ImageDataset:
    """One split (``train`` or ``test``) of a GTSRB directory, cropped to the signs and resized."""
    r = Path(root)
    if split not in ("train", "test"):
        raise DataError(f"GTSRB split must be train or test, got {split!r}")
    channels = input_shape[0] if input_shape else 3
    size = (input_shape[1], input_shape[2]) if input_shape else (32, 32)
    images, labels = [], []
    for path, row in _rows(r, split):
        try:
            label = int(row["ClassId"])
            box = (int(row["Roi.X1"]), int(row["Roi.Y1"]), int(row["Roi.X2"]) + 1, int(row["Roi.Y2"]) + 1)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: malformed annotation row {row}") from None
        if not path.is_file():
            raise DataError(f"{path}: image listed in the annotations is missing")
        images.append(read_image(path, channels=channels, size=size, box=box if crop else None))
        labels.append(label)
    y = np.asarray(labels)
    n = max(GTSRB_CLASSES, int(y.max()) + 1)
    names = list(class_names) if class_names else [f"{i:05d}" for i in range(n)]
    if int(y.max()) >= len(names) or y.min() < 0:
        raise DataError(f"{r}: class id {int(y.max())} outside the {len(names)} classes")
    return arrays_to_dataset(np.stack(images), y, class_names=names, name=f"{r}/{split}")


def write_gtsrb(
    root: str | os.PathLike[str],
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    force: bool = False,
) -> Path:
    """Write ``uint8 (N, H, W, 3)`` images and labels in GTSRB's layout (ROI = whole image), atomically."""
    with atomic_directory(root, force=force) as tmp:
        x, y = train
        for label in sorted({int(v) for v in y}):
            d = tmp / "Final_Training" / "Images" / f"{label:05d}"
            d.mkdir(parents=True)
            rows = []
            for i in np.flatnonzero(y == label):
                fname = f"{i:05d}_00000.ppm"
                Image.fromarray(x[i]).save(d / fname)
                rows.append(
                    [fname, x[i].shape[1], x[i].shape[0], 0, 0, x[i].shape[1] - 1, x[i].shape[0] - 1, label]
                )
            _write_csv(d / f"GT-{label:05d}.csv", rows)
        if test is not None:
            x, y = test[0], test[1]
            d = tmp / "Final_Test" / "Images"
            d.mkdir(parents=True)
            rows = []
            for j in range(len(x)):
                fname = f"{j:05d}.ppm"
                Image.fromarray(x[j]).save(d / fname)
                h, w = x[j].shape[:2]
                rows.append([fname, w, h, 0, 0, w - 1, h - 1, int(y[j])])
            _write_csv(d / "GT-final_test.csv", rows)
    return Path(root)


def _write_csv(path: Path, rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(_FIELDS)
        w.writerows(rows)
