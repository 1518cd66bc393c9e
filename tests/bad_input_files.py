"""Builders of bad input files for ``test_bad_inputs.py``: each writes one broken or hostile file and
returns its path. Nothing here is a fixture; every builder takes the directory to write into."""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "Payload",
    "png_declaring",
    "image_folder",
    "npz",
    "npz_with_member",
    "pickled_object_npz",
    "idx_dir",
    "fifo",
    "gtsrb_dir",
    "cifar_batch",
]


class Payload:
    """Unpickling this object creates ``target`` (a marker that code ran)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.target), "w"))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` grey pixels (with almost no data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def image_folder(root: Path, classes: dict[str, int], *, size: int = 28, mode: str = "L") -> Path:
    """``root/<class>/<i>.png`` with ``classes[name]`` random images each."""
    rng = np.random.default_rng(0)
    for name, n in classes.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size, size) if mode == "L" else (size, size, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(d / f"{i}.png")
    return root


def npz(path: Path, **arrays: np.ndarray) -> Path:
    with path.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    return path


def npz_declaring(path: Path, shape: tuple[int, ...]) -> Path:
    """An .npz whose ``x.npy`` header declares ``shape`` (uint8) but holds 16 bytes, with valid labels."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "|u1", "fortran_order": False, "shape": shape})
    labels = io.BytesIO()
    np.save(labels, np.arange(4))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", head.getvalue() + bytes(16))
        zf.writestr("y.npy", labels.getvalue())
    return path


def npz_with_member(path: Path, member: str, array: np.ndarray) -> Path:
    """A zip holding a valid ``.npy`` array under an arbitrary member name (e.g. ``../evil.npy``)."""
    buf = io.BytesIO()
    np.save(buf, array)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, buf.getvalue())
    return path


def pickled_object_npz(path: Path, marker: Path) -> Path:
    """An ``.npz`` whose image array is an object array: loading it with pickle would create ``marker``."""
    images = np.empty(2, dtype=object)
    images[0] = Payload(marker)
    images[1] = Payload(marker)
    buf = io.BytesIO()
    np.save(buf, images, allow_pickle=True)
    labels = io.BytesIO()
    np.save(labels, np.array([0, 1]))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images.npy", buf.getvalue())
        zf.writestr("labels.npy", labels.getvalue())
    return path


def idx_dir(
    root: Path, *, n_test: int = 20, n_labels: int | None = None, splits: tuple[str, ...] = ("train", "test")
) -> Path:
    """The four MNIST IDX files (plain, not gzip'd), with ``n_labels`` test labels (default ``n_test``);
    only the ``train-*`` or ``t10k-*`` pair with ``splits=("train",)`` or ``("test",)``."""
    from neuralcleanse.data import write_idx

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    test_images = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    if "train" in splits:
        write_idx(root / "train-images-idx3-ubyte", train_images)
        write_idx(root / "train-labels-idx1-ubyte", np.arange(10, dtype=np.uint8))
    if "test" in splits:
        write_idx(root / "t10k-images-idx3-ubyte", test_images)
        labels = np.arange(n_labels if n_labels is not None else n_test, dtype=np.uint8) % 10
        write_idx(root / "t10k-labels-idx1-ubyte", labels)
    return root


def fifo(path: Path) -> Path:
    """A named pipe (opening it for reading would block until a writer comes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def gtsrb_dir(root: Path, csv: str | None, *, images: dict[str, bytes] | None = None) -> Path:
    """``root/Final_Test/Images`` with ``GT-final_test.csv`` = ``csv`` (none if ``None``) and image files."""
    d = root / "Final_Test" / "Images"
    d.mkdir(parents=True)
    if csv is not None:
        (d / "GT-final_test.csv").write_text(csv)
    for name, data in (images or {}).items():
        (d / name).write_bytes(data)
    return root


def ppm(size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 128, dtype=np.uint8)).save(buf, format="PPM")
    return buf.getvalue()


def cifar_batch(path: Path, labels: list[int]) -> Path:
    rng = np.random.default_rng(0)
    rows = [bytes([lab]) + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes() for lab in labels]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(rows))
    return path


def edit_report(src: Path, dst: Path, edit: object) -> Path:
    """Copy a scan report directory and apply ``edit(report_dict)`` to its ``report.json``."""
    import shutil

    shutil.copytree(src, dst)
    d = json.loads((dst / "report.json").read_text())
    edit(d)  # type: ignore[operator]
    (dst / "report.json").write_text(json.dumps(d))
    return dst
