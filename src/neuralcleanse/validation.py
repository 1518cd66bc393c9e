"""Is the reversed trigger the real backdoor? (Wang et al. 2019, §VI-A)

For a flagged label this compares the reverse-engineered trigger with the real one, when the model card
knows it:

* attack success of each on clean images of other labels, and their L1 norms;
* where they sit: intersection over union of the reversed mask's support (its largest values, as many
  pixels as the real trigger has) with the real trigger's region, and the share of the reversed mask's
  mass inside the real region;
* what they do inside the network: the top 1% neurons of the second-to-last layer, ranked by how much the
  reversed trigger raises them over clean inputs; their mean activation on clean, real-trigger and
  reversed-trigger inputs; and the attack success when only those neurons are kept (the others are held
  at their clean mean), which shows that they carry the backdoor.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._format import pct
from ._io import atomic_directory, atomic_write_json, read_result
from .data.dataset import ImageDataset
from .errors import DataError
from .features import (
    MIN_TOP_NEURONS,
    FeatureLayer,
    feature_activations,
    find_feature_layer,
    neuron_mask,
    top_neurons,
)  # fmt: skip
from .metrics import attack_victims, predict, stamped_success
from .mitigation.result import real_trigger_notes
from .suspect import SuspectedBackdoor, as_network
from .triggers import Trigger

if TYPE_CHECKING:
    from .models.loading import LoadedModel

__all__ = ["ValidationResult", "validate_trigger", "top_neurons", "VALIDATION_FILE"]

VALIDATION_FILE = "validation.json"


@dataclass(frozen=True)
class ValidationResult:
    """Reversed vs real trigger for one label (``real_*`` fields are ``None`` without a real trigger)."""

    label: int
    layer: str
    neurons: list[int]
    reversed_l1: float
    reversed_attack_success: float
    clean_activation: float
    reversed_activation: float
    reversed_success_top_only: float
    #: the baseline of ``*_success_top_only``: clean images, unstamped, with only the top neurons kept
    clean_success_top_only: float | None = None
    #: the baseline of the attack success: the same images, unstamped, that the model already puts in the label
    clean_to_label: float | None = None
    real_l1: float | None = None
    real_attack_success: float | None = None
    real_activation: float | None = None
    real_success_top_only: float | None = None
    mask_iou: float | None = None
    mass_inside_real: float | None = None
    shared_top_neurons: float | None = None
    images: int = 0
    notes: list[str] = field(default_factory=list)
    #: the fingerprint of the model validated (its scan report's ``model.fingerprint``), when known
    model_fingerprint: str | None = None

    def rows(self) -> list[tuple[str, str, str]]:
        """``(what, reversed, real)`` cells of the comparison table (``-`` where the real trigger is unknown)."""
        return [
            ("L1 norm", _num(self.reversed_l1, 1), _num(self.real_l1, 1)),
            (
                "attack success"
                + (
                    "" if self.clean_to_label is None else f" (without a trigger: {pct(self.clean_to_label)})"
                ),
                pct(self.reversed_attack_success),
                pct(self.real_attack_success),
            ),  # fmt: skip
            (
                f"mean activation of the top {len(self.neurons)} neurons (clean: {self.clean_activation:.2f})",
                _num(self.reversed_activation, 2),
                _num(self.real_activation, 2),
            ),
            (
                f"attack success with only those neurons (clean images: {pct(self.clean_success_top_only)})",
                pct(self.reversed_success_top_only),
                pct(self.real_success_top_only),
            ),
        ]

    def lines(self) -> list[str]:
        """How the reversed trigger's mask and neurons match the real trigger's (empty without one)."""
        if self.shared_top_neurons is None:
            return []
        neurons = f"{pct(self.shared_top_neurons)} of the top neurons are the same for both triggers"
        if self.mask_iou is None:  # a whole-image real trigger
            return [neurons]
        return [
            f"mask IoU with the real trigger {self.mask_iou:.2f}; {pct(self.mass_inside_real)} of the reversed "
            f"mask lies inside it; {neurons}"
        ]

    def to_dict(self) -> dict[str, Any]:
        """The fields, floats rounded; NaN/inf (JSON has none) become ``null``."""
        return {
            k: ((round(v, 6) if math.isfinite(v) else None) if isinstance(v, float) else v)
            for k, v in asdict(self).items()
        }

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        reversed_trigger: Trigger | None = None,
        real_trigger: Trigger | None = None,
        example: torch.Tensor | None = None,
        force: bool = False,
    ) -> Path:
        """Write ``validation.json`` and, given the triggers, ``comparison.png`` (side by side)."""
        with atomic_directory(path, force=force) as tmp:
            atomic_write_json(tmp / VALIDATION_FILE, self.to_dict())
            if reversed_trigger is not None:
                from .report.figures import trigger_comparison

                rows = [(f"reversed: L1 {self.reversed_l1:.1f}, success {pct(self.reversed_attack_success)}",
                         _panels(reversed_trigger, example))]  # fmt: skip
                if real_trigger is not None:
                    rows.insert(0, (f"real: L1 {_num(self.real_l1, 1)}, success {pct(self.real_attack_success)}",
                                    _panels(real_trigger, example)))  # fmt: skip
                (tmp / "comparison.png").write_bytes(trigger_comparison(rows, label=self.label))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ValidationResult:
        required_floats = {"reversed_l1", "reversed_attack_success", "clean_activation", "reversed_activation",
                           "reversed_success_top_only"}  # fmt: skip
        file, d = read_result(path, VALIDATION_FILE, what="validation result")
        try:
            if not isinstance(d, dict):
                raise ValueError("expected a JSON object")
            fields: dict[str, Any] = {
                k: (math.nan if k in required_floats and v is None else v) for k, v in d.items()
            }
            return cls(**fields)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{file}: cannot read validation result ({exc})") from None


def _panels(trigger: Trigger, example: torch.Tensor | None) -> list[torch.Tensor]:
    """The trigger's mask, mask × pattern and, given an image, that image stamped."""
    panels = [trigger.mask[None].expand_as(trigger.pattern), trigger.mask[None] * trigger.pattern]
    return panels + ([trigger.apply(example)] if example is not None else [])


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _success_top_only(
    model: nn.Module,
    layer: FeatureLayer,
    keep: torch.Tensor,
    clean_mean: torch.Tensor,
    stamped: torch.Tensor,
    label: int,
    device: torch.device | str,
) -> float:
    """Attack success when every feature neuron outside ``keep`` is held at its clean mean."""
    mask = torch.zeros(layer.width)
    mask[keep] = 1.0
    with neuron_mask(layer, mask, fill=clean_mean):
        return float((predict(model, stamped, device=device) == label).float().mean())


