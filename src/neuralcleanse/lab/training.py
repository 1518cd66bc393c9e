"""Seeded, reproducible supervised training."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ..data.dataset import ImageDataset
from ..errors import DataError, SettingsError
from ..metrics import model_failures
from ..modes import train_mode

__all__ = ["TrainSettings", "TrainProgress", "TrainHistory", "random_shift", "train_classifier"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """Optimisation settings (Adam, cross-entropy, shuffled mini-batches).

    ``shift`` > 0 augments every mini-batch with a random translation of up to ``shift`` pixels in each
    direction (zero fill), drawn from the seeded generator; poisoned images move with their trigger.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    shift: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "shift", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise SettingsError(f"{name} must be an integer, got {value!r}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise SettingsError(f"{name} must be a finite number, got {value!r}")
        if not 0 <= self.seed < 2**63:
            raise SettingsError(f"seed must be from 0 to 2**63-1, got {self.seed}")
        if self.weight_decay < 0:
            raise SettingsError(f"weight decay must be 0 or more, got {self.weight_decay}")
        if self.epochs < 1:
            raise SettingsError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise SettingsError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise SettingsError(f"learning rate must be positive, got {self.lr}")
        if self.shift < 0:
            raise SettingsError(f"shift must be 0 or more pixels, got {self.shift}")


@dataclass(frozen=True)
class TrainProgress:
    """Sent to the progress callback after every mini-batch."""

    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float


@dataclass
class TrainHistory:
    """Mean training loss and accuracy per epoch, and the wall time."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def random_shift(images: torch.Tensor, shift: int, *, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of ``(N, C, H, W)`` by its own random offset in ``[-shift, shift]`` (zero fill)."""
    n, _, h, w = images.shape
    padded = F.pad(images, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    chans = torch.arange(images.shape[1])[None, :, None, None]
    return padded[batch, chans, rows, cols]


def train_classifier(
    model: nn.Module,
    data: ImageDataset,
    settings: TrainSettings,
    *,
    device: torch.device | str = "cpu",
    progress: Callable[[TrainProgress], None] | None = None,
) -> TrainHistory:
    """Train ``model`` in place on ``data``.

    The shuffling order and any randomness inside the model (dropout) are derived from
    ``settings.seed`` without changing the caller's global RNG state, so two runs with the same seed
    on the same machine give the same weights.
    """
    if len(data) == 0:
        raise DataError(f"{data.name}: no training images")
    device = torch.device(device)
    model.to(device)
    gen = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    n = len(data)
    batches = (n + settings.batch_size - 1) // settings.batch_size
    history = TrainHistory()
    start = time.perf_counter()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(settings.seed)
        with train_mode(model):
            for epoch in range(settings.epochs):
                order = torch.randperm(n, generator=gen)
                total_loss, correct = 0.0, 0
                for b in range(batches):
                    idx = order[b * settings.batch_size : (b + 1) * settings.batch_size]
                    x = data.images[idx]
                    if settings.shift:
                        x = random_shift(x, settings.shift, generator=gen)
                    x, y = x.to(device), data.labels[idx].to(device)
                    with model_failures(x):
                        logits = model(x)
                    loss = F.cross_entropy(logits, y)
                    if not torch.isfinite(loss):
                        raise DataError(
                            f"training diverged at epoch {epoch + 1} (loss is {float(loss.detach())})"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()  # type: ignore[no-untyped-call]
                    opt.step()
                    total_loss += float(loss.detach()) * len(idx)
                    correct += int((logits.argmax(1) == y).sum())
                    if progress is not None:
                        progress(
                            TrainProgress(epoch + 1, settings.epochs, b + 1, batches, float(loss.detach()))
                        )
                history.loss.append(total_loss / n)
                history.accuracy.append(correct / n)
                log.info(
                    "epoch %d/%d loss %.4f train acc %.4f",
                    epoch + 1,
                    settings.epochs,
                    total_loss / n,
                    correct / n,
                )
    history.seconds = time.perf_counter() - start
    return history
