"""Reverse-engineer the smallest trigger of many labels in one forward/backward pass.

Each label ``k`` owns a mask ``m_k = tanh(w_k)/(2-ε) + 1/2`` (H×W) and a pattern
``p_k = tanh(v_k)/(2-ε) + 1/2`` (C×H×W), and its own Adam state, cost λ_k and schedule counters
(:class:`~neuralcleanse.detection.settings.ReverseSettings`). A mini-batch stacks ``K`` labels ×
``B`` images, each label with its own images, into one ``K·B`` batch; a label that stops frees its slot
for the next label in the queue.

Per label, everything random (initial mask and pattern, the order of images) derives from
``(seed, label, step)`` alone, and all state is per label, so a label's trajectory does not depend on
which labels share its batches, and a scan can be checkpointed at any step and resumed exactly.

With ``settings.screening`` every label first runs a first pass (``screen_steps``, or ``screen_steps_many``
with many labels); then the rule of
:mod:`~neuralcleanse.detection.schedule` stops the labels whose trigger is clearly large
(``stop_reason="screened"``) as far as the outlier test's flags at ``threshold`` stay the same, the
others run to the end, and the rule is checked again on their final norms (labels it no longer allows
are resumed). With many labels a sample of them runs to the end first and measures how much first-pass
norms still shrink; under a verdict with an effect size the other labels then stop on measured ranges and
enter the test at an estimate (:func:`_ranged_schedule`). Every decision is a function of the label
states only, so a resumed scan decides exactly as an uninterrupted one.

With ``settings.precision == "bf16"`` the model runs under bf16 autocast (the trigger, the stamping, the
loss and Adam stay fp32); with ``settings.channels_last`` the stamped images and the model's 4-D weights
are in channels-last layout for the duration of the call.
"""

from __future__ import annotations

import logging
import math
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DataError
from ..metrics import check_rows, model_failures
from ..modes import frozen_eval
from .memory import plan_parallel_labels
from .schedule import (
    calibration_sample,
    choose_screened,
    clearly_unflagged,
    drawn_spread,
    labels_to_resume,
    measured_shrink,
    protected,
    ranges_hold,
)
from .settings import ReverseSettings
from .shape import COMPACT_SHARE, window_share

__all__ = ["LabelState", "StepSnapshot", "reverse_engineer", "scan_mode"]

log = logging.getLogger(__name__)

_TANH_EPS = 1e-7  # Keras' K.epsilon(): keeps tanh()/(2-ε)+1/2 strictly inside (0, 1)
_ORIG_CE_FAR = -math.log(1e-7)  # the original's swapped-argument cross-entropy, see ReverseSettings.loss
_ORIG_CE_NEAR = -math.log(1 - 1e-7)


