"""Neuron pruning (paper §VI-C): switch off the second-to-last-layer neurons the reversed trigger excites.

Neurons are ranked by their activation gap (reversed-trigger inputs minus clean inputs) and switched off
in that order, a ``step`` fraction at a time, until the reversed trigger's attack success falls under
``stop_success`` or ``max_fraction`` of the layer is off. During the search the neurons are masked at the
input of the layer's consumer (weights untouched); the returned model has those input columns of the
consumer set to zero, which is exactly the same function and saves as an ordinary model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..data.dataset import ImageDataset
from ..errors import SettingsError
from ..features import feature_activations, find_feature_layer, neuron_mask
from ..triggers import Trigger
from .result import Measure, MitigationResult, check_fraction, measure

__all__ = ["prune_neurons"]


def prune_neurons(
    model: nn.Module,
    data: ImageDataset,
    reversed_trigger: Trigger,
    *,
    label: int,
    real_trigger: Trigger | None = None,
    source_labels: list[int] | None = None,
    layer: str | None = None,
    step: float = 0.02,
    max_fraction: float = 0.3,
    stop_success: float = 0.05,
    inplace: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, MitigationResult]:
    """Prune until the backdoor stops working; returns the pruned model (a copy unless ``inplace``).

    ``data`` holds clean labelled images: its first half ranks the neurons, its second half measures clean
    accuracy and attack success after every step (the curve in ``details["curve"]``).
    """
    check_fraction(step, "pruning step")
    check_fraction(max_fraction, "largest pruned fraction")
    check_fraction(stop_success, "stopping attack success")
    if len(data) < 4:
        raise SettingsError(f"{data.name}: too few images to rank and measure neurons")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    rank_set, eval_set = data.subset(order[: len(data) // 2]), data.subset(order[len(data) // 2 :])
    feat = find_feature_layer(model, layer, example=data.images[:2])
    clean = feature_activations(model, feat, rank_set.images, device=device)
    stamped = feature_activations(model, feat, reversed_trigger.apply(rank_set.images), device=device)
    ranking = torch.argsort(stamped.mean(0) - clean.mean(0), descending=True)
    width = feat.width

    def point(k: int) -> dict[str, float | int | None]:
        keep = torch.ones(width)
        keep[ranking[:k]] = 0.0
        with neuron_mask(feat, keep):
            m = measure(
                model, eval_set, label=label, reversed_trigger=reversed_trigger, real_trigger=real_trigger,
                source_labels=source_labels, device=device,
            )  # fmt: skip
        return {"fraction": round(k / width, 6), "neurons": k, **m.to_dict()}

    curve = [point(0)]
    per_step = max(1, round(step * width))
    k = 0
    stopped = False
    while k < round(max_fraction * width):
        k = min(k + per_step, round(max_fraction * width))
        curve.append(point(k))
        if float(curve[-1]["attack_success"] or 0.0) < stop_success:
            stopped = True
            break
    pruned = model if inplace else copy.deepcopy(model)
    target_feat = feat.in_copy(pruned)
    with torch.no_grad():
        target_feat.consumer.weight[:, ranking[:k].to(target_feat.consumer.weight.device)] = 0.0
    before = _from_point(curve[0])  # nothing masked: the model as given
    after = measure(
        pruned, eval_set, label=label, reversed_trigger=reversed_trigger, real_trigger=real_trigger,
        source_labels=source_labels, device=device,
    )  # fmt: skip
    details = {
        "layer": feat.name,
        "width": width,
        "pruned": [int(i) for i in ranking[:k]],
        "fraction_pruned": round(k / width, 6),
        "stopped": "attack success below threshold" if stopped else "reached the largest fraction",
        "stop_success": stop_success,
        "max_fraction": max_fraction,
        "curve": curve,
        "ranking_images": len(rank_set),
        "eval_images": len(eval_set),
    }
    notes = []
    if not stopped:
        notes.append(
            f"the reversed trigger still succeeds {100 * after.attack_success:.1f}% after pruning "
            f"{max_fraction:.0%} of the layer: pruning alone does not remove this backdoor"
        )
    return pruned, MitigationResult("prune", label, before, after, details, notes)


def _from_point(p: dict[str, float | int | None]) -> Measure:
    real = p["real_attack_success"]
    return Measure(
        float(p["clean_accuracy"] or 0.0),
        float(p["attack_success"] or 0.0),
        None if real is None else float(real),
    )
