"""CIFAR-10 / CIFAR-100 *binary* batches (the ``-binary.tar.gz`` releases). The pickled "python version"
batches are refused: unpickling a file runs code.

CIFAR-10 record: 1 label byte + 3,072 pixel bytes (1,024 R, 1,024 G, 1,024 B, rows of 32); files
``data_batch_1..5.bin``, ``test_batch.bin``, names in ``batches.meta.txt``. CIFAR-100 record: coarse and
fine label bytes + 3,072 pixel bytes; files ``train.bin``, ``test.bin``, names in ``fine_label_names.txt``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._io import atomic_write_bytes, inside
from ..errors import DataError
from .convert import arrays_to_dataset
from .dataset import ImageDataset

__all__ = ["load_cifar", "write_cifar_binary", "cifar_kind", "CIFAR10_CLASSES"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_PIXELS = 3 * 32 * 32
_PICKLED = ("data_batch_1", "test_batch", "train", "test")
_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def cifar_kind(root: Path) -> str | None:
    """``cifar10`` / ``cifar100`` for a directory of binary batches, ``None`` if neither;
    a :class:`DataError` for the pickled python batches."""
    if (root / "test_batch.bin").is_file() or (root / "data_batch_1.bin").is_file():
        return "cifar10"
    if (root / "test.bin").is_file() or (root / "train.bin").is_file():
        return "cifar100"
    pickled = next((root / n for n in _PICKLED if (root / n).is_file()), None)
    if pickled is not None:
        raise DataError(
            f"{pickled}: a CIFAR python (pickle) batch; neuralcleanse never unpickles data — use the binary "
            "version (cifar-10-binary.tar.gz / cifar-100-binary.tar.gz)"
        )
    return None


def _read_batch(path: Path, label_bytes: int, fine: bool) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if raw[:2].tobytes() == b"\x80\x04" or raw[:2].tobytes() == b"\x80\x02":
        raise DataError(f"{path}: a pickled CIFAR batch, not the binary format; use the binary version")
    rec = label_bytes + _PIXELS
    if raw.size == 0 or raw.size % rec:
        raise DataError(
            f"{path}: {raw.size} bytes is not a whole number of {rec}-byte CIFAR records (truncated?)"
        )
    table = raw.reshape(-1, rec)
    labels = table[:, label_bytes - 1 if fine else 0].astype(np.int64)
    images = table[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def _names(path: Path, fallback: Sequence[str]) -> list[str]:
    if path.is_file():
        names = [
            ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()
        ]
        if names:
            return names
    return list(fallback)


def load_cifar(
    root: str | os.PathLike[str],
    *,
    split: str = "test",
    input_shape: tuple[int, int, int] | None = None,
    class_names: Sequence[str] | None = None,
) -> ImageDataset:
    """A split of CIFAR-10/100 binary batches in ``root`` (or one ``.bin`` batch file: ``split`` has no
    effect on it, and its ``source_info`` records the split its name says, or ``"single"``)."""
    r = Path(root)
    if r.is_file():
        kind = "cifar100" if r.name in ("train.bin", "test.bin") else "cifar10"
        files, base = [r], r.parent
    else:
        kind = cifar_kind(r) or ""
        if not kind:
            raise DataError(
                f"{r}: no CIFAR binary batches (data_batch_N.bin/test_batch.bin or train.bin/test.bin)"
            )
        base = r
        if kind == "cifar10":
            files = [r / "test_batch.bin"] if split == "test" else sorted(r.glob("data_batch_*.bin"))
        else:
            files = [r / f"{split}.bin"]
        missing = [f for f in files if not f.is_file()]
        if missing or not files:
            raise DataError(f"{missing[0] if missing else r}: CIFAR {split} batch not found")
    if r.is_dir():  # a folder's files and links stay inside it
        files = [inside(base, f, what="the CIFAR batch") for f in files]
    meta = "batches.meta.txt" if kind == "cifar10" else "fine_label_names.txt"
    names_file = inside(base, base / meta, what="the class names file")
    if kind == "cifar10":
        parts = [_read_batch(f, 1, False) for f in files]
        names = _names(names_file, CIFAR10_CLASSES)
    else:
        parts = [_read_batch(f, 2, True) for f in files]
        names = _names(names_file, [str(i) for i in range(100)])
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    names = list(class_names) if class_names else names
    if int(y.max()) >= len(names):
        raise DataError(f"{files[0]}: label {int(y.max())} but only {len(names)} class names")
    data = arrays_to_dataset(
        x, y, class_names=names, name=f"{r}/{split}" if r.is_dir() else str(r), input_shape=input_shape
    )
    if r.is_dir():
        return data
    # one batch file is the split its name says (test_batch.bin, data_batch_N.bin, train.bin, test.bin)
    own = (
        "test" if r.stem in ("test_batch", "test") else "train" if r.stem in ("train", *_TRAIN) else "single"
    )
    return dataclasses.replace(data, source_info={"split": own})


def write_cifar_binary(
    path: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray, *, coarse: np.ndarray | None = None
) -> Path:
    """Write ``uint8 (N, 32, 32, 3)`` images as one binary batch (CIFAR-100 layout when ``coarse`` is given)."""
    x = np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)
    cols = [np.asarray(labels, dtype=np.uint8)[:, None]]
    if coarse is not None:
        cols.insert(0, np.asarray(coarse, dtype=np.uint8)[:, None])
    atomic_write_bytes(path, np.concatenate(cols + [x], axis=1).tobytes())
    return Path(path)