def _iou(reversed_mask: torch.Tensor, real_region: torch.Tensor) -> tuple[float, float]:
    k = int(real_region.sum())
    if k == 0:
        return math.nan, math.nan
    support = torch.zeros_like(real_region)
    support.view(-1)[torch.argsort(reversed_mask.flatten(), descending=True)[:k]] = True
    inter = float((support & real_region).sum())
    union = float((support | real_region).sum())
    mass = float(reversed_mask[real_region].sum() / reversed_mask.sum().clamp_min(1e-12))
    return inter / union, mass


def validate_trigger(
    model: nn.Module | LoadedModel,
    backdoor: SuspectedBackdoor | Trigger,
    data: ImageDataset,
    *,
    label: int | None = None,
    real_trigger: Trigger | None = None,
    source_labels: Sequence[int] | None = None,
    layer: str | None = None,
    top_fraction: float = 0.01,
    samples: int | None = 1000,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ValidationResult:
    """Compare a reversed trigger with the real one (if known) on clean images of other labels.

    ``backdoor``: a :class:`SuspectedBackdoor`, or its reversed trigger with the other fields as keywords.
    """
    model = as_network(model, "nc.validate_trigger")
    suspect = SuspectedBackdoor.of(backdoor, label, real_trigger, source_labels)
    data, device = suspect.work(data, device)
    label, reversed_trigger, real_trigger = suspect.label, suspect.reversed_trigger, suspect.real_trigger
    sources = suspect.sources
    feat = find_feature_layer(model, layer, example=data.images[:2])
    victims_ds = attack_victims(data, target=label, source_labels=sources)
    if len(victims_ds) == 0:
        raise DataError(f"no images outside label {label} to validate on")
    if samples is not None and len(victims_ds) > samples:
        victims_ds = victims_ds.sample(samples, seed=seed)
    x = victims_ds.images
    clean = feature_activations(model, feat, x, device=device)
    stamped_rev = reversed_trigger.apply(x)
    rev = feature_activations(model, feat, stamped_rev, device=device)
    top = top_neurons(clean, rev, top_fraction)
    clean_mean = clean.mean(0)
    result: dict[str, Any] = {
        "label": label,
        "layer": feat.name,
        "neurons": [int(i) for i in top],
        "reversed_l1": reversed_trigger.l1_norm,
        "reversed_attack_success": stamped_success(model, reversed_trigger, x, target=label, device=device),
        "clean_activation": float(clean[:, top].mean()),
        "reversed_activation": float(rev[:, top].mean()),
        "reversed_success_top_only": _success_top_only(
            model, feat, top, clean_mean, stamped_rev, label, device
        ),
        "clean_success_top_only": _success_top_only(model, feat, top, clean_mean, x, label, device),
        "clean_to_label": float(
            (predict(model, x, device=device, what="the clean images") == label).float().mean()
        ),
        "images": len(x),
    }
    share = (
        f"{top_fraction:.0%}"
        if len(top) == max(1, round(top_fraction * feat.width))
        else (
            f"{top_fraction:.0%} would be {max(1, round(top_fraction * feat.width))}; at least {MIN_TOP_NEURONS}"
        )
    )
    notes = [f"top {len(top)} of {feat.width} neurons ({share}) of layer {feat.name!r}"]
    if result["clean_success_top_only"] > 0.5:
        notes.append(
            f"with only the top neurons kept, {pct(result['clean_success_top_only'])} of the clean images already "
            f"go to label {label}: the 'only those neurons' figures do not show that these neurons carry the "
            "backdoor (try a larger --top / top_fraction)"
        )
    if real_trigger is not None:
        stamped_real = real_trigger.apply(x)
        real = feature_activations(model, feat, stamped_real, device=device)
        real_top = top_neurons(clean, real, top_fraction)
        iou: float | None
        mass: float | None
        touched = float(real_trigger.region.float().mean())
        if touched > 0.5:  # a blend: any mask lies "inside" it
            iou = mass = None
            notes.append(
                f"the real trigger touches {touched:.0%} of the image: where the masks lie says nothing, so no "
                "mask IoU is given"
            )
        else:
            iou, mass = _iou(reversed_trigger.mask, real_trigger.region)
        result.update(
            real_l1=real_trigger.l1_norm,
            real_attack_success=stamped_success(model, real_trigger, x, target=label, device=device),
            real_activation=float(real[:, top].mean()),
            real_success_top_only=_success_top_only(
                model, feat, top, clean_mean, stamped_real, label, device
            ),
            mask_iou=iou,
            mass_inside_real=mass,
            shared_top_neurons=len(set(top.tolist()) & set(real_top.tolist())) / len(top),
        )
        notes += real_trigger_notes(result["real_attack_success"])
    else:
        notes.append("no real trigger known: only the reversed trigger is measured")
    return ValidationResult(**result, notes=notes)
