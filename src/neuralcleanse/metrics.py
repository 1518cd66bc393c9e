"""Clean accuracy, predictions and attack success rate."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .data.dataset import ImageDataset
from .errors import DataError, ModelError, NeuralCleanseError, SettingsError, exception_line
from .modes import frozen_eval
from .triggers import Trigger

__all__ = [
    "check_rows", "model_failures", "output_count", "predict", "accuracy", "attack_success_rate", "attack_victims", "stamped_success",
]  # fmt: skip


@contextmanager
def model_failures(batch: torch.Tensor) -> Iterator[None]:
    """Run the user's model on ``batch`` inside this block: whatever its forward (or backward) raises
    becomes a one-line :class:`ModelError` naming the batch, so that a model that fails only on some
    batches (a larger one, a stamped one) gets the same clear error as one that fails on the first.
    Our own errors and running out of memory pass through (callers plan memory with the latter); the
    model's exception is kept as the cause."""
    try:
        yield
    except (NeuralCleanseError, torch.OutOfMemoryError):
        raise
    except Exception as exc:
        raise ModelError(
            f"the model failed on a batch of {len(batch)} images of shape {tuple(batch.shape[1:])}: "
            f"{exception_line(exc)}"
        ) from exc


@torch.no_grad()
def check_rows(scores: torch.Tensor, images: int) -> None:
    """One-line :class:`DataError` unless ``scores`` holds one row of real class scores per image."""
    if scores.device.type == "meta":
        raise DataError("model returned a meta tensor (shapes without values): it computes no class scores")
    if scores.is_complex() or not scores.is_floating_point():
        raise DataError(
            f"model returned {str(scores.dtype).removeprefix('torch.')} scores: class scores must be real "
            "floating-point numbers (logits or probabilities)"
        )
    if scores.ndim != 2 or len(scores) != images:
        raise DataError(
            f"model returned scores of shape {tuple(scores.shape)} for a batch of {images} images "
            "(one row of class scores per image expected)"
        )


@torch.no_grad()
def output_count(model: nn.Module, images: torch.Tensor, *, device: torch.device | str = "cpu") -> int:
    """How many class scores ``model`` returns per image (one forward pass of two of ``images``)."""
    with frozen_eval(model):
        scores = model(images[:2].to(device))
    check_rows(scores, len(images[:2]))
    return int(scores.shape[1])


def predict(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    what: str = "images",
    label: int | None = None,
) -> torch.Tensor:
    """Predicted labels for ``images`` (run in eval mode; the model's mode is restored afterwards).

    Non-finite scores are a one-line :class:`DataError` that names ``what`` the images are and the first
    image (its index in ``images``) the model failed on. ``label``, if given, must be one of the model's
    outputs (a :class:`SettingsError` otherwise): the label the caller will compare predictions with."""
    out = []
    with frozen_eval(model):
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            with model_failures(batch):
                logits = model(batch.to(device))
            check_rows(logits, len(batch))
            if label is not None and not 0 <= label < logits.shape[1]:
                raise SettingsError(f"label {label} is not one of the model's {logits.shape[1]} outputs")
            finite = torch.isfinite(logits).all(1)
            if not finite.all():
                first = start + int((~finite).nonzero()[0])
                raise DataError(
                    f"model produced NaN or infinite outputs on {what} (first at index {first} of "
                    f"{len(images)}; {int((~finite).sum())} of the {len(batch)} in its batch)"
                )
            out.append(logits.argmax(dim=1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def accuracy(
    model: nn.Module, data: ImageDataset, *, batch_size: int = 512, device: torch.device | str = "cpu"
) -> float:
    """Fraction of ``data`` classified correctly."""
    if len(data) == 0:
        raise DataError(f"{data.name}: no images to evaluate")
    pred = predict(model, data.images, batch_size=batch_size, device=device)
    return float((pred == data.labels).float().mean())


def attack_victims(
    data: ImageDataset, *, target: int, source_labels: Sequence[int] | None = None
) -> ImageDataset:
    """Images an attack toward ``target`` is measured on: true label ≠ target (and in ``source_labels``).

    ``target`` may be beyond the labels ``data`` holds (a model with more outputs than the data's
    classes); the functions that run the model check it against the model's outputs."""
    if target < 0:
        raise SettingsError(f"target label {target} is negative")
    keep = data.labels != target
    if source_labels is not None:
        keep &= torch.isin(data.labels, torch.as_tensor(list(source_labels), dtype=torch.int64))
    return data.subset(torch.nonzero(keep).flatten())


def attack_success_rate(
    model: nn.Module,
    data: ImageDataset,
    trigger: Trigger,
    *,
    target: int,
    source_labels: Sequence[int] | None = None,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> float:
    """Fraction of victims (see :func:`attack_victims`) sent to ``target`` once stamped with ``trigger``."""
    victims = attack_victims(data, target=target, source_labels=source_labels)
    if len(victims) == 0:
        raise DataError(f"{data.name}: no images outside the target label to measure attack success on")
    pred = predict(
        model, trigger.apply(victims.images), batch_size=batch_size, device=device,
        what=f"{data.name}'s images stamped with the trigger", label=target,
    )  # fmt: skip
    return float((pred == target).float().mean())


def stamped_success(
    model: nn.Module,
    trigger: Trigger,
    images: torch.Tensor,
    *,
    target: int,
    device: torch.device | str = "cpu",
) -> float:
    """Fraction of ``images`` sent to ``target`` once stamped with ``trigger`` (the caller picks the victims)."""
    pred = predict(
        model,
        trigger.apply(images),
        device=device,
        what=f"images stamped with the trigger of label {target}",
        label=target,
    )
    return float((pred == target).float().mean())
