"""``.npz`` arrays of images and labels, read with ``allow_pickle=False``."""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import DataError, first_line
from .convert import arrays_to_dataset, check_input_shape
from .dataset import ImageDataset

__all__ = ["load_npz", "IMAGE_KEYS", "LABEL_KEYS"]

IMAGE_KEYS = ("images", "x", "X", "x_test", "X_test", "data")
LABEL_KEYS = ("labels", "y", "Y", "y_test", "Y_test", "targets")
#: image and label keys that belong together, in the order they are looked for
_PAIRS = tuple(zip(IMAGE_KEYS, LABEL_KEYS, strict=True))

log = logging.getLogger(__name__)


#: labels at or above this are not class indices (a corrupt or hostile label array)
MAX_CLASSES = 1_000_000

#: an .npz member's declared size above which it must not be much smaller compressed (a zip bomb)
_MAX_MEMBER = 1 << 30
_MAX_RATIO = 100


def _check_archive(p: Path) -> None:
    """An ``.npz`` is a zip of ``<name>.npy`` members: refuse anything else before numpy reads it."""
    try:
        with p.open("rb") as fh:
            head = fh.read(4)
    except FileNotFoundError:
        raise DataError(f"{p}: file not found") from None
    except OSError as exc:
        raise DataError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if not head:
        raise DataError(f"{p}: empty file, not an .npz archive")
    if head != b"PK\x03\x04":
        raise DataError(f"{p}: not an .npz file (not a zip archive of .npy arrays)")
    try:
        archive = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{p}: corrupt .npz archive ({exc})") from None
    with archive:  # opened once: the members' names, sizes and .npy headers
        for m in archive.infolist():
            name = m.filename
            if name.startswith(("/", "\\")) or "\\" in name or ".." in Path(name).parts or ":" in name:
                raise DataError(f"{p}: refused: archive member {name!r} has an absolute or '..' path")
            if m.is_dir() or not name.endswith(".npy") or "/" in name:
                raise DataError(f"{p}: refused: archive member {name!r} is not a top-level .npy array")
            if m.file_size > _MAX_MEMBER and m.file_size > _MAX_RATIO * max(m.compress_size, 1):
                raise DataError(
                    f"{p}: refused: archive member {name!r} expands {m.file_size // max(m.compress_size, 1)}x "
                    f"to {m.file_size} bytes (a zip bomb?)"
                )
            try:
                with archive.open(m) as fh:
                    _check_npy_header(p, name, fh, m.file_size)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as exc:
                raise DataError(f"{p}: corrupt .npz archive ({first_line(exc)})") from None


def _check_npy_header(p: Path, name: str, fh: IO[bytes], size: int) -> None:
    """Refuse a member whose ``.npy`` header declares more data than the member holds (numpy would
    allocate the declared size before reading a byte of it)."""
    try:
        version = np.lib.format.read_magic(fh)
        reader = (
            np.lib.format.read_array_header_2_0 if version >= (2, 0) else np.lib.format.read_array_header_1_0
        )
        shape, _, dtype = reader(fh)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{p}: archive member {name!r} is not a readable .npy array ({exc})") from None
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > size:
        raise DataError(
            f"{p}: refused: archive member {name!r} declares {declared} bytes of {dtype} {tuple(shape)} "
            f"but holds {size}"
        )


def load_npz(
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> ImageDataset:
    """Images under one of :data:`IMAGE_KEYS` (``uint8`` 0–255 or float 0–1; ``(N,H,W)``, ``(N,H,W,C)`` or
    ``(N,C,H,W)``) and integer labels under one of :data:`LABEL_KEYS`. Never unpickles.

    The first pair present (``images``/``labels``, ``x``/``y``, ...) is read; a file holding several logs a
    warning naming the keys read and those ignored. The dataset's ``source_info`` records the keys read and
    the split: ``"test"`` for ``x_test``/``X_test``, else ``"single"`` (the file has no train/test parts)."""
    p = Path(path)
    if input_shape is not None:
        check_input_shape(input_shape)
    _check_archive(p)
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.keys())
            ik, lk = _pick_keys(keys)
            if ik is None or lk is None:
                raise DataError(
                    f"{p}: needs an image array ({'/'.join(IMAGE_KEYS)}) and a label array "
                    f"({'/'.join(LABEL_KEYS)}); found {', '.join(keys) or 'nothing'}"
                )
            x, y = z[ik], z[lk]
    except DataError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DataError(
                f"{p}: refused: the arrays need pickle to load (object arrays); store numbers"
            ) from None
        raise DataError(f"{p}: cannot read .npz ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{p}: cannot read .npz ({exc})") from None
    if x.ndim == 0 or len(x) == 0:
        raise DataError(f"{p}: no images in {ik!r}")
    if x.dtype.kind not in "biuf":  # dates, strings, complex numbers... are no pixels
        raise DataError(f"{p}: images {ik!r} must be numbers (integers or floats), got {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise DataError(f"{p}: labels {lk!r} must be a 1-D integer array, got {y.dtype} {y.shape}")
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        layout = "NCHW"
    elif x.ndim in (3, 4):
        layout = "NHWC"
    else:
        raise DataError(f"{p}: images {ik!r} must be (N,H,W), (N,H,W,C) or (N,C,H,W), got {x.shape}")
    if len(y) and y.min() < 0:
        raise DataError(f"{p}: negative labels in {lk!r}")
    if len(y) and int(y.max()) >= MAX_CLASSES and not (num_classes or class_names):
        raise DataError(
            f"{p}: label {int(y.max())} in {lk!r} is not a class index (at most {MAX_CLASSES} classes)"
        )
    if not x.dtype.isnative:  # big-endian arrays: the same numbers in this machine's byte order
        x = x.astype(x.dtype.newbyteorder("="))
    if not y.dtype.isnative:
        y = y.astype(y.dtype.newbyteorder("="))
    n = num_classes or (len(class_names) if class_names else int(y.max()) + 1 if len(y) else 0)
    names = list(class_names) if class_names else [str(i) for i in range(n)]
    if len(y) and int(y.max()) >= len(names):
        raise DataError(f"{p}: label {int(y.max())} but only {len(names)} classes")
    data = arrays_to_dataset(x, y, class_names=names, name=str(p), input_shape=input_shape, layout=layout)
    ignored = [k for k in keys if k in IMAGE_KEYS + LABEL_KEYS and k not in (ik, lk)]
    if ignored:
        log.warning(
            "%s: holds more than one image/label array: read %r and %r, ignored %s",
            p, ik, lk, ", ".join(repr(k) for k in ignored),
        )  # fmt: skip
    info: dict[str, Any] = {
        "keys": {"images": ik, "labels": lk},
        "split": "test" if ik.endswith("_test") else "single",
    }
    if ignored:
        info["ignored_keys"] = ignored
    return dataclasses.replace(data, source_info=info)


def _pick_keys(keys: Sequence[str]) -> tuple[str | None, str | None]:
    """The image and label keys to read: the first pair of :data:`IMAGE_KEYS`/:data:`LABEL_KEYS` that is
    complete, else the first image key and the first label key present (``None`` where there is none)."""
    pair = next(((i, lab) for i, lab in _PAIRS if i in keys and lab in keys), None)
    if pair is not None:
        return pair
    return next((k for k in IMAGE_KEYS if k in keys), None), next((k for k in LABEL_KEYS if k in keys), None)
