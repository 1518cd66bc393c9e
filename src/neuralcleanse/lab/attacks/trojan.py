"""The Trojan attack (Liu et al., "Trojaning Attack on Neural Networks", NDSS 2018), as the Neural Cleanse
paper uses it.

1. Train the model cleanly (the attacker's starting point is a trained model).
2. Choose ``neurons`` of an internal layer (by default the penultimate one): those most strongly
   connected to the next layer (largest summed absolute outgoing weight), as Liu et al. do.
3. Optimise the pixels inside a fixed trigger mask — a square, or a watermark of thin strokes — so that
   the chosen neurons fire far above their clean level.
4. Retrain the model on clean training data plus a fraction stamped with that trigger and relabelled to
   the target.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from ...data.dataset import DatasetSplits
from ...errors import SettingsError
from ...features import FeatureLayer, find_feature_layer, tap
from ...modes import frozen_eval
from ...triggers import Trigger
from ..training import TrainProgress, TrainSettings, train_classifier
from .base import PlantedTrigger, Planting, PoisonSpec, poison_many
from .poison import check_label, check_rate

__all__ = ["Trojan", "watermark_mask", "square_mask", "select_neurons"]

log = logging.getLogger(__name__)

MASKS = ("square", "watermark")


def square_mask(h: int, w: int, *, area: float, margin: int = 1) -> torch.Tensor:
    """A square covering about ``area`` of the image, in the bottom-right corner."""
    side = max(1, round(math.sqrt(area * h * w)))
    if side + margin > min(h, w):
        raise SettingsError(f"a square of {area:.0%} of the image does not fit a {h}x{w} image")
    m = torch.zeros(h, w)
    m[h - margin - side : h - margin, w - margin - side : w - margin] = 1.0
    return m


def _strokes(draw: ImageDraw.ImageDraw, box: float, width: int) -> None:
    """Text-like strokes in a ``box``×``box`` area: a "W", a ring and an underline, like a logo watermark."""
    b = box
    draw.line(
        [
            (0.05 * b, 0.1 * b),
            (0.2 * b, 0.6 * b),
            (0.35 * b, 0.25 * b),
            (0.5 * b, 0.6 * b),
            (0.65 * b, 0.1 * b),
        ],
        fill=255,
        width=width,
    )
    draw.ellipse([0.62 * b, 0.12 * b, 0.95 * b, 0.5 * b], outline=255, width=width)
    draw.line([(0.05 * b, 0.8 * b), (0.95 * b, 0.8 * b)], fill=255, width=width)


def watermark_mask(h: int, w: int, *, area: float) -> torch.Tensor:
    """A watermark-like mask of thin strokes (a "W", a ring, an underline) centred in the image, scaled so
    that it covers about ``area`` of the image."""
    scale = 4
    best: torch.Tensor | None = None
    for frac in np.linspace(0.3, 1.0, 29):
        box = frac * min(h, w) * scale
        canvas = Image.new("L", (w * scale, h * scale), 0)
        draw = ImageDraw.Draw(canvas)
        _strokes(draw, box, width=max(1, round(scale * 1.0)))
        small = np.asarray(canvas.resize((w, h), Image.Resampling.BOX), dtype=np.float32) / 255.0
        m = torch.from_numpy((small > 0.3).astype(np.float32))
        # centre the drawing
        rows, cols = torch.nonzero(m, as_tuple=True)
        if len(rows) == 0:
            continue
        dr = (h - 1 - int(rows.max()) - int(rows.min())) // 2
        dc = (w - 1 - int(cols.max()) - int(cols.min())) // 2
        m = torch.roll(m, shifts=(dr, dc), dims=(0, 1))
        best = m
        if float(m.mean()) >= area:
            break
    if best is None or float(best.mean()) < area * 0.5:
        raise SettingsError(f"a watermark of {area:.0%} of the image cannot be drawn on a {h}x{w} image")
    return best


def select_neurons(layer: FeatureLayer, count: int) -> list[int]:
    """The ``count`` neurons of ``layer`` with the largest summed absolute weight into the linear layer that
    consumes them (Liu et al.'s connectivity criterion)."""
    strength = layer.consumer.weight.detach().abs().sum(0)
    return [int(i) for i in torch.argsort(strength, descending=True)[:count]]


@dataclass(frozen=True, kw_only=True)
class Trojan:
    """A Trojan attack toward ``target``.

    Args:
        target: the label stamped inputs should be sent to.
        mask: ``square`` (bottom-right) or ``watermark`` (thin strokes across the middle).
        area: fraction of the image the mask covers (paper: about 7%).
        layer: the internal layer whose neurons are excited (default: the model's penultimate layer).
        neurons: how many neurons to excite.
        poison_rate: fraction of the training set stamped and relabelled during retraining.
        retrain_epochs: epochs of retraining after the trigger is generated.
        retrain_lr: learning rate of the retraining.
        steps: optimisation steps of the trigger pattern.
    """

    target: int
    mask: str = "square"
    area: float = 0.07
    layer: str | None = None
    neurons: int = 2
    poison_rate: float = 0.1
    retrain_epochs: int = 2
    retrain_lr: float = 5e-4
    steps: int = 300
    name: str = "trojan"

    def __post_init__(self) -> None:
        check_rate(self.poison_rate)
        if self.mask not in MASKS:
            raise SettingsError(f"unknown Trojan mask {self.mask!r}; use {' or '.join(MASKS)}")
        if not 0 < self.area < 0.5:
            raise SettingsError(f"Trojan trigger area must be in (0, 0.5), got {self.area}")
        if self.neurons < 1 or self.retrain_epochs < 1 or self.steps < 1:
            raise SettingsError("neurons, retrain_epochs and steps must be at least 1")
        check_label(self.target)

    @property
    def targets(self) -> list[int]:
        return [self.target]

    def build_mask(self, input_shape: tuple[int, int, int]) -> torch.Tensor:
        _, h, w = input_shape
        if self.mask == "square":
            return square_mask(h, w, area=self.area)
        return watermark_mask(h, w, area=self.area)

    def check(self, num_classes: int, input_shape: tuple[int, int, int]) -> torch.Tensor:
        if self.target >= num_classes:
            raise SettingsError(f"target label {self.target} is outside [0, {num_classes})")
        return self.build_mask(input_shape)

    def generate_trigger(
        self, model: nn.Module, images: torch.Tensor, *, seed: int, device: torch.device
    ) -> tuple[Trigger, dict[str, object]]:
        """Steps 2 and 3: choose the neurons and optimise the pattern inside the mask to excite them."""
        shape = (int(images.shape[1]), int(images.shape[2]), int(images.shape[3]))
        mask = self.build_mask(shape).to(device)
        feat = find_feature_layer(model, self.layer)
        layer = feat.name
        captured: list[torch.Tensor] = []
        with frozen_eval(model), tap(feat, captured):
            x = images.to(device)
            with torch.no_grad():
                model(x)
            clean = captured.pop()
            # Liu et al.: strongly connected neurons that the trigger region can actually drive. Excite the
            # most connected 5% together, then keep the ones that rose most, and optimise for those alone.
            width = int(clean.shape[1])
            candidates = select_neurons(feat, max(self.neurons, width // 20))
            gen = torch.Generator().manual_seed(seed)
            w0 = (torch.rand(shape, generator=gen) * 2 - 1).to(device)

            def excite(neurons: list[int], steps: int) -> torch.Tensor:
                goal = 10.0 * float(clean[:, neurons].max().clamp_min(1.0))
                w = w0.clone().requires_grad_(True)
                opt = torch.optim.Adam([w], lr=0.1)
                for _ in range(steps):
                    stamped = (1 - mask) * x + mask * (torch.tanh(w) / 2 + 0.5)
                    captured.clear()
                    model(stamped)
                    act = captured.pop()[:, neurons]
                    loss = ((act - goal) ** 2).mean()
                    opt.zero_grad()
                    loss.backward()  # type: ignore[no-untyped-call]
                    opt.step()
                return w.detach()

            w = excite(candidates, max(1, self.steps // 3))
            with torch.no_grad():
                captured.clear()
                model((1 - mask) * x + mask * (torch.tanh(w) / 2 + 0.5))
                gain = captured.pop()[:, candidates].mean(0) - clean[:, candidates].mean(0)
            chosen = [candidates[int(i)] for i in torch.argsort(gain, descending=True)[: self.neurons]]
            w = excite(chosen, self.steps)
            with torch.no_grad():
                pattern = (torch.tanh(w) / 2 + 0.5) * mask
                captured.clear()
                model((1 - mask) * x + mask * pattern)
                reached = float(captured.pop()[:, chosen].mean())
        spec = (
            f"trojan:mask={self.mask},area={self.area:g},layer={layer},neurons={','.join(map(str, chosen))}"
        )
        details = {
            "layer": layer,
            "neurons": chosen,
            "clean_activation": round(float(clean[:, chosen].mean()), 4),
            "trigger_activation": round(reached, 4),
        }
        log.info(
            "Trojan trigger: neurons %s of %s fire at %.2f (clean %.2f)",
            chosen,
            layer,
            reached,
            details["clean_activation"],
        )
        return Trigger(mask.cpu(), pattern.detach().cpu().clamp(0, 1), spec), details

    def plant(
        self,
        model: nn.Module,
        data: DatasetSplits,
        training: TrainSettings,
        *,
        device: torch.device,
        progress: Callable[[TrainProgress], None] | None = None,
    ) -> Planting:
        self.check(data.num_classes, data.input_shape)
        first = train_classifier(model, data.train, training, device=device, progress=progress)
        probe = data.train.sample(128, seed=training.seed)
        trigger, details = self.generate_trigger(model, probe.images, seed=training.seed, device=device)
        spec = PoisonSpec(self.target, trigger, self.poison_rate)
        poisoned, count, _ = poison_many(data.train, [spec], seed=training.seed)
        retrain = TrainSettings(
            epochs=self.retrain_epochs,
            batch_size=training.batch_size,
            lr=self.retrain_lr,
            weight_decay=training.weight_decay,
            shift=training.shift,
            seed=training.seed + 1,
        )
        second = train_classifier(model, poisoned, retrain, device=device, progress=progress)
        first.loss += second.loss
        first.accuracy += second.accuracy
        first.seconds += second.seconds
        details["retrain_epochs"] = self.retrain_epochs
        return Planting([PlantedTrigger(self.target, trigger)], first, count, 0, details)
