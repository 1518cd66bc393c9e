"""Neuron pruning (paper §VI-C): switch off the second-to-last-layer neurons the reversed trigger excites.

Neurons are ranked by their activation gap (reversed-trigger inputs minus clean inputs) and switched off
in that order, a ``step`` fraction at a time, until the reversed trigger's attack success falls under
``stop_success``, ``max_fraction`` of the layer is off, or one more step would take clean accuracy more
than ``max_accuracy_drop`` below the unpruned model's, or the suspected label's own clean accuracy under
half of the unpruned model's (that step is then not kept: a label the model no longer gives cannot be
attacked, so its attack success would fall with the label, not with the backdoor; without a budget,
``max_accuracy_drop=None``, only a note says so). During the search the
neurons are masked at the input of the layer's consumer (weights untouched); the returned model has those
input columns of the consumer set to zero, which is exactly the same function and saves as an ordinary
model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._format import pct
from ..data.dataset import ImageDataset
from ..errors import SettingsError
from ..features import feature_activations, find_feature_layer, neuron_mask, top_neurons
from ..modes import copy_model
from ..suspect import SuspectedBackdoor, as_network
from ..triggers import Trigger
from .details import DetailsTable, MitigationDetails, register_details
from .result import (
    LABEL_KEPT,
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

log = logging.getLogger(__name__)

__all__ = ["PruneDetails", "prune_neurons"]


@register_details("prune")
@dataclass(frozen=True)
class PruneDetails(MitigationDetails):
    """Which neurons were pruned, why pruning stopped, and the curve measured on the way."""

    layer: str = ""
    width: int = 0
    pruned: list[int] = field(default_factory=list)
    fraction_pruned: float = 0.0
    stopped: str = ""
    stop_success: float | None = None
    max_fraction: float | None = None
    #: the clean-accuracy budget (absent in results of earlier versions, which had none)
    max_accuracy_drop: float | None = None
    #: one point per step: fraction and number of neurons off, clean accuracy, attack success(es)
    curve: list[dict[str, Any]] = field(default_factory=list)
    ranking_images: int = 0
    eval_images: int = 0
    #: the seed of the split into ranking and measuring halves (absent in results of earlier versions)
    seed: int | None = None

    def lines(self) -> list[str]:
        return [f"pruned {self.fraction_pruned:.1%} of {self.width} neurons ({self.stopped})"]

    def table(self) -> DetailsTable | None:
        if not self.curve:
            return None
        rows = [
            (f"{p['fraction']:.1%}", pct(p.get("clean_accuracy"), 2), pct(p.get("attack_success"), 2))
            for p in self.curve
        ]
        return DetailsTable(("pruned", "clean accuracy", "attack success"), rows, "pruning curve")

    def figures(self, label: int) -> dict[str, bytes]:
        if not self.curve:
            return {}
        from ..report.figures import pruning_curve

        start = self.curve[0].get("clean_accuracy")
        floor = None if self.max_accuracy_drop is None or start is None else start - self.max_accuracy_drop
        return {f"pruning_label_{label}.png": pruning_curve(self.curve, accuracy_floor=floor)}

    def measured_on(self) -> str:
        return f"{self.eval_images} held-out images (the other {self.ranking_images} rank the neurons)"


def prune_neurons(
    model: nn.Module | LoadedModel,
    data: ImageDataset,
    backdoor: SuspectedBackdoor | Trigger,
    *,
    label: int | None = None,
    real_trigger: Trigger | None = None,
    source_labels: Sequence[int] | None = None,
    layer: str | None = None,
    step: float = 0.02,
    max_fraction: float = 0.3,
    stop_success: float = 0.05,
    max_accuracy_drop: float | None = 0.1,
    seed: int = 0,
    inplace: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, MitigationResult]:
    """Prune until the backdoor stops working; returns the pruned model (a copy unless ``inplace``).

    ``data`` holds clean labelled images: a random half of it (drawn with ``seed``) ranks the neurons, the
    other half measures clean accuracy and attack success after every step (the curve in
    ``details["curve"]``). A step that takes clean accuracy more than ``max_accuracy_drop`` (a fraction,
    0.1 = ten points) below the unpruned model's ends the search and is not kept; ``None`` has no budget.

    ``backdoor``: a :class:`SuspectedBackdoor`, or its reversed trigger with the other fields as keywords.
    """
    model = as_network(model, "nc.prune_neurons")
    suspect = SuspectedBackdoor.of(backdoor, label, real_trigger, source_labels)
    data, device = suspect.work(data, device)
    label, reversed_trigger = suspect.label, suspect.reversed_trigger
    check_fraction(step, "pruning step")
    check_fraction(max_fraction, "largest pruned fraction")
    check_fraction(stop_success, "stopping attack success")
    if max_accuracy_drop is not None:
        check_fraction(max_accuracy_drop, "largest clean-accuracy drop")
    if len(data) < 4:
        raise SettingsError(f"{data.name}: too few images to rank and measure neurons")
    rank_set, eval_set = random_halves(data, seed)
    unguarded = []  # the stop that keeps the label's own accuracy needs images of it: said, not silent
    if max_accuracy_drop is not None and not bool((eval_set.labels == label).any()):
        unguarded.append(
            f"no clean image of label {label} among the {len(eval_set)} images pruning was measured on: its stop "
            f"before halving label {label}'s own accuracy could not run; check that accuracy on images of the "
            "label before using the pruned model"
        )
        log.warning("%s", unguarded[0])
    feat = find_feature_layer(model, layer, example=data.images[:2])
    clean = feature_activations(model, feat, rank_set.images, device=device)
    stamped = feature_activations(model, feat, reversed_trigger.apply(rank_set.images), device=device)
    ranking = top_neurons(clean, stamped, 1.0)  # every neuron, largest activation gap first
    width = feat.width

    def point(k: int) -> dict[str, float | int | None]:
        keep = torch.ones(width)
        keep[ranking[:k]] = 0.0
        with neuron_mask(feat, keep):
            m = measure(model, eval_set, suspect, device=device)
        return {"fraction": round(k / width, 6), "neurons": k, **m.to_dict()}

    curve = [point(0)]
    floor = (
        None if max_accuracy_drop is None else float(curve[0]["clean_accuracy"] or 0.0) - max_accuracy_drop
    )
    own = curve[0].get("label_accuracy")
    label_floor = None if own is None or max_accuracy_drop is None else LABEL_KEPT * float(own)
    per_step = max(1, round(step * width))
    k = 0
    stopped = "reached the largest fraction"
    while k < round(max_fraction * width):
        nxt = min(k + per_step, round(max_fraction * width))
        curve.append(point(nxt))
        if floor is not None and float(curve[-1]["clean_accuracy"] or 0.0) < floor:
            stopped = "clean-accuracy budget"  # the step that broke it is in the curve, not in the model
            break
        if label_floor is not None and float(curve[-1]["label_accuracy"] or 0.0) < label_floor:
            stopped = f"label {label}'s accuracy"  # likewise
            break
        k = nxt
        if float(curve[-1]["attack_success"] or 0.0) < stop_success:
            stopped = "attack success below threshold"
            break
    pruned = model if inplace else copy_model(model)
    target_feat = feat.in_copy(pruned)
    with torch.no_grad():
        target_feat.consumer.weight[:, ranking[:k].to(target_feat.consumer.weight.device)] = 0.0
    before = _from_point(curve[0])  # nothing masked: the model as given
    after = measure(pruned, eval_set, suspect, device=device)
    details = PruneDetails(
        layer=feat.name,
        width=width,
        pruned=[int(i) for i in ranking[:k]],
        fraction_pruned=round(k / width, 6),
        stopped=stopped,
        stop_success=stop_success,
        max_fraction=max_fraction,
        max_accuracy_drop=max_accuracy_drop,
        curve=curve,
        ranking_images=len(rank_set),
        eval_images=len(eval_set),
        seed=seed,
    )
    notes = list(unguarded)
    if stopped == "clean-accuracy budget":
        notes.append(
            f"pruning stopped at {k / width:.1%} of the layer: the next step took clean accuracy to "
            f"{pct(curve[-1]['clean_accuracy'], 1)}, more than {100 * (max_accuracy_drop or 0):g} points "
            f"below {pct(before.clean_accuracy, 1)} (the budget, --max-accuracy-drop); the reversed trigger "
            f"still succeeds {pct(after.attack_success, 1)}: raise the budget to prune further, or unlearn "
            "(--method unlearn)"
        )
    elif stopped == f"label {label}'s accuracy":
        notes.append(
            f"pruning stopped at {k / width:.1%} of the layer: the next step took the clean accuracy of label "
            f"{label} itself to {pct(curve[-1]['label_accuracy'], 1)}, less than half of "
            f"{pct(before.label_accuracy, 1)}: pruning further removes the label, not the backdoor; the "
            f"reversed trigger still succeeds {pct(after.attack_success, 1)}: unlearn instead (--method unlearn)"
        )
    elif stopped != "attack success below threshold":
        notes.append(
            f"the reversed trigger still succeeds {100 * after.attack_success:.1f}% after pruning "
            f"{max_fraction:.0%} of the layer: pruning alone does not remove this backdoor"
        )
    if before.clean_accuracy - after.clean_accuracy >= 0.02:
        notes.append(
            f"clean accuracy fell from {pct(before.clean_accuracy, 1)} to {pct(after.clean_accuracy, 1)} "
            "on the held-out half: check the repaired model on your own data before using it"
        )
    notes += label_loss_notes(label, before, after, instead="unlearn instead (--method unlearn)")
    notes += real_trigger_notes(before.real_attack_success)
    notes += few_images_notes(eval_set)
    notes += coverage_notes(
        model,
        data,
        what="clean accuracy is measured without them, and pruning can cost them more",
        device=device,
    )
    return pruned, MitigationResult("prune", label, before, after, details, notes)


def _from_point(p: dict[str, float | int | None]) -> Measure:
    real, own = p["real_attack_success"], p.get("label_accuracy")
    return Measure(
        float(p["clean_accuracy"] or 0.0),
        float(p["attack_success"] or 0.0),
        None if real is None else float(real),
        None if own is None else float(own),
    )
