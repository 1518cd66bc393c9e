"""Input filter (paper §VI-B): reject inputs that excite the backdoor's neurons.

The score of an input is the mean activation of the top 1% second-to-last-layer neurons that the reversed
trigger raises most. The threshold is the clean score quantile that gives the chosen false-positive rate
on calibration images; it is then checked on held-out clean images (the false-positive rate actually
reached) and on held-out stamped images (the false-negative rate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from .._format import pct
from ..data.dataset import ImageDataset
from ..errors import DataError
from ..features import FeatureLayer, feature_activations, find_feature_layer, top_neurons
from ..metrics import attack_victims, predict
from ..suspect import SuspectedBackdoor, as_network
from ..triggers import Trigger
from .details import MitigationDetails, register_details
from .result import (
    Measure,
    MitigationResult,
    check_fraction,
    coverage_notes,
    few_images_notes,
    label_loss_notes,
    measure,
    random_halves,
    real_trigger_notes,
)

if TYPE_CHECKING:
    from ..models.loading import LoadedModel

__all__ = ["FilterDetails", "InputFilter", "filter_inputs"]


class InputFilter(nn.Module):
    """A model wrapper that scores inputs by the backdoor neurons' activation and rejects high scores.

    ``forward`` returns the model's logits unchanged; :meth:`predict` returns labels with ``-1`` for
    rejected inputs; :meth:`flags` tells which inputs would be rejected.

    Examples::

        >>> guarded = InputFilter(model, layer, neurons=[3, 17], threshold=4.2)
        >>> labels = guarded.predict(images)   # -1 where an input was rejected
    """

    neurons: torch.Tensor

    def __init__(self, model: nn.Module, layer: FeatureLayer, neurons: list[int], threshold: float) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.register_buffer("neurons", torch.as_tensor(neurons, dtype=torch.int64))
        self.threshold = float(threshold)

    def __repr__(self) -> str:
        return f"InputFilter(layer={self.layer.name!r}, neurons={len(self.neurons)}, threshold={self.threshold:.4g})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out

    def scores(self, images: torch.Tensor, *, device: torch.device | str = "cpu") -> torch.Tensor:
        feats = feature_activations(self.model, self.layer, images, device=device)
        return feats[:, self.neurons.cpu()].mean(1)

    def flags(self, images: torch.Tensor, *, device: torch.device | str = "cpu") -> torch.Tensor:
        return self.scores(images, device=device) > self.threshold

    def predict(self, images: torch.Tensor, *, device: torch.device | str = "cpu") -> torch.Tensor:
        labels = predict(self.model, images, device=device)
        labels[self.flags(images, device=device)] = -1
        return labels


@register_details("filter")
@dataclass(frozen=True)
class FilterDetails(MitigationDetails):
    """The filter's layer, neurons and threshold, and its error rates on held-out images."""

    layer: str = ""
    neurons: list[int] = field(default_factory=list)
    threshold: float = math.nan
    fpr_target: float | None = None
    fpr_measured: float | None = None
    #: false-negative rate by trigger (``reversed``, and ``real`` when known)
    fnr: dict[str, float] = field(default_factory=dict)
    calibration_images: int = 0
    held_out_images: int = 0

    def lines(self) -> list[str]:
        fnr = ", ".join(f"{k} trigger {pct(v, 1)}" for k, v in self.fnr.items())
        return [
            f"false positives on held-out clean images {pct(self.fpr_measured, 1)} "
            f"(target {pct(self.fpr_target, 0)}); false negatives: {fnr}"
        ]

    def measured_on(self) -> str:
        return (
            f"{self.held_out_images} held-out images (the other {self.calibration_images} set the threshold)"
        )


def filter_inputs(
    model: nn.Module | LoadedModel,
    data: ImageDataset,
    backdoor: SuspectedBackdoor | Trigger,
    *,
    label: int | None = None,
    real_trigger: Trigger | None = None,
    source_labels: Sequence[int] | None = None,
    fpr: float = 0.05,
    top_fraction: float = 0.01,
    layer: str | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[InputFilter, MitigationResult]:
    """Build the filter on half of ``data`` and measure it on the other half.

    Returns the filter (wrapping ``model``, which is not changed) and the result: threshold, the target
    and measured false-positive rates, the false-negative rates on inputs stamped with the real trigger
    (where known) and the reversed one; "after" counts a rejected clean input as an error and a rejected
    stamped input as a failed attack.

    ``backdoor``: a :class:`SuspectedBackdoor`, or its reversed trigger with the other fields as keywords.
    """
    model = as_network(model, "nc.filter_inputs")
    suspect = SuspectedBackdoor.of(backdoor, label, real_trigger, source_labels)
    data, device = suspect.work(data, device)
    label, reversed_trigger, real_trigger = suspect.label, suspect.reversed_trigger, suspect.real_trigger
    sources = suspect.sources
    check_fraction(fpr, "false-positive rate")
    check_fraction(top_fraction, "neuron fraction")
    feat = find_feature_layer(model, layer, example=data.images[:2])
    if len(data) < 20:
        raise DataError(f"{data.name}: at least 20 images are needed to calibrate and test a filter")
    calib, held = random_halves(data, seed)
    clean_feats = feature_activations(model, feat, calib.images, device=device)
    stamped_feats = feature_activations(model, feat, reversed_trigger.apply(calib.images), device=device)
    neurons = top_neurons(clean_feats, stamped_feats, top_fraction)
    clean_scores = clean_feats[:, neurons].mean(1)
    threshold = float(torch.quantile(clean_scores, 1 - fpr))
    guard = InputFilter(model, feat, [int(i) for i in neurons], threshold)

    held_flags = guard.flags(held.images, device=device)
    victims = attack_victims(held, target=label, source_labels=sources).images
    fnr = {"reversed": 1 - float(guard.flags(reversed_trigger.apply(victims), device=device).float().mean())}
    if real_trigger is not None:
        fnr["real"] = 1 - float(guard.flags(real_trigger.apply(victims), device=device).float().mean())

    before = measure(model, held, suspect, device=device)

    def passed_success(trig: Trigger) -> float:
        stamped = trig.apply(victims)
        return float((guard.predict(stamped, device=device) == label).float().mean())

    kept_correct = (guard.predict(held.images, device=device) == held.labels).float()
    own = held.labels == label
    after = Measure(
        clean_accuracy=float(kept_correct.mean()),
        label_accuracy=float(kept_correct[own].mean()) if bool(own.any()) else None,
        attack_success=passed_success(reversed_trigger),
        real_attack_success=None if real_trigger is None else passed_success(real_trigger),
    )
    details = FilterDetails(
        layer=feat.name,
        neurons=guard.neurons.tolist(),
        threshold=round(threshold, 6),
        fpr_target=fpr,
        fpr_measured=round(float(held_flags.float().mean()), 6),
        fnr={k: round(v, 6) for k, v in fnr.items()},
        calibration_images=len(calib),
        held_out_images=len(held),
    )
    notes = [
        f"threshold set on {len(calib)} clean images at {fpr:.0%} false positives; rates measured on {len(held)} others"
    ]
    notes += label_loss_notes(
        label,
        before,
        after,
        instead="lower the filter's false-positive rate (--fpr)",
        subject="behind the filter, the model",
    )
    notes += real_trigger_notes(before.real_attack_success)
    notes += few_images_notes(held)
    notes += coverage_notes(
        model, data, what="clean accuracy and false positives are measured without them", device=device
    )
    return guard, MitigationResult("filter", label, before, after, details, notes)
