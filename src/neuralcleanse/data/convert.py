"""Bring images from any source to the model's declared input: channels, size, ``[0, 1]`` floats."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.nn import functional as F

from .._io import refuse_special
from ..errors import DataError, SettingsError, first_line
from .dataset import ImageDataset

__all__ = [
    "arrays_to_dataset",
    "integer_labels",
    "read_image",
    "read_class_names",
    "check_input_shape",
    "check_resize",
    "warn_resized",
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "MIN_RESIZED_SIDE",
    "MAX_UPSCALE",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp"}
)
#: grey modes of more than 8 bits, which Pillow's conversion to "L" clips (scaled by _eight_bit instead)
_HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
#: grey modes once _eight_bit has run
_GREY_MODES = frozenset({"L", "1", "LA"})
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


#: the largest model input side (pixels) images are converted to
MAX_SIDE = 4096
#: images declaring more pixels than this are refused before decoding (PIL's own limit is ~179M)
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
#: images to be resized to the model's input must have sides of at least this many pixels
MIN_RESIZED_SIDE = 4
#: and are enlarged at most this many times in either dimension (downscaling has no limit)
MAX_UPSCALE = 8


def check_resize(name: str | Path, read: tuple[int, int], model: tuple[int, int]) -> None:
    """Refuse images of ``read`` ``(H, W)`` that cannot carry the task once resized to the model's
    ``model`` ``(H, W)``: a side of either under :data:`MIN_RESIZED_SIDE` pixels, or an enlargement of more than
    :data:`MAX_UPSCALE` times in either dimension (images of another task, or not images at all).
    Images of the model's own size are never refused."""
    (h0, w0), (h, w) = read, model
    if (h0, w0) == (h, w):
        return
    if min(h, w) < MIN_RESIZED_SIDE:  # e.g. --input-shape 1x1x1 for a network of any input size
        raise DataError(
            f"{name}: images of {h0}x{w0} pixels cannot be shrunk to the model's {h}x{w} input "
            f"(a side under {MIN_RESIZED_SIDE} pixels carries no image): check the input shape"
        )
    if min(h0, w0) < MIN_RESIZED_SIDE:
        raise DataError(
            f"{name}: images of {h0}x{w0} pixels cannot be resized to the model's {h}x{w} input "
            f"(a side under {MIN_RESIZED_SIDE} pixels carries no image)"
        )
    factor = max(h / h0, w / w0)
    if factor > MAX_UPSCALE:
        raise DataError(
            f"{name}: images of {h0}x{w0} pixels would be enlarged {factor:.3g}x to the model's {h}x{w} "
            f"input (at most {MAX_UPSCALE}x): images of another task?"
        )


def warn_resized(name: str | Path, read: tuple[int, int], model: tuple[int, int], *, count: str = "") -> None:
    """Log (a warning) that images of ``read`` ``(H, W)`` were resized to the model's ``model`` ``(H, W)``;
    ``count`` says how many when not all were (``"3 of 40 "``)."""
    (h0, w0), (h, w) = read, model
    if (h0, w0) != (h, w):
        log.warning(
            "%s: %simages resized from %dx%d to the model's %dx%d (antialiased bilinear): a trigger found on "
            "resized images may differ from one on the model's own data",
            name, count, h0, w0, h, w,
        )  # fmt: skip


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """A model input ``(C, H, W)``: three positive integers, C 1 (grey) or 3 (RGB)."""
    dims = tuple(input_shape)
    if (
        len(dims) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)
        or dims[0] not in (1, 3)
    ):
        raise SettingsError(
            f"input_shape must be (C, H, W) with C 1 (grey) or 3 (RGB) and positive sizes, got {dims}"
        )
    if dims[1] > MAX_SIDE or dims[2] > MAX_SIDE:
        raise SettingsError(f"input_shape {dims}: images larger than {MAX_SIDE}x{MAX_SIDE} are not supported")
    return int(dims[0]), int(dims[1]), int(dims[2])


def refuse_huge(path: Path, size: tuple[int, int], *, error: type[DataError] = DataError) -> None:
    """Refuse an image whose header declares more than :data:`MAX_IMAGE_PIXELS` pixels (``size`` as PIL
    gives it, width by height), before it is decoded."""
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise error(
            f"{path}: refused: the image declares {width}x{height} pixels "
            f"(more than {MAX_IMAGE_PIXELS} pixels; a decompression bomb?)"
        )


