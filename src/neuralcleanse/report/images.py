"""Tensors in ``[0, 1]`` to PNG files, enlarged with nearest-neighbour so small images stay visible."""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._io import atomic_write_bytes

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["tensor_to_pil", "save_png", "png_bytes"]


def tensor_to_pil(t: torch.Tensor, *, min_side: int = 112) -> Image.Image:
    """``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` in ``[0, 1]`` → an 8-bit image at least ``min_side`` high."""
    from PIL import Image

    arr = t.detach().cpu().float().clamp(0, 1)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3:
        arr = arr.permute(1, 2, 0)
    img = Image.fromarray((arr.numpy() * 255.0 + 0.5).astype(np.uint8))
    h = img.height
    if h < min_side:
        factor = -(-min_side // h)
        img = img.resize((img.width * factor, h * factor), Image.Resampling.NEAREST)
    return img


def png_bytes(t: torch.Tensor, *, min_side: int = 112) -> bytes:
    buf = io.BytesIO()
    tensor_to_pil(t, min_side=min_side).save(buf, format="PNG")
    return buf.getvalue()


def save_png(t: torch.Tensor, path: str | os.PathLike[str], *, min_side: int = 112) -> None:
    atomic_write_bytes(path, png_bytes(t, min_side=min_side))
