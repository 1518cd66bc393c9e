"""Settings of trigger reverse engineering, with the original code's schedule as a preset."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..device import native_bf16
from ..errors import SettingsError

__all__ = ["ReverseSettings", "LossKind", "Precision"]

LossKind = Literal["ce", "original"]
Precision = Literal["auto", "fp32", "bf16"]


@dataclass(frozen=True, kw_only=True)
class ReverseSettings:
    """How each label's trigger is optimised.

    The schedule is the one of the original Neural Cleanse code (``bolunwang/backdoor``):

    * the cost λ starts at 0; after ``patience`` consecutive steps with attack success ≥
      ``attack_threshold`` it becomes ``init_cost``;
    * then ``patience`` steps at/above the threshold multiply λ by ``cost_up``, ``patience`` steps below
      divide it by ``cost_down``;
    * the best trigger is the smallest-L1 mask among steps that reached the threshold;
    * a label stops early once λ has moved both up and down and the best L1 has not improved for
      ``early_stop_patience`` steps, or after ``max_steps``.

    A *step* is ``batches_per_step`` mini-batches of ``batch_size`` images per label; attack success is
    averaged over a step. :meth:`original` reproduces the original exactly (32 × 31, one label at a
    time, 99% attack success over a step). The default keeps every rule but spends less: steps of 2 × 32
    images at an attack threshold of 98% (at most one miss in a step's 64 images), many labels in one
    forward/backward pass, bf16 arithmetic where the device has it, and screening (labels whose trigger
    is clearly large stop after a first pass; with many labels, on a floor measured on a sample).
    :meth:`exhaustive` is the full schedule in fp32 (steps of 8 × 32, 99%) that the default is measured
    against (``docs/detection.md``, which also measures the alternatives).

    Args:
        success_window: the attack success compared with ``attack_threshold`` (for the best trigger, λ
            and its start) is the mean over this many steps, the current one included.
        loss: ``"ce"`` (cross-entropy toward the label, as the peers use) or ``"original"``: the original
            code's term, Keras' ``categorical_crossentropy`` with swapped arguments, which equals
            ``16.118·(1 − p_label)``, a loss linear in the label's probability.
        parallel_labels: labels optimised together; ``None`` picks as many as fit ``max_batch`` images
            per forward pass; 1 is the sequential reference. Results do not depend on it (every label
            has its own data stream and state); only the speed does.
        seed: every label's initial mask/pattern and data order derive from ``(seed, label)``, so a label's
            result does not depend on which other labels run beside it.
        screening: spend the steps where the outlier test needs them (:mod:`~neuralcleanse.detection.
            schedule`): every label runs a first pass (``screen_steps``, or ``screen_steps_many`` from
            ``screen_sample_from`` labels on); labels whose trigger is clearly
            large then stop with their norm recorded as a bound (``stop_reason="screened"``), the others
            run the full schedule, and only as long as the outlier test's flags are the same for any
            norm of the screened labels between their bounds. ``False`` runs every label to the end.
        screen_steps: length of the first pass, in steps, with fewer than ``screen_sample_from`` labels.
        screen_steps_many: length of the first pass with at least ``screen_sample_from`` labels (whose
            floor or ranges are measured on a sample, so a short first pass suffices).
        screen_shrink: the assumed floor of a screened label's norm, as a fraction of its norm after the
            ``screen_steps`` first pass (its lower bound): 0.6 after 80 steps held for every label above
            its scan's median on the fidelity benchmark's 10-label scans (the smallest final/first-pass
            ratio was 0.63; after 40 steps it was 0.18, ``docs/detection.md``).
        screen_sample: with at least ``screen_sample_from`` labels, this many labels spread over the
            first pass's ranks run to the end before the screening decision; the smallest ratio of their
            final to their first-pass norm, times ``screen_margin``, replaces ``screen_shrink``, and
            labels below the median may be screened too, except those more than ``threshold / 2`` MADs
            below it after the first pass (a measured, statistical floor instead of an assumed one:
            what makes many labels cost less than their number). Under a verdict with an effect size
            (the default ``effect`` statistic) the sample's smallest and largest ratios, widened by
            ``screen_margin``, give every other label a range; a label stops when the effect statistic
            surely does not flag it anywhere in its range, and enters the test at its first-pass norm
            times the sample's median ratio (:func:`~neuralcleanse.detection.schedule.ranges_hold`). 0
            turns it off.
        screen_sample_from: the number of labels from which the floor is measured on a sample.
        screen_margin: the measured ratios' safety factor.
        screen_draws: with measured ranges, the final check bounds the median and MAD of the log norms
            by their smallest and largest values over this many random completions of the stopped
            labels' norms (ratios drawn from the sample's, :func:`~neuralcleanse.detection.schedule.
            drawn_spread`) instead of the worst case over every range at once; each label's own
            decision still uses its whole range. 0: the worst case (the rule before 2026-11-28).
        precision: ``"fp32"``, ``"bf16"`` (the model runs under bf16 autocast; the trigger, loss and
            optimiser stay fp32) or ``"auto"``: bf16 where the device computes it natively (a CPU with
            AVX512-BF16 or AMX, a CUDA GPU that supports it), else fp32 — resolved by :meth:`for_device`
            before a scan, and recorded resolved in its report.
        channels_last: run convolutions on channels-last images and weights (the model's weights are
            restored afterwards); faster on CPUs and tensor-core GPUs, the same numbers up to rounding.
        starts: random starts of every label whose trigger is at most ``start_ratio`` times the median
            norm after the scan: the others are run to the end too and the smallest trigger is kept
            (:mod:`~neuralcleanse.detection.starts`; the optimisation is not convex, and a planted
            trigger's label can end in a natural minimum). 1: one start, as the original.
        start_ratio: which labels get more starts (at most this fraction of the median norm).
    """

    batch_size: int = 32
    batches_per_step: int = 2
    success_window: int = 1
    max_steps: int = 1000
    lr: float = 0.1
    betas: tuple[float, float] = (0.5, 0.9)
    eps: float = 1e-7
    init_cost: float = 1e-3
    attack_threshold: float = 0.98
    patience: int = 5
    cost_up: float = 2.0
    cost_down: float = 2.0**1.5
    early_stop: bool = True
    early_stop_threshold: float = 1.0
    early_stop_patience: int = 25
    loss: LossKind = "ce"
    parallel_labels: int | None = None
    max_batch: int | None = None
    seed: int = 123
    screening: bool = True
    screen_steps: int = 80
    screen_steps_many: int = 40
    screen_shrink: float = 0.6
    screen_sample: int = 8
    screen_sample_from: int = 30
    screen_margin: float = 0.9
    screen_draws: int = 200
    precision: Precision = "auto"
    channels_last: bool = True
    starts: int = 1
    start_ratio: float = 0.6

    def __post_init__(self) -> None:
        for name in (*_POSITIVE_INTS, "seed", "screen_sample", "screen_sample_from", "screen_draws"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise SettingsError(f"{name} must be an integer, got {value!r}")
        if not 0 <= self.seed < 2**63:
            raise SettingsError(f"seed must be from 0 to 2**63-1, got {self.seed}")
        for name in _POSITIVE_INTS:
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_batch is not None and self.max_batch < 1:
            raise SettingsError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.parallel_labels is not None and self.parallel_labels < 1:
            raise SettingsError(f"parallel_labels must be at least 1, got {self.parallel_labels}")
        if not 0.0 < self.attack_threshold <= 1.0:
            raise SettingsError(f"attack_threshold must be in (0, 1], got {self.attack_threshold}")
        positive = (self.lr, self.init_cost, self.cost_up, self.cost_down, self.eps)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in positive):
            raise SettingsError("lr, eps, init_cost, cost_up and cost_down must be finite numbers")
        if self.lr <= 0 or self.init_cost <= 0 or self.cost_up <= 1 or self.cost_down <= 1:
            raise SettingsError("lr and init_cost must be positive; cost_up and cost_down greater than 1")
        if not isinstance(self.screening, bool):
            raise SettingsError(f"screening must be true or false, got {self.screening!r}")
        for name in ("screen_shrink", "screen_margin"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1):
                raise SettingsError(f"{name} must be a number in (0, 1], got {value!r}")
        if self.screen_sample < 0 or self.screen_sample_from < 3 or self.screen_draws < 0:
            raise SettingsError(
                "screen_sample and screen_draws must be at least 0 and screen_sample_from at least 3"
            )
        if self.starts > MAX_STARTS:
            raise SettingsError(f"starts must be at most {MAX_STARTS}, got {self.starts}")
        if not (
            isinstance(self.start_ratio, (int, float))
            and not isinstance(self.start_ratio, bool)
            and 0 < self.start_ratio <= 1
        ):
            raise SettingsError(f"start_ratio must be a number in (0, 1], got {self.start_ratio!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise SettingsError(f"unknown precision {self.precision!r}; use auto, fp32 or bf16")
        if not isinstance(self.channels_last, bool):
            raise SettingsError(f"channels_last must be true or false, got {self.channels_last!r}")
        if self.loss not in ("ce", "original"):
            raise SettingsError(f"unknown loss {self.loss!r}; use ce or original")

    @classmethod
    def original(cls, **overrides: Any) -> ReverseSettings:
        """The original code's schedule: one label at a time, steps of 31 mini-batches of 32, fp32,
        every label to the end."""
        base: dict[str, Any] = {**_FULL, "batches_per_step": 31, "parallel_labels": 1}
        return cls(**{**base, **overrides})

    @classmethod
    def exhaustive(cls, **overrides: Any) -> ReverseSettings:
        """Every label to the end of the full schedule in fp32, steps of 8 × 32 images, labels batched:
        the reference the default is measured against (the default before screening and bf16)."""
        return cls(**{**_FULL, **overrides})

    def for_device(self, device: torch.device | str) -> ReverseSettings:
        """These settings with ``precision="auto"`` resolved for ``device``."""
        if self.precision != "auto":
            return self
        return self.replace(precision="bf16" if native_bf16(torch.device(device)) else "fp32")

    @property
    def sequential(self) -> bool:
        return self.parallel_labels == 1

    def labels_in_parallel(self, n_labels: int, device_type: str = "cpu") -> int:
        """How many labels share a forward pass: ``max_batch`` images (default 128 on a CPU, where larger
        batches are no faster per image, 2048 on an accelerator)."""
        max_batch = self.max_batch or (128 if device_type == "cpu" else 2048)
        k = self.parallel_labels or max(1, max_batch // self.batch_size)
        return max(1, min(k, n_labels))

    def replace(self, **changes: Any) -> ReverseSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReverseSettings:
        """Settings from :meth:`to_dict`; fields of earlier versions that no longer exist are dropped,
        and fields they lacked take the values those versions ran with (fp32, no screening)."""
        known = {f.name for f in dataclasses.fields(cls)}
        d = {**_EARLIER, **{k: v for k, v in d.items() if k in known}}
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


#: the most random starts a label may get (each is a full optimisation of the candidate labels)
MAX_STARTS = 100
#: integer settings that must be at least 1
_POSITIVE_INTS = (
    "batch_size",
    "batches_per_step",
    "success_window",
    "max_steps",
    "patience",
    "early_stop_patience",
    "screen_steps",
    "screen_steps_many",
    "starts",
)
#: the full schedule without the speed-ups that change numbers
_FULL: dict[str, Any] = {
    "batches_per_step": 8,
    "attack_threshold": 0.99,
    "screening": False,
    "precision": "fp32",
    "channels_last": False,
}
#: what a settings record written before a field existed ran with
_EARLIER: dict[str, Any] = {
    "screening": False,
    "precision": "fp32",
    "channels_last": False,
    "screen_sample": 0,
    "screen_draws": 0,
}