def read_image(
    path: Path,
    *,
    channels: int | None,
    size: tuple[int, int] | None,
    box: tuple[int, int, int, int] | None = None,
    read_as: list[tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """One image file → ``uint8`` array ``(H, W, C)``, converted to ``channels`` and resized to ``size``;
    ``read_as`` (if given) receives the ``(C, H, W)`` the file had (grey modes count as one channel)."""
    if channels not in (None, 1, 3):
        raise SettingsError(f"images can be read with 1 (grey) or 3 (RGB) channels, not {channels}")
    try:
        with Image.open(path) as opened:
            refuse_huge(path, opened.size)
            opened.load()
            img: Image.Image = opened
            if box is not None:
                img = img.crop(box)
            img = _eight_bit(img, path)
            if read_as is not None:
                read_as.append((1 if img.mode in _GREY_MODES else 3, img.size[1], img.size[0]))
            mode = (
                "L"
                if channels == 1
                else "RGB"
                if channels == 3
                else ("L" if img.mode in _GREY_MODES else "RGB")
            )
            img = img.convert(mode)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: refused: a decompression bomb? ({first_line(exc)})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"{path}: cannot read image ({first_line(exc)})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def _eight_bit(img: Image.Image, path: Path) -> Image.Image:
    """Grey images of more than 8 bits scaled to 8 (Pillow's own conversion clips them: every pixel above
    255 of 65,535 would become white); 16-bit PNGs open as ``I;16``, other 16-bit files as ``I``."""
    if img.mode not in _HIGH_BIT_MODES:
        return img
    values = np.asarray(img, dtype=np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"{path}: the image has NaN or infinite pixels")
    top = float(values.max()) if values.size else 0.0
    if float(values.min(initial=0.0)) < 0:
        raise DataError(
            f"{path}: the image has negative pixel values ({img.mode} mode); store 0-255 or 0-65535"
        )
    if img.mode == "F":
        scale = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0
    else:
        scale = 65535.0 if img.mode.startswith("I;16") or top > 255 else 255.0
    if top > scale:
        raise DataError(f"{path}: pixel values up to {top:g} in a {img.mode} image; store 0-255 or 0-65535")
    return Image.fromarray(np.rint(values / scale * 255.0).astype(np.uint8), mode="L")


def read_class_names(path: str | Path) -> list[str]:
    """A names file: one class name per line, in label order (blank lines ignored)."""
    p = Path(path)
    refuse_special(p, what="the class names file")
    try:
        names = [line.strip() for line in p.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read class names ({exc})") from None
    if not names:
        raise DataError(f"{p}: no class names in file")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{p}: class name {dup!r} appears twice")
    return names


def integer_labels(labels: Any, *, name: str | None = None) -> torch.Tensor:
    """``labels`` (any array of whole numbers, float ones included) as int64; a one-line
    :class:`DataError` for a fractional, non-finite or boolean label instead of a silent truncation."""
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    where = f"{name}: " if name else ""
    if y.dtype == torch.bool or y.is_complex():
        raise DataError(f"{where}labels must be integers, got {y.dtype}")
    if y.is_floating_point():
        bad = ~torch.isfinite(y) | (y != torch.round(y))
        if bad.any():
            i = int(bad.flatten().nonzero()[0])
            raise DataError(
                f"{where}labels must be whole numbers, got {float(y.flatten()[i]):g} at index {i}"
            )
    return y.to(torch.int64)


def arrays_to_dataset(
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    class_names: Sequence[str],
    name: str,
    input_shape: tuple[int, int, int] | None = None,
    layout: str = "NHWC",
) -> ImageDataset:
    """``uint8`` (0–255) or float (0–1) images in ``layout`` → an :class:`ImageDataset` shaped ``input_shape``."""
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.ndim == 3:
        x = x.unsqueeze(-1 if layout == "NHWC" else 1)
    if x.ndim != 4:
        raise DataError(f"{name}: images must be (N, H, W[, C]), got shape {tuple(x.shape)}")
    if layout == "NHWC":
        x = x.permute(0, 3, 1, 2)
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    elif x.dtype.is_floating_point:
        x = x.float()
        if not torch.isfinite(x).all():
            raise DataError(f"{name}: images contain NaN or infinite values")
        lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 1.0)
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"{name}: float images must be in [0, 1], found [{lo:g}, {hi:g}] (store uint8 0-255 instead)"
            )
    else:
        raise DataError(f"{name}: images must be uint8 (0-255) or float (0-1), got {x.dtype}")
    x = x.contiguous()
    read_shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    if input_shape is not None:
        x = conform(x, input_shape, name=name)
    y = integer_labels(labels, name=name).flatten()
    if len(y) != len(x):
        raise DataError(f"{name}: {len(x)} images but {len(y)} labels")
    converted = read_shape if len(x) and read_shape != tuple(x.shape[1:]) else None
    return ImageDataset(
        images=x, labels=y, num_classes=len(class_names), class_names=tuple(class_names), name=name,
        converted_from=converted,
    )  # fmt: skip


def conformed(data: ImageDataset, input_shape: tuple[int, int, int]) -> ImageDataset:
    """``data`` converted to ``input_shape`` (:func:`conform`), remembering the shape it was read in."""
    if not len(data) or data.input_shape == tuple(input_shape):
        return data
    moved = data.replace(images=conform(data.images, input_shape, name=data.name))
    return dataclasses.replace(moved, converted_from=data.converted_from or data.input_shape)


def conform(x: torch.Tensor, input_shape: tuple[int, int, int], *, name: str) -> torch.Tensor:
    """Convert ``(N, C, H, W)`` floats to ``input_shape``: grey↔RGB, then an antialiased resize."""
    c, h, w = check_input_shape(input_shape)
    if x.shape[1] != c:
        if x.shape[1] == 1 and c == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and c == 1:
            x = (x * _LUMA).sum(1, keepdim=True)
        else:
            hint = (
                " (RGBA? an array does not say what its fourth channel is: store the colour channels only; "
                "image files in RGBA are read as colour)"
                if x.shape[1] == 4
                else ""
            )
            raise DataError(f"{name}: images have {x.shape[1]} channels, the model takes {c}{hint}")
    if tuple(x.shape[2:]) != (h, w):
        read = (int(x.shape[2]), int(x.shape[3]))
        check_resize(name, read, (h, w))
        warn_resized(name, read, (h, w))
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    return x.contiguous()