@dataclass
class LabelState:
    """Everything about one label's optimisation; tensors on the CPU."""

    label: int
    w_mask: torch.Tensor
    w_pattern: torch.Tensor
    m_mask: torch.Tensor
    v_mask: torch.Tensor
    m_pattern: torch.Tensor
    v_pattern: torch.Tensor
    adam_t: int = 0
    step: int = 0
    cost: float = 0.0
    cost_set_counter: int = 0
    up_counter: int = 0
    down_counter: int = 0
    up_flag: bool = False
    down_flag: bool = False
    best_reg: float = math.inf
    best_step: int = -1
    best_mask: torch.Tensor | None = None
    best_pattern: torch.Tensor | None = None
    best_asr: float = 0.0
    early_best: float = math.inf
    early_counter: int = 0
    last_asr: float = 0.0
    recent_asr: list[float] = field(default_factory=list)  # the last success_window steps' attack success
    last_reg: float = math.nan
    last_loss: float = math.nan
    done: bool = False
    stop_reason: str = ""
    screen_decided: bool = False  # the screening rule has looked at this label after its first pass
    screened_bound: float = math.nan  # a screened label's lower bound on its norm (its norm is the upper)
    screened_upper: float = math.nan  # with measured ranges: the upper bound assumed (else its norm)
    screened_estimate: float = math.nan  # with measured ranges: the norm the outlier test uses
    first_pass_l1: float = math.nan  # the norm after the screening first pass
    images_seen: int = 0
    history: list[list[float]] = field(default_factory=list)  # [step, cost, asr, l1, loss]
    fixed_pattern: bool = False  # only the mask is optimised; the pattern stays as it started

    # ---- derived ---------------------------------------------------------------------------------------
    @property
    def reached(self) -> bool:
        return self.best_mask is not None

    def mask(self) -> torch.Tensor:
        """The result mask: the best one, or the last one if the threshold was never reached."""
        return self.best_mask if self.best_mask is not None else _to_unit(self.w_mask)

    def pattern(self) -> torch.Tensor:
        return self.best_pattern if self.best_pattern is not None else _to_unit(self.w_pattern)

    def l1_norm(self) -> float:
        """The L1 norm of :meth:`mask` as the report measures it (NaN after a NaN stop)."""
        if self.stop_reason == "nan":
            return math.nan
        return float(self.mask().clamp(0, 1).sum())

    def test_norm(self) -> float:
        """The norm the outlier test uses: :meth:`l1_norm`, or a label screened on measured ranges'
        estimate of the norm a full run would reach."""
        return self.screened_estimate if math.isfinite(self.screened_estimate) else self.l1_norm()

    def test_range(self) -> tuple[float, float]:
        """The range the screening rule allows this label's final norm (a point once it ran to the end)."""
        if self.stop_reason != "screened":
            return self.test_norm(), self.test_norm()
        upper = self.screened_upper if math.isfinite(self.screened_upper) else self.l1_norm()
        return self.screened_bound, upper

    # ---- (de)serialisation for checkpoints --------------------------------------------------------------
    _TENSORS = ("w_mask", "w_pattern", "m_mask", "v_mask", "m_pattern", "v_pattern")  # always present
    _BEST = ("best_mask", "best_pattern")  # only once the threshold was reached

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self._TENSORS + self._BEST:
            t = getattr(self, name)
            if t is not None:
                out[name] = t.contiguous()
        return out

    def scalars(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            if name in self._TENSORS + self._BEST:
                continue
            value = getattr(self, name)
            out[name] = _encode_float(value) if isinstance(value, float) else value
        return out

    @classmethod
    def restore(cls, scalars: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LabelState:
        values: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)  # the real types, whether or not annotations are strings
        for name in cls.__dataclass_fields__:
            if name in cls._TENSORS + cls._BEST:
                values[name] = tensors.get(name)
            elif name in scalars:
                v, expected = scalars[name], hints[name]
                if expected in (int, bool, str) and type(v) is not expected:  # as JSON gives them back
                    raise TypeError(f"{name} must be {expected.__name__}, got {v!r}")
                values[name] = _decode_float(v) if expected is float else v
        return cls(**values)


def _encode_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def _decode_float(x: float | str) -> float:
    return float(x)


@dataclass(frozen=True)
class StepSnapshot:
    """Sent to the progress callback after every step of the active labels."""

    active: tuple[LabelState, ...]
    finished: tuple[LabelState, ...]
    total: int
    images: int


def _to_unit(w: torch.Tensor) -> torch.Tensor:
    return torch.tanh(w) / (2 - _TANH_EPS) + 0.5


def _from_unit(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.arctanh((x - 0.5) * (2 - _TANH_EPS))).float()


#: a fixed pattern's pixels are kept this far inside (0, 1), where tanh's inverse is finite in fp32
_PATTERN_EDGE = 1e-3


def new_label_state(
    label: int, image_shape: tuple[int, int, int], seed: int, *, pattern: torch.Tensor | None = None
) -> LabelState:
    """Random uniform initial mask and pattern (as the original), seeded by ``(seed, label)``; with
    ``pattern`` (``(C, H, W)`` in ``[0, 1]``) the pattern is that image and only the mask is optimised."""
    c, h, w = image_shape
    rng = np.random.default_rng([seed, label, 0x1A17])
    w_mask = _from_unit(rng.random((h, w)))
    w_pattern = _from_unit(rng.random((c, h, w)))
    if pattern is not None:
        if tuple(pattern.shape) != (c, h, w):
            raise DataError(f"label {label}: a fixed pattern must be {(c, h, w)}, got {tuple(pattern.shape)}")
        inside = pattern.detach().double().cpu().clamp(_PATTERN_EDGE, 1 - _PATTERN_EDGE).numpy()
        w_pattern = _from_unit(inside)
    zeros_m, zeros_p = torch.zeros(h, w), torch.zeros(c, h, w)
    state = LabelState(label, w_mask, w_pattern, zeros_m, zeros_m.clone(), zeros_p, zeros_p.clone())
    state.fixed_pattern = pattern is not None
    return state


def _step_indices(n: int, total: int, seed: int, label: int, step: int) -> torch.Tensor:
    """Indices of the images a label sees during one step: shuffled passes over the data."""
    rng = np.random.default_rng([seed, label, step])
    reps = -(-total // n)
    order = np.concatenate([rng.permutation(n) for _ in range(reps)])[:total]
    return torch.from_numpy(order)


def _misclassification(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-label mean loss; ``logits`` is (K, B, classes), ``targets`` (K,)."""
    k, b, n = logits.shape
    flat_targets = targets.repeat_interleave(b)
    if kind == "ce":
        return F.cross_entropy(logits.reshape(k * b, n), flat_targets, reduction="none").view(k, b).mean(1)
    p = logits.softmax(-1).reshape(k * b, n).gather(1, flat_targets[:, None]).view(k, b)
    return ((1 - p) * _ORIG_CE_FAR + p * _ORIG_CE_NEAR).mean(1)


def _apply_schedule(
    s: LabelState, asr: float, reg: float, cfg: ReverseSettings, mask: torch.Tensor, pattern: torch.Tensor
) -> None:
    """One step's bookkeeping, in the original code's order: best, early stop, cost. The attack success
    compared with the threshold is the mean over the last ``success_window`` steps."""
    s.step += 1
    s.last_asr, s.last_reg = asr, reg
    s.recent_asr = [*s.recent_asr, asr][-cfg.success_window :]
    asr = sum(s.recent_asr) / len(s.recent_asr)
    if asr >= cfg.attack_threshold and reg < s.best_reg:
        s.best_reg, s.best_step, s.best_asr = reg, s.step, asr
        s.best_mask, s.best_pattern = mask.clone(), pattern.clone()
    if cfg.early_stop:
        if s.best_reg < math.inf:
            if s.best_reg >= cfg.early_stop_threshold * s.early_best:
                s.early_counter += 1
            else:
                s.early_counter = 0
        s.early_best = min(s.best_reg, s.early_best)
        if s.up_flag and s.down_flag and s.early_counter >= cfg.early_stop_patience:
            s.done, s.stop_reason = True, "early_stop"
            return
    if s.cost == 0 and asr >= cfg.attack_threshold:
        s.cost_set_counter += 1
        if s.cost_set_counter >= cfg.patience:
            s.cost = cfg.init_cost
            s.up_counter = s.down_counter = 0
            s.up_flag = s.down_flag = False
    else:
        s.cost_set_counter = 0
    if asr >= cfg.attack_threshold:
        s.up_counter += 1
        s.down_counter = 0
    else:
        s.up_counter = 0
        s.down_counter += 1
    if s.up_counter >= cfg.patience:
        s.up_counter = 0
        s.cost *= cfg.cost_up
        s.up_flag = True
    elif s.down_counter >= cfg.patience:
        s.down_counter = 0
        s.cost /= cfg.cost_down
        s.down_flag = True
    if s.step >= cfg.max_steps:
        s.done, s.stop_reason = True, "max_steps"


def reverse_engineer(
    model: nn.Module,
    images: torch.Tensor,
    labels: Sequence[int],
    settings: ReverseSettings,
    *,
    device: torch.device | str = "cpu",
    resume: Sequence[LabelState] = (),
    on_step: Callable[[StepSnapshot], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    memory_limit: int | None = None,
    threshold: float = 2.0,
    max_ratio: float = 1.0,
    compact_ratio: float | None = None,
    patterns: Mapping[int, torch.Tensor] | None = None,
) -> list[LabelState]:
    """Optimise the trigger of every label in ``labels``; returns their final states in label order.

    Args:
        model: maps ``(N, C, H, W)`` images in ``[0, 1]`` to logits (any preprocessing folded in);
            used frozen and in eval mode, and both are restored afterwards.
        images: clean images ``(N, C, H, W)`` in ``[0, 1]``; their labels are not needed.
        labels: the labels to reverse-engineer.
        settings: schedule and optimiser settings.
        resume: label states from a checkpoint; finished ones are kept, unfinished ones continue.
        on_step: called after every step with the active and finished labels (for progress bars and
            checkpoints).
        on_note: receives sentences for the report (e.g. that fewer labels run in parallel to fit memory).
        memory_limit: bytes the forward/backward passes may use; default: half the memory available on
            the device. The labels run in parallel are capped so that their images fit (see
            :mod:`~neuralcleanse.detection.memory`); a model too large for it raises a one-line error.
        threshold: the outlier test's anomaly threshold, whose flags screening keeps.
        max_ratio: the test's effect size (a flagged label's norm at most this fraction of the median;
            1: none), which screening keeps too.
        compact_ratio: the effect size for a label whose trigger is compact (:mod:`.shape`), if the
            test has one: with many labels, a screened label whose first-pass trigger is compact and
            whose range reaches below it runs to the end.
        patterns: fixed patterns (``(C, H, W)`` in ``[0, 1]``) of some labels: only their masks are
            optimised (:mod:`.natural`).
    """
    if images.ndim != 4 or len(images) == 0:
        raise DataError(f"reverse engineering needs (N, C, H, W) images, got shape {tuple(images.shape)}")
    device = torch.device(device)
    cfg = settings.for_device(device)
    shape = (int(images.shape[1]), int(images.shape[2]), int(images.shape[3]))
    n = len(images)
    data = images.to(device)
    per_step = cfg.batch_size * cfg.batches_per_step
    known = {s.label: s for s in resume}
    fixed = patterns or {}
    states = {
        lab: known.get(lab) or new_label_state(lab, shape, cfg.seed, pattern=fixed.get(lab)) for lab in labels
    }
    pending = [lab for lab in labels if not states[lab].done]
    requested = cfg.labels_in_parallel(len(pending), device.type)
    images_done = [sum(s.images_seen for s in states.values())]

    b1, b2 = cfg.betas

    def snapshot() -> None:
        if on_step is None:
            return
        started = [s for s in states.values() if not s.done and s.step > 0]
        on_step(
            StepSnapshot(
                active=tuple(sorted(started, key=lambda s: labels.index(s.label))),
                finished=tuple(s for s in states.values() if s.done),
                total=len(labels),
                images=images_done[0],
            )
        )

    def run(todo: list[int], limit: int | None) -> None:
        """Optimise the labels ``todo`` until they stop (or reach step ``limit``)."""
        queue = [lab for lab in todo if not states[lab].done and (limit is None or states[lab].step < limit)]
        # Started labels first, in label order: exactly the slots a checkpoint interrupted.
        queue.sort(key=lambda lab: (states[lab].step == 0, labels.index(lab)))
        active: list[LabelState] = []
        while queue or active:
            while queue and len(active) < k_max:
                active.append(states[queue.pop(0)])
            _one_step(active)
            images_done[0] += len(active) * per_step
            active = [s for s in active if not s.done and (limit is None or s.step < limit)]
            snapshot()

    def _one_step(active: list[LabelState]) -> None:
        k = len(active)
        targets = torch.tensor([s.label for s in active], device=device)
        w_m = torch.stack([s.w_mask for s in active]).to(device).requires_grad_(True)
        w_p = torch.stack([s.w_pattern for s in active]).to(device).requires_grad_(True)
        m_m = torch.stack([s.m_mask for s in active]).to(device)
        v_m = torch.stack([s.v_mask for s in active]).to(device)
        m_p = torch.stack([s.m_pattern for s in active]).to(device)
        v_p = torch.stack([s.v_pattern for s in active]).to(device)
        t = torch.tensor([float(s.adam_t) for s in active], device=device)
        cost = torch.tensor([s.cost for s in active], device=device)
        idx = torch.stack([_step_indices(n, per_step, cfg.seed, s.label, s.step) for s in active]).to(device)
        sums = torch.zeros(3, k, device=device)  # asr, l1, loss
        learn_pattern = None
        if any(s.fixed_pattern for s in active):
            learn = [0.0 if s.fixed_pattern else 1.0 for s in active]
            learn_pattern = torch.tensor(learn, device=device).view(k, 1, 1, 1)
        for j in range(cfg.batches_per_step):
            x = data[idx[:, j * cfg.batch_size : (j + 1) * cfg.batch_size]]  # K, B, C, H, W
            mask = _to_unit(w_m)
            pattern = _to_unit(w_p)
            m5 = mask[:, None, None]
            stamped = ((1 - m5) * x + m5 * pattern[:, None]).reshape(-1, *shape)
            if cfg.channels_last:
                stamped = stamped.contiguous(memory_format=torch.channels_last)
            with autocast(), model_failures(stamped):
                logits = model(stamped)
            check_rows(logits, len(stamped))
            logits = logits.float().reshape(k, x.shape[1], -1)
            mis = _misclassification(logits, targets, cfg.loss)
            reg = mask.abs().sum((1, 2))
            loss = mis + cost * reg
            g_m, g_p = torch.autograd.grad(loss.sum(), [w_m, w_p])
            with torch.no_grad():
                if learn_pattern is not None:  # fixed patterns: no gradient, so Adam never moves them
                    g_p.mul_(learn_pattern)
                t += 1
                # Keras' Adam (the original's optimiser): lr_t = lr·√(1-β2^t)/(1-β1^t), ε added to √v
                lr_t = cfg.lr * torch.sqrt(1 - b2**t) / (1 - b1**t)
                m_m.mul_(b1).add_(g_m, alpha=1 - b1)
                v_m.mul_(b2).addcmul_(g_m, g_m, value=1 - b2)
                m_p.mul_(b1).add_(g_p, alpha=1 - b1)
                v_p.mul_(b2).addcmul_(g_p, g_p, value=1 - b2)
                w_m.sub_(lr_t[:, None, None] * m_m / (v_m.sqrt() + cfg.eps))
                w_p.sub_(lr_t[:, None, None, None] * m_p / (v_p.sqrt() + cfg.eps))
                hit = (logits.argmax(-1) == targets[:, None]).float().mean(1)
                sums += torch.stack([hit, reg, loss])
        with torch.no_grad():
            means = (sums / cfg.batches_per_step).cpu()
            final_mask, final_pattern = _to_unit(w_m).cpu(), _to_unit(w_p).cpu()
        for i, s in enumerate(active):
            s.w_mask, s.w_pattern = w_m[i].detach().cpu(), w_p[i].detach().cpu()
            s.m_mask, s.v_mask = m_m[i].cpu(), v_m[i].cpu()
            s.m_pattern, s.v_pattern = m_p[i].cpu(), v_p[i].cpu()
            s.adam_t = int(t[i])
            s.images_seen += per_step
            asr, reg_i, loss_i = (float(v) for v in means[:, i])
            s.last_loss = loss_i
            if not all(math.isfinite(v) for v in (asr, reg_i, loss_i)) or not torch.isfinite(s.w_mask).all():
                s.done, s.stop_reason = True, "nan"
                s.step += 1
                log.warning("label %d: optimisation produced NaN/inf at step %d; stopped", s.label, s.step)
            else:
                _apply_schedule(s, asr, reg_i, cfg, final_mask[i], final_pattern[i])
                s.history.append([s.step, s.cost, round(asr, 5), round(reg_i, 4), round(loss_i, 5)])
            if s.done:
                log.info(
                    "label %d: %s after %d steps, best L1 %.3f", s.label, s.stop_reason, s.step, s.best_reg
                )

    def autocast() -> AbstractContextManager[object]:
        return _precision(cfg, device)

    with frozen_eval(model):
        k_max = requested
        if pending:
            plan = plan_parallel_labels(
                model, shape, requested=requested, batch_size=cfg.batch_size, n_images=n, device=device,
                memory_limit=memory_limit,
            )  # fmt: skip
            k_max = plan.labels
            if plan.note is not None:
                log.info("%s", plan.note)
                if on_note is not None:
                    on_note(plan.note)
        with _memory_format(model, channels_last=cfg.channels_last and bool(pending)):
            if not cfg.screening:
                run(list(labels), None)
            else:
                test = (threshold, max_ratio, compact_ratio)
                _screened_schedule(states, list(labels), cfg, test, run, on_note)
    return [states[lab] for lab in labels]


@contextmanager
def scan_mode(model: nn.Module, cfg: ReverseSettings, device: torch.device) -> Iterator[None]:
    """Run ``model`` for inference as the scan ran it: no gradients, bf16 autocast with
    ``cfg.precision == "bf16"``, channels-last weights with ``cfg.channels_last`` (restored after)."""
    with torch.no_grad(), _precision(cfg, device), _memory_format(model, channels_last=cfg.channels_last):
        yield


def _precision(cfg: ReverseSettings, device: torch.device) -> AbstractContextManager[object]:
    """bf16 autocast on ``device`` when ``cfg.precision`` is ``"bf16"``, else nothing."""
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def _memory_format(model: nn.Module, *, channels_last: bool) -> Iterator[None]:
    """Hold the model's 4-D weights in channels-last layout for the duration (restored afterwards)."""
    swapped: list[tuple[torch.Tensor, torch.Tensor]] = []
    if channels_last:
        for t in [*model.parameters(), *model.buffers()]:
            if t.ndim == 4 and not t.is_contiguous(memory_format=torch.channels_last):
                swapped.append((t, t.data))
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for t, original in swapped:
            t.data = original


def _screened_schedule(
    states: dict[int, LabelState],
    labels: list[int],
    cfg: ReverseSettings,
    test: tuple[float, float, float | None],
    run: Callable[[list[int], int | None], None],
    on_note: Callable[[str], None] | None,
) -> None:
    """First pass, (with many labels) a sample to the end, the screening decision, the candidates to the
    end, then the check on final norms. Every decision is a function of the labels' states, so a resumed
    scan takes the same ones. ``test`` is the outlier test's threshold, ``max_ratio`` and
    ``compact_ratio``."""
    threshold, max_ratio, _ = test
    # many labels: a sample measures how much the others still shrink, so a short first pass suffices;
    # otherwise the first pass is long enough for the assumed floor screen_shrink
    many = cfg.screen_sample > 0 and len(labels) >= cfg.screen_sample_from
    first_steps = cfg.screen_steps_many if many else cfg.screen_steps
    run(labels, first_steps)
    for k in labels:
        if math.isnan(states[k].first_pass_l1):
            states[k].first_pass_l1 = states[k].l1_norm()
    reached = {k for k in labels if states[k].reached}
    first = {k: states[k].first_pass_l1 for k in labels}
    sample: list[int] = []
    guard: list[int] = []
    shrink, below_median = cfg.screen_shrink, False
    if many:
        guard = protected(first, sorted(reached), threshold=threshold)
        pool = [k for k in labels if k in reached and k not in guard]
        sample = calibration_sample(first, pool, cfg.screen_sample)
        run(sample, None)
        if max_ratio < 1:
            _ranged_schedule(states, labels, (guard, sample), cfg, test, run, on_note)
            return
        final = {k: states[k].l1_norm() for k in sample if states[k].stop_reason != "nan"}
        shrink = measured_shrink({k: first[k] for k in final}, final, margin=cfg.screen_margin)
        below_median = True
    undecided = [k for k in labels if not states[k].done and not states[k].screen_decided]
    if undecided:
        values = {k: states[k].l1_norm() for k in labels}
        candidates = [k for k in undecided if k in reached and k not in guard]
        chosen = choose_screened(
            values,
            candidates,
            eligible=reached,
            shrink=shrink,
            threshold=threshold,
            below_median=below_median,
            max_ratio=max_ratio,
        )
        for k in chosen:
            _screen(states[k], shrink)
        for k in undecided:
            states[k].screen_decided = True
    while True:
        run(labels, None)
        values = {k: states[k].l1_norm() for k in labels}
        screened = [k for k in labels if states[k].stop_reason == "screened"]
        reached = {k for k in labels if states[k].reached}
        again = labels_to_resume(
            values,
            screened,
            eligible=reached,
            shrink=shrink,
            threshold=threshold,
            below_median=below_median,
            max_ratio=max_ratio,
        )
        if not again:
            break
        log.info("labels %s resumed: the screening rule no longer holds on the final norms", again)
        for k in again:
            s = states[k]
            s.done, s.stop_reason, s.screened_bound = False, "", math.nan
    screened = [k for k in labels if states[k].stop_reason == "screened"]
    if screened and on_note is not None:
        on_note(_screening_note(states, screened, cfg, test, sample, (shrink, first_steps)))


def _ranged_schedule(
    states: dict[int, LabelState],
    labels: list[int],
    set_apart: tuple[list[int], list[int]],
    cfg: ReverseSettings,
    test: tuple[float, float, float | None],
    run: Callable[[list[int], int | None], None],
    on_note: Callable[[str], None] | None,
) -> None:
    """Screening of many labels for a verdict with an effect size (:func:`~neuralcleanse.detection.
    schedule.ranges_hold`), once the calibration sample has run to the end (``set_apart``: the protected
    labels and the sample): every other label stops when its range (first-pass norm times the sample's
    smallest and largest final/first-pass ratios, widened by ``screen_margin``) makes it surely
    unflagged, and enters the test at its estimate (times the sample's median ratio). The others run to
    the end; then the rule is checked on every range and labels it no longer allows are resumed, and so
    are labels whose first-pass trigger is compact and whose range reaches below ``compact_ratio`` of
    the median (the verdict's line for compact triggers, :func:`_compact_in_reach`)."""
    threshold, max_ratio, compact_ratio = test
    guard, sample = set_apart
    reached = {k for k in labels if states[k].reached}
    first = {k: states[k].first_pass_l1 for k in labels}
    ratios = [
        states[k].l1_norm() / first[k] for k in sample if states[k].stop_reason != "nan" and first[k] > 0
    ]
    undecided = [k for k in labels if not states[k].done and not states[k].screen_decided]
    if undecided and ratios:
        low = min(ratios) * cfg.screen_margin
        high = min(1.0, max(ratios) / cfg.screen_margin)
        middle = float(np.median(ratios))
        candidates = [k for k in undecided if k in reached and k not in guard]
        ranges = {k: states[k].test_range() for k in labels}
        ranges |= {k: (first[k] * low, first[k] * high) for k in candidates}
        for k in clearly_unflagged(ranges, candidates, threshold=threshold, max_ratio=max_ratio):
            s = states[k]
            s.done, s.stop_reason = True, "screened"
            s.screened_bound, s.screened_upper = ranges[k]
            s.screened_estimate = first[k] * middle
            log.info("label %d: screened after %d steps, L1 %.3f", k, s.step, s.l1_norm())
        for k in undecided:
            states[k].screen_decided = True
    while True:
        run(labels, None)
        screened = sorted(
            (k for k in labels if states[k].stop_reason == "screened"), key=lambda k: -states[k].test_norm()
        )
        eligible = {k for k in labels if states[k].reached}
        ranges = {k: states[k].test_range() for k in labels}
        again: list[int] = []
        while screened and not ranges_hold(
            ranges,
            screened,
            threshold=threshold,
            max_ratio=max_ratio,
            eligible=eligible,
            spread=_drawn(states, labels, screened, first, ratios, cfg),
        ):
            again.append(k := screened.pop())  # it runs to the end: until then, a point at its estimate
            ranges[k] = (states[k].test_norm(), states[k].test_norm())
        again += _compact_in_reach(states, labels, screened, compact_ratio, cfg.screen_margin)
        if not again:
            break
        log.info("labels %s resumed: the screening rule no longer holds on the final norms", sorted(again))
        for k in again:
            s = states[k]
            s.done, s.stop_reason = False, ""
            s.screened_bound = s.screened_upper = s.screened_estimate = math.nan
    screened = [k for k in labels if states[k].stop_reason == "screened"]
    if screened and on_note is not None:
        on_note(_ranges_note(states, screened, cfg, max_ratio, sample))


def _compact_in_reach(
    states: dict[int, LabelState],
    labels: list[int],
    screened: list[int],
    compact_ratio: float | None,
    margin: float,
) -> list[int]:
    """The ``screened`` labels whose first-pass trigger is compact (:mod:`.shape`) and whose range's low
    end lies below ``compact_ratio`` of the median of the test's norms widened by ``margin``: a full run
    could end where the verdict flags a compact trigger, so they run to the end."""
    if compact_ratio is None or not screened:
        return []
    norms = [states[k].test_norm() for k in labels if math.isfinite(states[k].test_norm())]
    line = compact_ratio * float(np.median(norms)) / margin
    return [
        k
        for k in screened
        if states[k].screened_bound < line and window_share(states[k].mask()) >= COMPACT_SHARE
    ]


def _drawn(
    states: dict[int, LabelState],
    labels: list[int],
    screened: list[int],
    first: dict[int, float],
    ratios: list[float],
    cfg: ReverseSettings,
) -> tuple[float, float, float, float] | None:
    """The median's and MAD's bounds over ``cfg.screen_draws`` random completions of the ``screened``
    labels' norms (:func:`~neuralcleanse.detection.schedule.drawn_spread`), or None for the worst case."""
    if not cfg.screen_draws or not ratios:
        return None
    stopped = set(screened)
    return drawn_spread(
        {k: states[k].test_norm() for k in labels if k not in stopped},
        {k: first[k] for k in screened},
        ratios,
        margin=cfg.screen_margin,
        draws=cfg.screen_draws,
        seed=cfg.seed,
    )


def _ranges_note(
    states: dict[int, LabelState],
    screened: list[int],
    cfg: ReverseSettings,
    max_ratio: float,
    sample: list[int],
) -> str:
    bounds = ", ".join(
        f"{k}: {states[k].screened_estimate:.1f} ({states[k].screened_bound:.1f}-{states[k].screened_upper:.1f})"
        for k in screened
    )
    aggregate = (
        f", with the median and MAD of the log norms anywhere in their range over {cfg.screen_draws} random "
        "completions of the stopped labels' norms (ratios drawn from the sample's)"
        if cfg.screen_draws
        else ""
    )
    return (
        f"screening: labels {screened} stopped after {cfg.screen_steps_many} steps; each enters the test at an "
        f"estimate of its final norm (first-pass norm times the median final/first-pass ratio of labels "
        f"{sample}, run to the end) and is assumed to lie in a range (their smallest and largest ratios, "
        f"widened by {cfg.screen_margin:g}): {bounds}. The effect statistic (effect size {max_ratio:g}) flags "
        f"the same labels for any norms in those ranges{aggregate}: a statistical bound. The paper's test "
        "beside runs on the estimates; a full scan (--exhaustive) gives its exact flags"
    )


def _screening_note(
    states: dict[int, LabelState],
    screened: list[int],
    cfg: ReverseSettings,
    test: tuple[float, float, float | None],
    sample: list[int],
    floor_after: tuple[float, int],
) -> str:
    threshold, max_ratio, _ = test
    shrink, steps = floor_after
    effect = f", a flag's effect size of {max_ratio:g} of the median" if max_ratio < 1 else ""
    bounds = ", ".join(f"{k}: {states[k].screened_bound:.1f}-{states[k].l1_norm():.1f}" for k in screened)
    floor = (
        f"a floor of {shrink:.2f} of the first-pass norm, measured on labels {sample} run to the end "
        f"(their smallest final/first-pass ratio times {cfg.screen_margin:g}): a statistical bound"
        if sample
        else f"an assumed floor of {shrink:g} of the first-pass norm"
    )
    return (
        f"screening: labels {screened} stopped after {steps} steps with norms assumed to lie in "
        f"({bounds}), {floor}; the outlier test flags the same labels (threshold {threshold:g}, L1 and log "
        f"statistics{effect}) for any norms in those ranges; their upper values are used in the test"
    )


def _screen(s: LabelState, shrink: float) -> None:
    s.done, s.stop_reason = True, "screened"
    s.screened_bound = shrink * s.l1_norm()
    log.info("label %d: screened after %d steps, L1 %.3f", s.label, s.step, s.l1_norm())
