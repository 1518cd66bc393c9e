"""Declared preprocessing: from ``[0, 1]`` pixels (where triggers live) to what a model's first layer expects.

neuralcleanse always optimises and stamps triggers on pixels in ``[0, 1]``. A model that expects
``0-255`` input, mean/std normalisation or BGR channel order is wrapped in :class:`PixelModel`, which
applies exactly what was declared (by the model card or by the user) and nothing guessed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import SettingsError, first_line

__all__ = ["Preprocessing", "PixelModel", "FixedBatchModel", "parse_floats", "parse_input_range"]

log = logging.getLogger(__name__)

_RANGES = {"0-1": 1.0, "0-255": 255.0}


def parse_input_range(text: str) -> float:
    """``0-1`` or ``0-255`` → the scale from ``[0, 1]`` pixels."""
    try:
        return _RANGES[text.strip()]
    except KeyError:
        raise SettingsError(f"input range must be 0-1 or 0-255, got {text!r}") from None


def _hooks(model: nn.Module) -> tuple[int, ...]:
    """The ids of every forward hook on ``model``'s modules, and of the global ones."""
    from torch.nn.modules import module as torch_module

    ids = [*torch_module._global_forward_hooks, *torch_module._global_forward_pre_hooks]
    for m in model.modules():
        ids += [*m._forward_hooks, *m._forward_pre_hooks]
    return tuple(ids)


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
    and the padding's outputs are dropped. The chunks run as one vectorised call (``torch.func.vmap`` over
    them: 3-4x faster than one call per chunk for an export of batch size 1) once a first batch showed the
    vectorised outputs equal to the chunk-by-chunk ones; a model that vmap cannot run, or runs otherwise,
    is run chunk by chunk. Gradients flow through to the input as usual.
    """

    def __init__(self, model: nn.Module, batch_size: int) -> None:
        super().__init__()
        self.model = model
        self.batch_size = batch_size
        self.vectorised: bool | None = None  # None: not tried yet
        self._hooks = _hooks(model)  # the program's own; one added later must see plain tensors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, b = len(x), self.batch_size
        if n == b:
            out: torch.Tensor = self.model(x)
            return out
        # a hook added by the caller (a layer's features read, neurons pruned) must see plain tensors, each
        # call once: such calls run chunk by chunk
        plain = n < b or _hooks(self.model) != self._hooks
        if not plain and self.vectorised is None:
            self.vectorised = self._vectorises(x[: 4 * b])
        if not plain and self.vectorised:
            try:
                return self._vmapped(x)
            except Exception as exc:  # noqa: BLE001 (e.g. channels-last weights some vmapped ops refuse)
                log.info(
                    "the exported program runs chunk by chunk from now on (vmap failed: %s)", first_line(exc)
                )
                self.vectorised = False
        return self._chunked(x)

    def _chunked(self, x: torch.Tensor) -> torch.Tensor:
        """One call per chunk; an empty batch runs one chunk of zeros for the outputs' shape."""
        b = self.batch_size
        outs = [self.model(chunk)[: b - short] for chunk, short in self._chunks(x)]
        return torch.cat(outs) if outs else self.model(x.new_zeros(b, *x.shape[1:]))[:0]

    def _chunks(self, x: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        """``x`` in chunks of the batch size, the last padded with copies of its first image; with how
        many padding images each holds."""
        b, out = self.batch_size, []
        for start in range(0, len(x), b):
            chunk = x[start : start + b]
            short = b - len(chunk)
            if short:
                chunk = torch.cat([chunk, chunk[:1].expand(short, *chunk.shape[1:])])
            out.append((chunk, short))
        return out

    def _vmapped(self, x: torch.Tensor) -> torch.Tensor:
        chunks = self._chunks(x)
        stacked = torch.stack([c for c, _ in chunks])
        quiet = getattr(torch._C._functorch, "_set_vmap_fallback_warning_enabled", lambda on: None)
        quiet(False)  # ops without a batching rule run in a loop: slower, not wrong; no C++ warning per op
        try:
            out: torch.Tensor = torch.func.vmap(self.model)(stacked)
        finally:
            quiet(True)
        return out.reshape(-1, *out.shape[2:])[: len(x)]

    def _vectorises(self, x: torch.Tensor) -> bool:
        """Whether the vectorised call gives the chunk-by-chunk outputs on ``x`` (at least two chunks)."""
        with torch.no_grad():
            plain = self._chunked(x)
            try:
                fast = self._vmapped(x)
            except Exception as exc:  # noqa: BLE001 (any failure of vmap means: run chunk by chunk)
                log.info("the exported program runs chunk by chunk (vmap failed: %s)", first_line(exc))
                return False
        scale = float(plain.abs().max()) if plain.numel() else 0.0
        same = fast.shape == plain.shape and bool(
            torch.allclose(fast, plain, rtol=1e-3, atol=1e-4 * max(scale, 1.0))
        )
        if not same:
            log.info("the exported program runs chunk by chunk (vmap gave other outputs)")
        return same
