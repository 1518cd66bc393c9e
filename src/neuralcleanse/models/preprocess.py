"""Declared preprocessing: from ``[0, 1]`` pixels (where triggers live) to what a model's first layer expects.

neuralcleanse always optimises and stamps triggers on pixels in ``[0, 1]``. A model that expects
``0-255`` input, mean/std normalisation or BGR channel order is wrapped in :class:`PixelModel`, which
applies exactly what was declared (by the model card or by the user) and nothing guessed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import SettingsError

__all__ = ["Preprocessing", "PixelModel", "FixedBatchModel", "parse_floats", "parse_input_range"]

_RANGES = {"0-1": 1.0, "0-255": 255.0}


def parse_input_range(text: str) -> float:
    """``0-1`` or ``0-255`` → the scale from ``[0, 1]`` pixels."""
    try:
        return _RANGES[text.strip()]
    except KeyError:
        raise SettingsError(f"input range must be 0-1 or 0-255, got {text!r}") from None


def parse_floats(text: str, *, what: str) -> tuple[float, ...]:
    """``0.5,0.5,0.5`` (or a single number) → a tuple of finite floats."""
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise SettingsError(f"{what} must be numbers separated by commas, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise SettingsError(f"{what} must be finite numbers separated by commas, got {text!r}")
    return values


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """What the model expects, declared rather than guessed.

    Attributes:
        scale: ``1`` if the model takes pixels in ``[0, 1]``, ``255`` for ``[0, 255]``.
        mean, std: per-channel (or one shared) normalisation applied after scaling: ``(x·scale − mean)/std``.
        channel_order: ``rgb`` (as images are read) or ``bgr`` (channels reversed before the model).
    """

    scale: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_order: str = "rgb"

    def __post_init__(self) -> None:
        if self.scale not in _RANGES.values():
            raise SettingsError(f"input scale must be 1 or 255, got {self.scale}")
        if self.std is not None and any(not s >= 1e-6 for s in self.std):
            # a standard deviation of 1e-320 divides the pixels into infinities: a typo, not a network
            raise SettingsError(f"std must be at least 1e-6, got {list(self.std)}")
        if self.channel_order not in ("rgb", "bgr"):
            raise SettingsError(f"channel order must be rgb or bgr, got {self.channel_order!r}")

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.mean is None and self.std is None and self.channel_order == "rgb"

    def check_channels(self, channels: int) -> None:
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) not in (1, channels):
                raise SettingsError(
                    f"{name} has {len(values)} values but the model takes {channels} channels"
                )

    def wrap(self, model: nn.Module, *, channels: int) -> nn.Module:
        """``model`` itself if nothing is declared, else a :class:`PixelModel` around it."""
        self.check_channels(channels)
        return model if self.is_identity else PixelModel(model, self, channels=channels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_range": "0-255" if self.scale == 255.0 else "0-1",
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "channel_order": self.channel_order,
        }

    @classmethod
    def from_card(
        cls, input_range: Sequence[float], mean: Sequence[float] | None, std: Sequence[float] | None
    ) -> Preprocessing:
        lo, hi = (float(v) for v in input_range)
        if lo != 0.0 or hi not in _RANGES.values():
            raise SettingsError(f"model card input_range must be [0, 1] or [0, 255], got {list(input_range)}")
        return cls(
            scale=hi,
            mean=None if mean is None else tuple(float(v) for v in mean),
            std=None if std is None else tuple(float(v) for v in std),
        )


class PixelModel(nn.Module):
    """Pixels in ``[0, 1]`` → scaled, channel-reordered, normalised → the wrapped model."""

    def __init__(self, model: nn.Module, pre: Preprocessing, *, channels: int) -> None:
        super().__init__()
        self.model = model
        self.bgr = pre.channel_order == "bgr"
        mean = torch.tensor(pre.mean or (0.0,), dtype=torch.float32).expand(channels).clone()
        std = torch.tensor(pre.std or (1.0,), dtype=torch.float32).expand(channels).clone()
        self.register_buffer("scale", torch.tensor(pre.scale, dtype=torch.float32), persistent=False)
        self.register_buffer("mean", mean.view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, channels, 1, 1), persistent=False)

    scale: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scale
        if self.bgr:
            x = x.flip(1)
        out: torch.Tensor = self.model((x - self.mean) / self.std)
        return out


class FixedBatchModel(nn.Module):
    """Run a model that only accepts batches of exactly ``batch_size`` (a static-shape export) on any batch.

    The input is cut into chunks of ``batch_size``; the last chunk is padded with copies of its first image
    and the padding's outputs are dropped. Gradients flow through to the input as usual.
    """

    def __init__(self, model: nn.Module, batch_size: int) -> None:
        super().__init__()
        self.model = model
        self.batch_size = batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, b = len(x), self.batch_size
        if n == b:
            out: torch.Tensor = self.model(x)
            return out
        outs = []
        for start in range(0, n, b):
            chunk = x[start : start + b]
            short = b - len(chunk)
            if short:
                chunk = torch.cat([chunk, chunk[:1].expand(short, *chunk.shape[1:])])
            outs.append(self.model(chunk)[: b - short])
        return torch.cat(outs) if outs else self.model(F.pad(x, (0, 0)))[:0]
