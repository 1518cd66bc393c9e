"""A reference made from the scanned model itself: a student distilled on clean images.

The relative statistic (:mod:`~neuralcleanse.detection.reference`) cancels a task's natural shortcuts
by comparing each label's trigger with the same label's trigger in trusted models of the task — which a
user who received one model rarely has. A student trained to imitate the received model on clean images
learns what the clean images show: the task's classes, and with them its natural shortcuts (on
Fashion-MNIST a few strokes make a "bag" for the student as for the teacher). It never sees a planted
trigger — the clean images do not contain one, and the teacher's outputs on them carry nothing about
it — so a label that is easy only in the received model stands out against it.

:func:`distil_student` trains the student (the teacher's own architecture, freshly initialised, when
every layer of it can be re-initialised; else the built-in BatchNorm CNN), on the teacher's softened
outputs for randomly shifted and mixed clean images. :func:`self_reference` scans it with the same
settings and images as the received model and returns the :class:`~.reference.Reference` its scan
gives (no trusted model needed).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DataError, SettingsError
from ..models.architectures import ARCHITECTURES, build_model
from ..models.outputs import OutputKind, as_logits
from ..modes import copy_model, frozen_eval

__all__ = ["MIN_IMAGES", "DistillSettings", "Student", "distil_student"]

log = logging.getLogger(__name__)

#: a distillation needs at least this many clean images: ten or more are held out to measure the
#: student, and some must be left to train it
MIN_IMAGES = 20


@dataclass(frozen=True, kw_only=True)
class DistillSettings:
    """How the student is trained.

    Args:
        arch: ``"same"`` (a freshly initialised copy of the teacher when every layer with weights can be
            re-initialised, else ``fallback``) or a built-in architecture name.
        fallback: the built-in architecture used when the teacher cannot be copied.
        epochs: passes over the clean images.
        batch_size: images per training batch.
        lr: Adam's learning rate (cosine-decayed to 0).
        temperature: both outputs are softened by it before the KL divergence (Hinton et al. 2015).
        targets: ``"soft"``: the student matches the teacher's softened output distribution (it then
            also learns what those outputs reveal of the teacher's features); ``"hard"``: only the
            teacher's predicted label, by cross-entropy (the temperature is unused).
        shift: the largest random translation of a training image, in pixels.
        mixup: fraction of each batch replaced by mixtures of two images (the teacher labels the mixture).
        max_images: at most this many clean images (a seeded sample) are used...
        per_class: ...or this many times the model's number of classes, when that is more (a student of a
            task with many classes needs more images: 0 keeps ``max_images`` as it is).
        seed: the student's initial weights and the data order.
    """

    arch: str = "same"
    fallback: str = "bn-cnn"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    temperature: float = 4.0
    targets: Literal["soft", "hard"] = "soft"
    shift: int = 2
    mixup: float = 0.5
    max_images: int = 10_000
    per_class: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "shift", "max_images", "per_class", "seed"):
            value = getattr(self, name)
            zero = name in ("shift", "per_class", "seed")
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if zero else 1):
                raise SettingsError(
                    f"distillation {name} must be a {'non-negative' if zero else 'positive'} integer, got {value!r}"
                )
        if self.max_images < MIN_IMAGES:
            raise SettingsError(
                f"distillation max_images must be at least {MIN_IMAGES}, got {self.max_images}"
            )
        if self.arch != "same" and self.arch not in ARCHITECTURES:
            raise SettingsError(
                f"unknown student architecture {self.arch!r}; use same or {', '.join(ARCHITECTURES)}"
            )
        if self.fallback not in ARCHITECTURES:
            raise SettingsError(
                f"unknown fallback architecture {self.fallback!r}; use {', '.join(ARCHITECTURES)}"
            )
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SettingsError(f"distillation {name} must be a positive number, got {value!r}")
        if self.targets not in ("soft", "hard"):
            raise SettingsError(f"distillation targets must be soft or hard, got {self.targets!r}")
        if not (isinstance(self.mixup, (int, float)) and 0 <= self.mixup <= 1):
            raise SettingsError(f"distillation mixup must be in [0, 1], got {self.mixup!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    def image_cap(self, num_classes: int) -> int:
        """How many clean images a student of a model with ``num_classes`` classes learns from at most."""
        return max(self.max_images, self.per_class * num_classes)


@dataclass(frozen=True)
class Student:
    """A distilled student and how well it imitates its teacher.

    ``agreement`` is the fraction of held-out clean images (a tenth of them, at most 1,000, never trained
    on) on which student and teacher predict the same label; ``arch`` what it was built as.
    """

    model: nn.Module
    arch: str
    agreement: float
    images: int
    settings: DistillSettings
    held_out: int = 0

    def describe(self) -> str:
        return (
            f"a student ({self.arch}) distilled from the model on {self.images} clean images; it agrees "
            f"with the model on {self.agreement:.1%} of {self.held_out or 'the'} held-out images"
        )


def _fresh_copy(model: nn.Module, seed: int) -> nn.Module | None:
    """The teacher's architecture with new weights, or None when a layer cannot be re-initialised."""
    try:
        student = copy_model(model)
    except Exception:  # noqa: BLE001 - some modules (compiled, exported, foreign) do not copy
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in student.modules():
            own = list(module.parameters(recurse=False)) + [
                b for b in module.buffers(recurse=False) if b.is_floating_point()
            ]
            if not own:
                continue
            reset: Any = getattr(module, "reset_parameters", None)
            if not callable(reset):
                return None
            reset()
            running: Any = getattr(module, "reset_running_stats", None)
            if callable(running):
                running()
    for p in student.parameters():
        p.requires_grad_(True)
    return student


