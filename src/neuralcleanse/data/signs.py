"""A generated 43-class traffic-sign-like task in GTSRB's format (32×32 colour).

GTSRB itself cannot be downloaded here, so the colour task of the paper is stood in for by signs drawn
with Pillow: the shapes, rim and fill colours of the real classes (prohibitory circles, warning
triangles, blue mandatory discs, stop octagon, priority diamond, yield), a glyph per class (digits drawn
as seven-segment strokes, arrows, bars, figures), and per image a random scale, offset, rotation,
lighting, colour cast, blur, noise and background clutter. Everything derives from a seed.

The set is written in GTSRB's layout (:func:`~neuralcleanse.data.gtsrb.write_gtsrb`) and read back with
the same loader as the real benchmark, so a user with the real GTSRB directory points ``--data-dir`` at it
instead (dataset name ``gtsrb``).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import DataError
from .dataset import DatasetSplits
from .gtsrb import load_gtsrb, write_gtsrb

__all__ = ["SIGN_CLASSES", "sign_classes", "generate_signs", "load_traffic_signs", "default_cache_dir"]

log = logging.getLogger(__name__)

_CANVAS = 64  # drawn at 2× and downsampled with antialiasing

RED, WHITE, BLUE, YELLOW, BLACK, GREY = (
    (200, 20, 30),
    (245, 245, 245),
    (20, 70, 180),
    (245, 190, 20),
    (15, 15, 15),
    (120, 120, 120),
)

# (name, shape, rim colour, fill colour, glyph, glyph colour)
SIGN_CLASSES: tuple[
    tuple[str, str, tuple[int, int, int] | None, tuple[int, int, int], str, tuple[int, int, int]], ...
] = (
    ("speed 20", "circle", RED, WHITE, "20", BLACK),
    ("speed 30", "circle", RED, WHITE, "30", BLACK),
    ("speed 50", "circle", RED, WHITE, "50", BLACK),
    ("speed 60", "circle", RED, WHITE, "60", BLACK),
    ("speed 70", "circle", RED, WHITE, "70", BLACK),
    ("speed 80", "circle", RED, WHITE, "80", BLACK),
    ("speed 100", "circle", RED, WHITE, "100", BLACK),
    ("speed 120", "circle", RED, WHITE, "120", BLACK),
    ("no passing", "circle", RED, WHITE, "cars", BLACK),
    ("no trucks", "circle", RED, WHITE, "truck", BLACK),
    ("no bicycles", "circle", RED, WHITE, "bicycle", BLACK),
    ("no pedestrians", "circle", RED, WHITE, "person", BLACK),
    ("no vehicles", "circle", RED, WHITE, "", BLACK),
    ("end of restrictions", "circle", None, WHITE, "diag", GREY),
    ("end speed 80", "circle", None, WHITE, "80/", GREY),
    ("no entry", "circle", None, RED, "bar", WHITE),
    ("stop", "octagon", WHITE, RED, "stop", WHITE),
    ("priority road", "diamond", WHITE, YELLOW, "", BLACK),
    ("yield", "inv_triangle", RED, WHITE, "", BLACK),
    ("danger", "triangle", RED, WHITE, "excl", BLACK),
    ("curve left", "triangle", RED, WHITE, "curve_left", BLACK),
    ("curve right", "triangle", RED, WHITE, "curve_right", BLACK),
    ("double curve", "triangle", RED, WHITE, "zigzag", BLACK),
    ("bumpy road", "triangle", RED, WHITE, "bump", BLACK),
    ("slippery road", "triangle", RED, WHITE, "slip", BLACK),
    ("road narrows", "triangle", RED, WHITE, "narrow", BLACK),
    ("road works", "triangle", RED, WHITE, "person", BLACK),
    ("traffic signals", "triangle", RED, WHITE, "lights", BLACK),
    ("pedestrians", "triangle", RED, WHITE, "walker", BLACK),
    ("children", "triangle", RED, WHITE, "children", BLACK),
    ("bicycles", "triangle", RED, WHITE, "bicycle", BLACK),
    ("ice", "triangle", RED, WHITE, "snow", BLACK),
    ("animals", "triangle", RED, WHITE, "chevron", BLACK),
    ("turn right", "circle", None, BLUE, "arrow_right", WHITE),
    ("turn left", "circle", None, BLUE, "arrow_left", WHITE),
    ("ahead only", "circle", None, BLUE, "arrow_up", WHITE),
    ("ahead or right", "circle", None, BLUE, "arrow_up_right", WHITE),
    ("ahead or left", "circle", None, BLUE, "arrow_up_left", WHITE),
    ("keep right", "circle", None, BLUE, "arrow_down_right", WHITE),
    ("keep left", "circle", None, BLUE, "arrow_down_left", WHITE),
    ("roundabout", "circle", None, BLUE, "ring", WHITE),
    ("end no passing", "circle", None, WHITE, "cars/", GREY),
    ("parking", "square", WHITE, BLUE, "P", WHITE),
)
assert len(SIGN_CLASSES) == 43

_SignClass = tuple[str, str, tuple[int, int, int] | None, tuple[int, int, int], str, tuple[int, int, int]]
#: extra classes beyond the 43: every shape in every colour scheme, with a number drawn in segments
_EXTRA_SHAPES = ("circle", "triangle", "square", "diamond", "octagon", "inv_triangle")
_EXTRA_SCHEMES: tuple[tuple[tuple[int, int, int] | None, tuple[int, int, int], tuple[int, int, int]], ...] = (
    (RED, WHITE, BLACK),
    (None, BLUE, WHITE),
    (WHITE, RED, WHITE),
    (RED, YELLOW, BLACK),
    (None, WHITE, BLUE),
    (BLUE, WHITE, RED),
)
MAX_SIGN_CLASSES = 1000


def sign_classes(n: int = 43) -> tuple[_SignClass, ...]:
    """The first ``n`` classes of the generated sign task: the 43 GTSRB-like classes, then (for a
    many-label task) numbered signs in every shape and colour scheme, each combination once."""
    if not 2 <= n <= MAX_SIGN_CLASSES:
        raise DataError(f"the generated sign task has 2 to {MAX_SIGN_CLASSES} classes, not {n}")
    out = list(SIGN_CLASSES[:n])
    taken = {c[4] for c in SIGN_CLASSES}
    numbers = (str(v) for v in range(10, 1000) if set(str(v)) <= set("01235678") and str(v) not in taken)
    while len(out) < n:
        number = next(numbers)
        for shape in _EXTRA_SHAPES:
            for j, (rim, fill, ink) in enumerate(_EXTRA_SCHEMES):
                if len(out) < n:
                    out.append((f"{shape} {number} ({'abcdef'[j]})", shape, rim, fill, number, ink))
    return tuple(out)


# seven-segment digits: segments a (top), b (top right), c (bottom right), d (bottom), e, f, g (middle)
_SEGMENTS = {
    "0": "abcdef", "1": "bc", "2": "abdeg", "3": "abcdg", "5": "acdfg",
    "6": "acdefg", "7": "abc", "8": "abcdefg", "P": "abefg",
}  # fmt: skip
_SEG_LINES = {
    "a": ((0, 0), (1, 0)), "b": ((1, 0), (1, 1)), "c": ((1, 1), (1, 2)), "d": ((0, 2), (1, 2)),
    "e": ((0, 1), (0, 2)), "f": ((0, 0), (0, 1)), "g": ((0, 1), (1, 1)),
}  # fmt: skip


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def ring(n: int, start: float) -> list[tuple[float, float]]:
        return [
            (cx + r * math.cos(start + 2 * math.pi * i / n), cy + r * math.sin(start + 2 * math.pi * i / n))
            for i in range(n)
        ]

    if shape == "circle":
        return ring(48, 0.0)
    if shape == "triangle":
        return ring(3, -math.pi / 2)
    if shape == "inv_triangle":
        return ring(3, math.pi / 2)
    if shape == "octagon":
        return ring(8, math.pi / 8)
    if shape == "diamond":
        return ring(4, 0.0)
    return ring(4, math.pi / 4)  # square


def _scale(points: list[tuple[float, float]], cx: float, cy: float, f: float) -> list[tuple[float, float]]:
    return [(cx + (x - cx) * f, cy + (y - cy) * f) for x, y in points]


def _digits(
    draw: ImageDraw.ImageDraw, text: str, cx: float, cy: float, h: float, fill: tuple[int, ...]
) -> None:
    w = h * 0.45
    gap = w * 0.45
    width = max(2, round(h * 0.14))
    total = len(text) * w + (len(text) - 1) * gap
    x0 = cx - total / 2
    for i, ch in enumerate(text):
        ox, oy = x0 + i * (w + gap), cy - h / 2
        for seg in _SEGMENTS[ch]:
            (a, b), (c, d) = _SEG_LINES[seg]
            draw.line([(ox + a * w, oy + b * h / 2), (ox + c * w, oy + d * h / 2)], fill=fill, width=width)


def _arrow(
    draw: ImageDraw.ImageDraw, cx: float, cy: float, s: float, angle: float, fill: tuple[int, ...]
) -> None:
    dx, dy = math.cos(angle), math.sin(angle)
    tail = (cx - dx * s, cy - dy * s)
    head = (cx + dx * s, cy + dy * s)
    width = max(2, round(s * 0.3))
    draw.line([tail, head], fill=fill, width=width)
    px, py = -dy, dx
    draw.polygon(
        [
            (head[0] + dx * s * 0.4, head[1] + dy * s * 0.4),
            (head[0] + px * s * 0.55, head[1] + py * s * 0.55),
            (head[0] - px * s * 0.55, head[1] - py * s * 0.55),
        ],
        fill=fill,
    )


def _glyph(
    draw: ImageDraw.ImageDraw, glyph: str, cx: float, cy: float, r: float, fill: tuple[int, ...]
) -> None:
    """Draw a class's glyph inside a sign of radius ``r``."""
    s = r * 0.45
    lw = max(2, round(r * 0.12))
    if not glyph:
        return
    if glyph.endswith("/") and len(glyph) > 1:  # "end of ..." signs: the glyph crossed out
        _glyph(draw, glyph[:-1], cx, cy, r, fill)
        glyph = "diag"
    if glyph.isdigit() or glyph == "P":
        _digits(draw, glyph, cx, cy, r * (0.75 if len(glyph) < 3 else 0.6), fill)
    elif glyph == "diag":
        for k in (-1, 0, 1):
            o = k * lw * 1.2
            draw.line(
                [(cx - s * 1.4 + o, cy + s * 1.4 + o), (cx + s * 1.4 + o, cy - s * 1.4 + o)],
                fill=fill,
                width=max(1, lw // 2),
            )
    elif glyph == "bar":
        draw.rectangle([cx - r * 0.7, cy - r * 0.15, cx + r * 0.7, cy + r * 0.15], fill=fill)
    elif glyph == "stop":
        for i in range(4):
            x = cx - r * 0.6 + i * r * 0.4
            draw.rectangle([x, cy - r * 0.22, x + r * 0.25, cy + r * 0.22], fill=fill)
    elif glyph == "excl":
        draw.line([(cx, cy - s), (cx, cy + s * 0.4)], fill=fill, width=lw)
        draw.ellipse([cx - lw / 2, cy + s * 0.7, cx + lw / 2, cy + s * 0.7 + lw], fill=fill)
    elif glyph in ("curve_left", "curve_right"):
        sign = -1 if glyph == "curve_left" else 1
        draw.line([(cx, cy + s), (cx, cy), (cx + sign * s * 0.8, cy - s * 0.8)], fill=fill, width=lw)
    elif glyph == "zigzag":
        draw.line(
            [
                (cx - s * 0.3, cy + s),
                (cx + s * 0.3, cy + s * 0.3),
                (cx - s * 0.3, cy - s * 0.3),
                (cx + s * 0.3, cy - s),
            ],
            fill=fill,
            width=lw,
        )
    elif glyph == "bump":
        draw.arc([cx - s, cy - s * 0.2, cx + s, cy + s * 1.2], 180, 360, fill=fill, width=lw)
        draw.line([(cx - s * 1.2, cy + s * 0.5), (cx + s * 1.2, cy + s * 0.5)], fill=fill, width=lw)
    elif glyph == "slip":
        draw.rectangle([cx - s * 0.5, cy - s * 0.6, cx + s * 0.5, cy], fill=fill)
        draw.line(
            [
                (cx - s, cy + s * 0.8),
                (cx - s * 0.3, cy + s * 0.3),
                (cx + s * 0.3, cy + s * 0.8),
                (cx + s, cy + s * 0.3),
            ],
            fill=fill,
            width=max(1, lw // 2),
        )
    elif glyph == "narrow":
        draw.line([(cx - s * 0.8, cy + s), (cx - s * 0.3, cy - s)], fill=fill, width=lw)
        draw.line([(cx + s * 0.8, cy + s), (cx + s * 0.3, cy - s)], fill=fill, width=lw)
    elif glyph in ("person", "walker"):
        lean = 0.35 if glyph == "walker" else 0.0
        draw.ellipse([cx - s * 0.25, cy - s * 1.1, cx + s * 0.25, cy - s * 0.6], fill=fill)
        draw.line([(cx, cy - s * 0.6), (cx + lean * s, cy + s * 0.2)], fill=fill, width=lw)
        draw.line([(cx + lean * s, cy + s * 0.2), (cx - s * 0.5, cy + s)], fill=fill, width=lw)
        draw.line([(cx + lean * s, cy + s * 0.2), (cx + s * 0.5, cy + s)], fill=fill, width=lw)
        if glyph == "person":
            draw.line([(cx - s * 0.6, cy - s * 0.2), (cx + s * 0.6, cy - s * 0.2)], fill=fill, width=lw)
    elif glyph == "children":
        for ox, tall in ((-0.45, 1.0), (0.45, 0.75)):
            hx = cx + ox * s
            draw.ellipse(
                [hx - s * 0.2 * tall, cy - s * tall, hx + s * 0.2 * tall, cy - s * (tall - 0.4)], fill=fill
            )
            draw.line([(hx, cy - s * (tall - 0.4)), (hx, cy + s)], fill=fill, width=lw)
    elif glyph == "bicycle":
        for ox in (-0.55, 0.55):
            x = cx + ox * s
            draw.ellipse([x - s * 0.45, cy, x + s * 0.45, cy + s * 0.9], outline=fill, width=max(1, lw // 2))
        draw.line(
            [(cx - s * 0.55, cy + s * 0.45), (cx, cy - s * 0.2), (cx + s * 0.55, cy + s * 0.45)],
            fill=fill,
            width=max(1, lw // 2),
        )
    elif glyph == "lights":
        for k in (-1, 0, 1):
            draw.ellipse(
                [cx - s * 0.25, cy + k * s * 0.6 - s * 0.25, cx + s * 0.25, cy + k * s * 0.6 + s * 0.25],
                fill=fill,
            )
    elif glyph == "snow":
        for a in range(3):
            ang = a * math.pi / 3
            dx, dy = math.cos(ang) * s, math.sin(ang) * s
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=fill, width=max(1, lw // 2))
    elif glyph == "chevron":
        draw.line([(cx - s, cy + s * 0.6), (cx, cy - s * 0.6), (cx + s, cy + s * 0.6)], fill=fill, width=lw)
        draw.ellipse([cx + s * 0.3, cy - s * 0.9, cx + s * 0.8, cy - s * 0.4], fill=fill)
    elif glyph == "cars":
        draw.rectangle(
            [cx - s * 1.1, cy - s * 0.4, cx - s * 0.15, cy + s * 0.4],
            fill=(200, 20, 30) if fill == BLACK else fill,
        )
        draw.rectangle([cx + s * 0.15, cy - s * 0.4, cx + s * 1.1, cy + s * 0.4], fill=fill)
    elif glyph == "truck":
        draw.rectangle([cx - s * 1.1, cy - s * 0.5, cx + s * 0.4, cy + s * 0.4], fill=fill)
        draw.rectangle([cx + s * 0.5, cy - s * 0.2, cx + s * 1.1, cy + s * 0.4], fill=fill)
    elif glyph == "ring":
        draw.arc([cx - s, cy - s, cx + s, cy + s], 20, 340, fill=fill, width=lw)
        _arrow(draw, cx + s * 0.9, cy - s * 0.5, s * 0.3, -math.pi / 2, fill)
    elif glyph.startswith("arrow_"):
        angles = {
            "arrow_right": 0.0, "arrow_left": math.pi, "arrow_up": -math.pi / 2,
            "arrow_down_right": math.pi / 4, "arrow_down_left": 3 * math.pi / 4,
        }  # fmt: skip
        if glyph in ("arrow_up_right", "arrow_up_left"):
            _arrow(draw, cx, cy - s * 0.1, s * 0.9, -math.pi / 2, fill)
            side = 0.0 if glyph == "arrow_up_right" else math.pi
            _arrow(draw, cx + (0.5 if side == 0 else -0.5) * s, cy + s * 0.4, s * 0.5, side, fill)
        else:
            _arrow(draw, cx, cy, s * 0.9, angles[glyph], fill)
    else:  # pragma: no cover - the class table only uses the glyphs above
        raise DataError(f"unknown sign glyph {glyph!r}")


def _background(rng: np.random.Generator) -> Image.Image:
    """A cluttered scene: a two-colour gradient, random blobs and lines."""
    c0, c1 = rng.integers(20, 235, size=(2, 3))
    t = np.linspace(0, 1, _CANVAS)[:, None, None]
    if rng.random() < 0.5:
        t = t.transpose(1, 0, 2)
    grad = (c0 * (1 - t) + c1 * t) * np.ones((_CANVAS, _CANVAS, 1))
    img = Image.fromarray(grad.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = rng.integers(-10, _CANVAS, 2)
        x1, y1 = x0 + rng.integers(5, 40), y0 + rng.integers(5, 40)
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle([int(x0), int(y0), int(x1), int(y1)], fill=colour)
        elif kind == 1:
            draw.ellipse([int(x0), int(y0), int(x1), int(y1)], fill=colour)
        else:
            draw.line([int(x0), int(y0), int(x1), int(y1)], fill=colour, width=int(rng.integers(1, 5)))
    return img


def _render(
    label: int, rng: np.random.Generator, size: int, classes: tuple[_SignClass, ...] = SIGN_CLASSES
) -> np.ndarray:
    """One image of class ``label``: ``uint8 (size, size, 3)``."""
    _name, shape, rim, fill, glyph, glyph_colour = classes[label]
    sign = Image.new("RGBA", (_CANVAS, _CANVAS), (0, 0, 0, 0))
    draw = ImageDraw.Draw(sign)
    c = _CANVAS / 2
    r = _CANVAS * 0.46
    outer = _shape_points(shape, c, c, r)
    draw.polygon(outer, fill=(*(rim or fill), 255))
    if rim is not None:
        draw.polygon(
            _scale(outer, c, c, 0.78 if shape in ("triangle", "inv_triangle") else 0.8), fill=(*fill, 255)
        )
    elif fill == WHITE:
        draw.polygon(outer, outline=(*GREY, 255), width=2)
    gy = c + (r * 0.15 if shape == "triangle" else -r * 0.1 if shape == "inv_triangle" else 0.0)
    _glyph(
        draw, glyph, c, gy, r * (0.7 if shape in ("triangle", "inv_triangle") else 0.85), (*glyph_colour, 255)
    )

    # placement: scale, rotation, offset
    scale = rng.uniform(0.62, 0.95)
    angle = rng.uniform(-15, 15)
    side = max(8, int(_CANVAS * scale))
    sign = sign.resize((side, side), Image.Resampling.BILINEAR).rotate(
        angle, resample=Image.Resampling.BILINEAR
    )
    img = _background(rng)
    slack = _CANVAS - side
    ox = int(rng.integers(0, slack + 1)) if slack > 0 else 0
    oy = int(rng.integers(0, slack + 1)) if slack > 0 else 0
    img.paste(sign, (ox, oy), sign)

    # camera: blur, then downsample, lighting, colour cast and sensor noise
    radius = float(rng.uniform(0.0, 1.6))
    if radius > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    img = img.resize((size, size), Image.Resampling.LANCZOS)
    arr: np.ndarray = np.asarray(img, dtype=np.float64)
    gain = rng.uniform(0.35, 1.25) * rng.uniform(0.85, 1.15, size=3)
    arr = arr * gain + rng.uniform(-25, 25)
    arr = arr + rng.normal(0, rng.uniform(2, 10), arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def generate_signs(
    *,
    train_per_class: int = 150,
    test_per_class: int = 40,
    seed: int = 0,
    size: int = 32,
    classes: int = 43,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Draw the set: ``((train_images, train_labels), (test_images, test_labels))``, images ``uint8 (N, H, W, 3)``.

    Every image derives from ``(seed, split, class, index)``, so the result does not depend on the counts of
    other classes or splits: the first 43 classes of a larger task are the 43-class set's images.
    ``classes`` (2 to 1,000) picks the task's size (:func:`sign_classes`).
    """
    table = sign_classes(classes)
    if train_per_class < 1 or test_per_class < 1:
        raise DataError("the generated sign set needs at least one image per class and split")
    out = []
    for split, per_class in ((0, train_per_class), (1, test_per_class)):
        xs, ys = [], []
        for label in range(len(table)):
            for i in range(per_class):
                rng = np.random.default_rng([seed, split, label, i])
                xs.append(_render(label, rng, size, table))
                ys.append(label)
        out.append((np.stack(xs), np.asarray(ys, dtype=np.int64)))
    return out[0], out[1]


def default_cache_dir() -> Path:
    """Where generated data is kept: ``$NEURALCLEANSE_CACHE`` or ``~/.cache/neuralcleanse``."""
    env = os.environ.get("NEURALCLEANSE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neuralcleanse"


def load_traffic_signs(
    root: str | os.PathLike[str] | None = None,
    *,
    train_per_class: int = 150,
    test_per_class: int = 40,
    seed: int = 0,
    classes: int = 43,
) -> DatasetSplits:
    """The generated sign set, written once in GTSRB format under ``root`` (default: the cache) and read
    back through the GTSRB loader. ``classes`` other than 43 gives the many-label task of
    :func:`sign_classes` (dataset name ``traffic-signs-<classes>``)."""
    table = sign_classes(classes)
    base = Path(root) if root is not None else default_cache_dir()
    path = base / f"traffic-signs-v1-s{seed}-{train_per_class}x{test_per_class}"
    if classes != 43:
        path = path.with_name(f"{path.name}-c{classes}")
    if not (path / "Final_Test" / "Images" / "GT-final_test.csv").is_file():
        log.info("generating the traffic-sign set into %s", path)
        train, test = generate_signs(
            train_per_class=train_per_class, test_per_class=test_per_class, seed=seed, classes=classes
        )
        write_gtsrb(path, train, test, force=True)
    names = [c[0] for c in table]
    train_ds = load_gtsrb(path, split="train", class_names=names, crop=False)
    test_ds = load_gtsrb(path, split="test", class_names=names, crop=False)
    name = "traffic-signs" if classes == 43 else f"traffic-signs-{classes}"
    return DatasetSplits(
        name=name, train=train_ds.replace(name=f"{name}/train"), test=test_ds.replace(name=f"{name}/test")
    )
