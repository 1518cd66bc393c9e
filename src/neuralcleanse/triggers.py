"""Triggers: a mask ``m`` (H×W, shared by the colour channels) and a pattern ``p`` (C×H×W).

A trigger is stamped as ``x' = (1 - m)·x + m·p`` in pixel space, where every image in neuralcleanse lives
in ``[0, 1]``; a model's own input scaling or normalisation is applied after stamping.

Spec strings (the CLI's ``--trigger``) have the form ``KIND:key=value,key=value``:

``square:size=4,at=bottom-right,margin=1,pattern=white,alpha=1``
    A square (or ``size=HxW`` rectangle) placed at a corner (``at=bottom-right|bottom-left|top-right|top-left``,
    ``margin`` pixels from the edges) or at ``row=R,col=C`` (its top-left pixel). ``pattern`` is ``white``,
    ``black``, ``checkerboard``, ``random`` (uniform per pixel and channel, drawn with ``seed``) or
    ``file:PATH`` (an image resized to the square). ``alpha`` < 1 blends the square into the image.
``blend:pattern=random,alpha=0.1,seed=0``
    A whole-image pattern mixed in with weight ``alpha`` (``random``, ``checkerboard`` or ``file:PATH``).
``image:mask=MASK.png,pattern=PATTERN.png``
    A trigger of any shape drawn as two images of the images' own size: the mask in grey (white stamps
    the pattern, black keeps the pixel, grey blends) and the pattern in the images' colours.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._io import atomic_write_bytes, refuse_special
from .errors import TriggerError, TriggerFileError, first_line

__all__ = ["Trigger", "parse_trigger_spec"]

CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")
PATTERNS = ("white", "black", "checkerboard", "random")


@dataclass(frozen=True, eq=False)
class Trigger:
    """A backdoor trigger (real or reverse-engineered).

    Attributes:
        mask: float32 ``(H, W)`` in ``[0, 1]``; 1 replaces the pixel by the pattern, 0 keeps it.
        pattern: float32 ``(C, H, W)`` in ``[0, 1]``.
        spec: how the trigger was made (a spec string, or a free description).

    Examples::

        >>> t = Trigger.square((1, 28, 28), size=4)
        >>> t.l1_norm
        16.0
        >>> t.apply(torch.zeros(2, 1, 28, 28))[:, 0, -2, -2].tolist()
        [1.0, 1.0]
    """

    mask: torch.Tensor
    pattern: torch.Tensor
    spec: str = ""

    def __post_init__(self) -> None:
        m, p = self.mask, self.pattern
        if m.ndim != 2 or p.ndim != 3 or tuple(m.shape) != tuple(p.shape[1:]):
            raise TriggerError(
                f"trigger mask {tuple(m.shape)} and pattern {tuple(p.shape)} do not fit together"
            )
        for name, t in (("mask", m), ("pattern", p)):
            if not torch.isfinite(t).all() or float(t.min()) < 0.0 or float(t.max()) > 1.0:
                raise TriggerError(f"trigger {name} must hold finite values in [0, 1]")

    def __repr__(self) -> str:
        return f"Trigger(shape={self.image_shape}, l1={self.l1_norm:.2f}, spec={self.spec!r})"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.pattern.shape
        return int(c), int(h), int(w)

    @property
    def l1_norm(self) -> float:
        """Sum of the mask: the trigger's size as Neural Cleanse measures it."""
        return float(self.mask.sum())

    @property
    def region(self) -> torch.Tensor:
        """Boolean ``(H, W)`` map of the pixels the trigger touches."""
        return self.mask > 0

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on ``(N, C, H, W)`` or ``(C, H, W)`` images in ``[0, 1]``; returns a new tensor."""
        if tuple(images.shape[-3:]) != self.image_shape:
            raise TriggerError(f"trigger is for images {self.image_shape}, got {tuple(images.shape[-3:])}")
        m = self.mask.to(images.device, images.dtype)
        p = self.pattern.to(images.device, images.dtype)
        return (1 - m) * images + m * p

    def to(self, device: torch.device | str) -> Trigger:
        return Trigger(self.mask.to(device), self.pattern.to(device), self.spec)

    # ---- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Save as safetensors (``mask``, ``pattern`` and the spec in the metadata)."""
        from safetensors.torch import save

        tensors = {
            "mask": self.mask.detach().cpu().contiguous(),
            "pattern": self.pattern.detach().cpu().contiguous(),
        }
        atomic_write_bytes(path, save(tensors, metadata={"spec": self.spec}))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trigger:
        """Load a trigger written by :meth:`save` (no pickle involved)."""
        from safetensors import SafetensorError, safe_open

        p = Path(path)
        refuse_special(p, what="the trigger file", error=TriggerFileError)
        try:
            with safe_open(str(p), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
        except FileNotFoundError:
            raise TriggerFileError(f"{p}: trigger file not found") from None
        except (SafetensorError, OSError, ValueError) as exc:
            raise TriggerFileError(f"{p}: not a valid trigger file ({exc})") from None
        if set(tensors) != {"mask", "pattern"}:
            found = sorted(tensors)
            shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
            kind = " (model weights?)" if len(found) > 4 else ""
            raise TriggerFileError(
                f"{p}: a trigger file holds 'mask' and 'pattern', found {len(found)} tensors{kind}: {shown}"
            )
        try:
            return cls(tensors["mask"].float(), tensors["pattern"].float(), meta.get("spec", ""))
        except TriggerError as exc:
            raise TriggerFileError(f"{p}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Summary for JSON cards (the arrays themselves are saved with :meth:`save`)."""
        rows, cols = torch.nonzero(self.region, as_tuple=True)
        box = None
        if len(rows):
            box = [int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1]
        return {
            "spec": self.spec,
            "l1_norm": round(self.l1_norm, 4),
            "bbox": box,
            "image_shape": list(self.image_shape),
        }

    # ---- constructors --------------------------------------------------------------------------------
    @classmethod
    def square(
        cls,
        image_shape: tuple[int, int, int],
        *,
        size: int | tuple[int, int],
        at: str | tuple[int, int] = "bottom-right",
        margin: int = 1,
        pattern: str = "white",
        alpha: float = 1.0,
        seed: int = 0,
        spec: str | None = None,
    ) -> Trigger:
        """A square patch (BadNets style).

        Args:
            image_shape: ``(C, H, W)`` of the images.
            size: side length, or ``(height, width)``.
            at: a corner name or the ``(row, col)`` of the patch's top-left pixel.
            margin: distance from the image edges when ``at`` is a corner.
            pattern: ``white``, ``black``, ``checkerboard``, ``random`` or ``file:PATH``.
            alpha: mask value inside the patch (1 = opaque).
            seed: for the ``random`` pattern.
        """
        c, h, w = _check_shape(image_shape)
        sh, sw = (size, size) if isinstance(size, int) else size
        if sh < 1 or sw < 1:
            raise TriggerError(f"trigger size must be at least 1 pixel, got {sh}x{sw}")
        if sh > h or sw > w:
            raise TriggerError(f"trigger {sh}x{sw} is larger than the {h}x{w} image")
        if isinstance(at, str):
            if at not in CORNERS:
                raise TriggerError(
                    f"unknown trigger position {at!r}; use one of {', '.join(CORNERS)} or row/col"
                )
            if margin < 0 or sh + margin > h or sw + margin > w:
                raise TriggerError(f"trigger {sh}x{sw} with margin {margin} does not fit the {h}x{w} image")
            r = margin if at.startswith("top") else h - margin - sh
            col = margin if at.endswith("left") else w - margin - sw
        else:
            r, col = at
            if r < 0 or col < 0 or r + sh > h or col + sw > w:
                raise TriggerError(f"trigger {sh}x{sw} at row {r}, col {col} lies outside the {h}x{w} image")
        _check_alpha(alpha)
        mask = torch.zeros(h, w)
        mask[r : r + sh, col : col + sw] = alpha
        full = torch.zeros(c, h, w)
        full[:, r : r + sh, col : col + sw] = _make_pattern(pattern, (c, sh, sw), seed)
        if spec is None:
            where = at if isinstance(at, str) else f"row={r},col={col}"
            where = f"at={where},margin={margin}" if isinstance(at, str) else where
            spec = f"square:size={sh}x{sw},{where},pattern={pattern},alpha={alpha:g},seed={seed}"
        return cls(mask, full, spec)

    @classmethod
    def blended(
        cls, image_shape: tuple[int, int, int], *, pattern: str = "random", alpha: float = 0.1, seed: int = 0
    ) -> Trigger:
        """A whole-image pattern mixed in with weight ``alpha`` (Chen et al. 2017's blended attack)."""
        c, h, w = _check_shape(image_shape)
        _check_alpha(alpha)
        p = _make_pattern(pattern, (c, h, w), seed)
        return cls(
            torch.full((h, w), float(alpha)), p, f"blend:pattern={pattern},alpha={alpha:g},seed={seed}"
        )

    @classmethod
    def from_spec(cls, spec: str, image_shape: tuple[int, int, int]) -> Trigger:
        """Build a trigger from a spec string (see the module docstring)."""
        kind, opts = parse_trigger_spec(spec)
        try:
            if kind == "square":
                allowed = {"size", "at", "margin", "row", "col", "pattern", "alpha", "seed"}
                _reject_unknown(spec, opts, allowed)
                if ("row" in opts) != ("col" in opts):
                    raise TriggerError(f"trigger spec {spec!r}: give both row and col, or neither")
                if "row" in opts and "at" in opts:
                    raise TriggerError(f"trigger spec {spec!r}: give either at= or row/col, not both")
                at: str | tuple[int, int] = opts.get("at", "bottom-right")
                if "row" in opts:
                    at = (int(opts["row"]), int(opts["col"]))
                return cls.square(
                    image_shape,
                    size=_parse_size(opts.get("size", "4")),
                    at=at,
                    margin=int(opts.get("margin", "1")),
                    pattern=opts.get("pattern", "white"),
                    alpha=float(opts.get("alpha", "1")),
                    seed=int(opts.get("seed", "0")),
                )
            if kind == "blend":
                _reject_unknown(spec, opts, {"pattern", "alpha", "seed"})
                return cls.blended(
                    image_shape,
                    pattern=opts.get("pattern", "random"),
                    alpha=float(opts.get("alpha", "0.1")),
                    seed=int(opts.get("seed", "0")),
                )
            if kind == "image":
                _reject_unknown(spec, opts, {"mask", "pattern"})
                missing = sorted({"mask", "pattern"} - set(opts))
                if missing:
                    raise TriggerError(f"trigger spec {spec!r}: give {' and '.join(missing)}=PATH")
                return cls.from_images(image_shape, mask=Path(opts["mask"]), pattern=Path(opts["pattern"]))
        except ValueError as exc:
            if isinstance(exc, TriggerError):
                raise
            raise TriggerError(f"trigger spec {spec!r}: {exc}") from None
        raise TriggerError(f"trigger spec {spec!r}: unknown kind {kind!r}; use square, blend or image")

    @classmethod
    def from_images(cls, image_shape: tuple[int, int, int], *, mask: Path, pattern: Path) -> Trigger:
        """A trigger drawn as two image files of the images' size: a grey ``mask`` (255 stamps the pattern,
        0 keeps the pixel) and a ``pattern`` in the images' colours."""
        c, h, w = _check_shape(image_shape)
        m = _read_image(mask, "L", size=(h, w))[0]
        p = _read_image(pattern, "L" if c == 1 else "RGB", size=(h, w))
        if len(p) != c:
            raise TriggerError(f"{pattern}: the images have {c} channels; a pattern can be grey or RGB")
        return cls(m, p, f"image:mask={mask},pattern={pattern}")


#: spec options whose value is a file path (which may hold commas)
_PATH_KEYS = frozenset({"mask", "pattern"})


def parse_trigger_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``KIND:key=value,...`` into the kind and its options (values stay strings). A file path
    (``mask=``, ``pattern=``) may hold commas: a piece without ``=`` after one continues its value."""
    kind, _, rest = spec.strip().partition(":")
    opts: dict[str, str] = {}
    last = ""
    if rest:
        for item in rest.split(","):
            if "=" not in item and last in _PATH_KEYS:
                opts[last] += "," + item.rstrip()
                continue
            key, eq, value = item.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise TriggerError(f"trigger spec {spec!r}: expected key=value, got {item!r}")
            if key.strip() in opts:
                raise TriggerError(f"trigger spec {spec!r}: {key.strip()!r} given twice")
            opts[key.strip()] = value.strip()
            last = key.strip()
    if not kind:
        raise TriggerError(f"trigger spec {spec!r}: missing kind (e.g. square:size=4)")
    return kind, opts


def _reject_unknown(spec: str, opts: dict[str, str], allowed: set[str]) -> None:
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise TriggerError(
            f"trigger spec {spec!r}: unknown option {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}"
        )


def _parse_size(text: str) -> int | tuple[int, int]:
    if "x" in text:
        a, _, b = text.partition("x")
        return int(a), int(b)
    return int(text)


def _check_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(shape) != 3 or min(shape) < 1:
        raise TriggerError(f"image shape must be (C, H, W), got {shape}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha <= 1.0:
        raise TriggerError(f"trigger alpha must be in (0, 1], got {alpha}")


def _make_pattern(kind: str, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    c, h, w = shape
    if kind == "white":
        return torch.ones(c, h, w)
    if kind == "black":
        return torch.zeros(c, h, w)
    if kind == "checkerboard":
        grid = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == 0
        return grid.float().expand(c, h, w).clone()
    if kind == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(c, h, w, generator=gen)
    if kind.startswith("file:"):
        return _image_pattern(Path(kind[5:]), (c, h, w))
    raise TriggerError(f"unknown trigger pattern {kind!r}; use {', '.join(PATTERNS)} or file:PATH")


def _image_pattern(path: Path, shape: tuple[int, int, int]) -> torch.Tensor:
    c, h, w = shape
    return _read_image(path, "L" if c == 1 else "RGB", size=(h, w), resize=True)


def _read_image(path: Path, mode: str, *, size: tuple[int, int], resize: bool = False) -> torch.Tensor:
    """An image file as a float ``(C, H, W)`` tensor in ``[0, 1]``, converted to ``mode`` (``L``: one grey
    channel, ``RGB``); resized to ``size`` with ``resize``, otherwise refused when it is not of that size.
    16-bit grey images keep their depth; a colour or transparent image read as ``L`` is refused (a mask
    is grey: converting colour to luminance or dropping transparency would silently change it)."""
    from PIL import Image, UnidentifiedImageError

    from .data.convert import refuse_huge

    refuse_special(path, what="the trigger image", error=TriggerFileError)
    h, w = size
    try:
        with warnings.catch_warnings():  # PIL's bomb warning: the size is refused below, in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened as src:
            refuse_huge(path, src.size, error=TriggerFileError)  # before decoding, as --data's images
            if not resize and src.size != (w, h):
                raise TriggerFileError(
                    f"{path}: the trigger image is {src.size[1]}x{src.size[0]}, the images are {h}x{w}"
                )
            if src.mode in ("I", "F"):
                raise TriggerFileError(f"{path}: 32-bit image (mode {src.mode}): save it with 8 or 16 bits")
            if src.mode.startswith("I;16"):  # 16-bit grey: PIL's convert("L") would clip it to 0 or 255
                img = src.resize((w, h), Image.Resampling.BILINEAR) if src.size != (w, h) else src
                grey = np.asarray(img, dtype=np.float32) / 65535.0
                arr = grey if mode == "L" else np.repeat(grey[:, :, None], 3, axis=2)
            else:
                if mode == "L" and src.mode not in ("L", "1"):
                    _check_grey(path, src.convert("RGBA"))
                img = src.convert(mode).resize((w, h), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise TriggerFileError(f"{path}: trigger image not found") from None
    except Image.DecompressionBombError as exc:
        raise TriggerFileError(f"{path}: refused: a decompression bomb? ({first_line(exc)})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        if isinstance(exc, TriggerError):
            raise
        raise TriggerFileError(f"{path}: cannot read trigger image ({first_line(exc)})") from None
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _check_grey(path: Path, rgba: Any) -> None:
    """A mask drawn in colour or with transparency is refused: it is not clear what it means."""
    arr = np.asarray(rgba)
    if (arr[:, :, 3] < 255).any():
        raise TriggerFileError(
            f"{path}: the mask has transparency; draw it in grey (white stamps the pattern)"
        )
    if (arr[:, :, 0] != arr[:, :, 1]).any() or (arr[:, :, 1] != arr[:, :, 2]).any():
        raise TriggerFileError(f"{path}: the mask is in colour; draw it in grey (white stamps the pattern)")