def _shifted(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Each image translated by a whole number of pixels up to ``shift`` (edge pixels repeated)."""
    if shift == 0:
        return x
    n, _, h, w = x.shape
    d = torch.randint(-shift, shift + 1, (n, 2), generator=gen).float()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2 * d[:, 0] / w
    theta[:, 1, 2] = 2 * d[:, 1] / h
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)


def held_out_count(drawn: int) -> int:
    """Of ``drawn`` clean images, how many a student never trains on and is measured on: a tenth, at
    least 10, at most 1,000."""
    return min(1000, max(10, drawn // 10))


def distil_student(
    model: nn.Module,
    images: torch.Tensor,
    *,
    settings: DistillSettings | None = None,
    outputs: OutputKind = "auto",
    device: torch.device | str = "cpu",
) -> Student:
    """Train a student to imitate ``model`` on clean ``images`` (``(N, C, H, W)`` in ``[0, 1]``).

    The teacher is used frozen in eval mode and restored; nothing about it is changed.
    """
    cfg = settings or DistillSettings()
    device = torch.device(device)
    if images.ndim != 4 or len(images) < MIN_IMAGES:
        raise DataError(
            f"distillation needs at least {MIN_IMAGES} clean (N, C, H, W) images, got shape {tuple(images.shape)}"
        )
    rng = np.random.default_rng([cfg.seed, 0xD157])
    # the student's initial weights come from a seed of its own: a student that started from the very
    # weights the model was trained from (a model trained with the same small seed) would grow the same
    # features, and a trigger tuned to the model's neurons (Trojan) would partly work on it
    init = int(rng.integers(2**62))
    teacher, _ = as_logits(model, images[:64].to(device), outputs=outputs)
    shape = (int(images.shape[1]), int(images.shape[2]), int(images.shape[3]))
    with frozen_eval(teacher), torch.no_grad():
        num_classes = int(teacher(images[:2].to(device)).shape[1])
    order = torch.from_numpy(rng.permutation(len(images))[: cfg.image_cap(num_classes)])
    n_held = held_out_count(len(order))
    held, train = images[order[:n_held]], images[order[n_held:]]
    student: nn.Module | None = None
    arch = cfg.arch
    if arch == "same":
        student = _fresh_copy(model, init)
        arch = f"same as the model ({type(model).__name__})" if student is not None else cfg.fallback
        if student is None:
            log.info("the model's layers cannot all be re-initialised; the student is a %s", cfg.fallback)
    if student is None:
        student = build_model(arch, input_shape=shape, num_classes=num_classes, seed=init)
    student = student.to(device)
    with frozen_eval(teacher):
        _train(student, teacher, train, cfg, device)
        agreement = _agreement(student, teacher, held, device)
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    log.info(
        "student %s: %.1f%% agreement with the model on %d held-out images", arch, 100 * agreement, n_held
    )
    return Student(student, arch, agreement, len(train), cfg, n_held)


def _train(
    student: nn.Module, teacher: nn.Module, images: torch.Tensor, cfg: DistillSettings, device: torch.device
) -> None:
    gen = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in student.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=cfg.lr)
    per_epoch = max(1, len(images) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=cfg.epochs * per_epoch)
    t = cfg.temperature
    student.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(images), generator=gen)
        for b in range(per_epoch):
            x = images[perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]].to(device)
            x = _shifted(x, cfg.shift, gen)
            n_mix = int(round(cfg.mixup * len(x)))
            if n_mix:
                partner = x[torch.randperm(len(x), generator=gen)[:n_mix].to(device)]
                lam = torch.rand(n_mix, 1, 1, 1, generator=gen).to(device)
                x = torch.cat([x[n_mix:], lam * x[:n_mix] + (1 - lam) * partner])
            with torch.no_grad():
                teacher_out = teacher(x).float()
            if cfg.targets == "hard":
                loss = F.cross_entropy(student(x), teacher_out.argmax(1))
            else:
                target = F.log_softmax(teacher_out / t, dim=1)
                out = F.log_softmax(student(x) / t, dim=1)
                loss = F.kl_div(out, target, log_target=True, reduction="batchmean") * t * t
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            schedule.step()
    student.eval()


def _agreement(student: nn.Module, teacher: nn.Module, images: torch.Tensor, device: torch.device) -> float:
    with torch.no_grad():
        same = 0
        for start in range(0, len(images), 256):
            x = images[start : start + 256].to(device)
            same += int((student(x).argmax(1) == teacher(x).argmax(1)).sum())
    return same / max(1, len(images))
