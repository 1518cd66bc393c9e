"""The screening scheduler: its decision rule on hand-made norms, and a screened scan end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from neuralcleanse import DetectionReport, NeuralCleanse, ReverseSettings, SettingsError
from neuralcleanse.detection.engine import LabelState, _compact_in_reach, reverse_engineer
from neuralcleanse.detection.outlier import mad_outlier_test
from neuralcleanse.detection.schedule import (
    calibration_sample,
    choose_screened,
    clearly_unflagged,
    drawn_spread,
    labels_to_resume,
    measured_shrink,
    protected,
    ranges_hold,
    verdict_holds,
)

RULE = {"shrink": 0.7, "threshold": 2.0}
#: a clear backdoor at label 0 among 9 ordinary labels and two very hard ones
CLEAR = {0: 10.0, 1: 60.0, 2: 62.0, 3: 65.0, 4: 68.0, 5: 70.0, 6: 72.0, 7: 75.0, 8: 250.0, 9: 300.0}


def _tests_agree(values: dict[int, float], screened: list[int], factor: float) -> bool:
    """Do the L1 and log tests flag the same labels, with the same verdict, when the screened labels'
    true norms are ``factor`` times their recorded upper values?"""
    labels = sorted(values)
    moved = [values[k] * (factor if k in screened else 1.0) for k in labels]
    same = True
    for statistic in ("l1", "log"):
        a = mad_outlier_test([values[k] for k in labels], statistic=statistic)  # type: ignore[arg-type]
        b = mad_outlier_test(moved, statistic=statistic)  # type: ignore[arg-type]
        same &= a.flagged == b.flagged and a.conclusive == b.conclusive
    return same


def test_far_labels_are_screened_and_the_flagged_one_never() -> None:
    screened = choose_screened(CLEAR, list(CLEAR), **RULE)
    assert screened == [8, 9]
    assert mad_outlier_test(list(CLEAR.values())).flagged == [0]


def test_flags_are_the_same_for_any_norms_inside_the_bounds() -> None:
    screened = choose_screened(CLEAR, list(CLEAR), **RULE)
    for f in (0.7, 0.8, 0.9, 1.0):
        assert _tests_agree(CLEAR, screened, f)


def test_a_label_near_the_threshold_keeps_the_median_labels_running() -> None:
    # label 0 at index 2.49: if 72 and 75 were really 50 and 52, label 0 would score 1.43, unflagged
    near = {**CLEAR, 0: 45.0}
    assert mad_outlier_test(list(near.values())).flagged == [0]
    assert not _tests_agree(near, [6, 7, 8, 9], 0.7)  # the danger the rule avoids
    assert not verdict_holds(near, [6, 7, 8, 9], **RULE)
    assert set(choose_screened(near, list(near), **RULE)).isdisjoint({6, 7})


def test_a_label_that_could_be_flagged_is_never_screened() -> None:
    assert not verdict_holds(CLEAR, [0], **RULE)  # surely flagged, but its norm is the result
    assert not verdict_holds(CLEAR, [0], shrink=1.0, threshold=2.0)


def test_screening_keeps_the_effect_size_of_a_flag() -> None:
    # label 0 at 20 is 0.29 of the median 69: flagged by the effect statistic (at most 0.3); were label 7
    # really 0.8 × 75 = 60, the median would be 66.5 and label 0 (0.30 of it) would not be flagged
    near = {**CLEAR, 0: 20.0}
    moved = {**near, 7: 60.0}
    assert mad_outlier_test(list(near.values()), statistic="effect").flagged == [0]
    assert mad_outlier_test(list(moved.values()), statistic="effect").flagged == []
    assert verdict_holds(near, [7], shrink=0.8, threshold=2.0)  # the log test alone does not care
    assert not verdict_holds(near, [7], shrink=0.8, threshold=2.0, max_ratio=0.3)
    assert verdict_holds(CLEAR, [7], shrink=0.8, threshold=2.0, max_ratio=0.3)  # 10 is far below 0.3 × 66.5


def test_labels_that_cannot_be_flagged_still_count() -> None:
    # label 0 never reached the attack threshold: it may not be flagged, and nothing has to be decided for it
    assert verdict_holds(CLEAR, [8, 9], eligible=set(CLEAR) - {0}, **RULE)


def test_few_or_nan_labels_are_never_screened() -> None:
    assert not verdict_holds({0: 1.0, 1: 500.0}, [1], **RULE)
    assert not verdict_holds({0: 1.0, 1: 2.0, 2: 3.0, 3: math.nan}, [3], **RULE)
    assert choose_screened({0: 1.0, 1: math.nan, 2: 2.0, 3: 900.0}, [1], **RULE) == []
    assert verdict_holds({0: 1.0}, [], **RULE)


def test_labels_are_resumed_when_the_final_norms_leave_the_verdict_open() -> None:
    assert 8 in choose_screened(CLEAR, list(CLEAR), **RULE)
    # the others converged to larger norms than they had: label 8's interval now straddles the median
    final = {**CLEAR, 1: 170.0, 2: 180.0, 3: 190.0, 4: 200.0, 5: 205.0, 6: 210.0, 7: 215.0}
    assert labels_to_resume(final, [8, 9], **RULE) == [8]
    assert labels_to_resume(CLEAR, [8, 9], **RULE) == []


# ---- many labels: a floor measured on a sample ----------------------------------------------------------

#: 40 labels spread around 100, one planted label far below
MANY = {k: 100.0 + 40.0 * ((k * 7) % 40 - 20) / 20 for k in range(40)} | {0: 8.0}


def test_labels_half_way_to_a_flag_are_protected() -> None:
    # median 99, MAD 1.4826 * 20 = 29.65: below 69.35 is more than one MAD under the median
    guarded = protected(MANY, list(MANY), threshold=2.0)
    assert guarded == [0, 6, 12, 23, 29] and all(MANY[k] < 69.35 < MANY[35] for k in guarded)
    assert protected(MANY, list(MANY), threshold=4.0) == [0]  # two MADs: only the planted label
    assert protected({1: 5.0, 2: 6.0}, [1, 2], threshold=2.0) == [1, 2]  # too few values: all


def test_the_calibration_sample_spreads_over_the_ranks() -> None:
    values = {k: float(k) for k in range(40)}
    assert calibration_sample(values, list(values), 4) == [5, 15, 25, 35]
    assert calibration_sample(values, [3, 9], 4) == [3, 9]


def test_the_measured_floor_is_the_smallest_ratio_with_a_margin() -> None:
    assert measured_shrink({1: 10.0, 2: 20.0}, {1: 9.0, 2: 16.0}, margin=0.9) == pytest.approx(0.72)
    assert measured_shrink({}, {}, margin=0.9) == 1e-3


def test_below_the_median_only_with_a_measured_floor() -> None:
    below = [k for k in MANY if 70.0 < MANY[k] < 100.0][:3]
    assert not verdict_holds(MANY, below, shrink=0.9, threshold=2.0)
    assert verdict_holds(MANY, below, shrink=0.9, threshold=2.0, below_median=True)
    chosen = choose_screened(MANY, list(range(1, 40)), shrink=0.9, threshold=2.0, below_median=True)
    above_only = choose_screened(MANY, list(range(1, 40)), shrink=0.9, threshold=2.0)
    assert 0 not in chosen and len(chosen) == 26 and len(above_only) <= 19
    for factor in (0.9, 1.0):
        assert _tests_agree(MANY, chosen, factor)


def test_screening_settings_are_checked() -> None:
    assert ReverseSettings().screening is True and ReverseSettings.exhaustive().screening is False
    assert ReverseSettings.original().screening is False
    bad_settings = (
        {"screen_shrink": 0.0},
        {"screen_shrink": 1.5},
        {"screen_steps": 0},
        {"screen_steps_many": 0},
        {"screen_margin": 0},
        {"screen_sample": -1},
        {"screen_sample_from": 2},
        {"success_window": 0},
    )
    for bad in bad_settings:
        with pytest.raises(SettingsError):
            ReverseSettings(**bad)
    with pytest.raises(SettingsError):
        ReverseSettings(screening="yes")  # type: ignore[arg-type]


# ---- many labels under an effect size: measured ranges --------------------------------------------------

#: the effect statistic's rule: the log test at 2, a flag at most 0.3 of the median
EFFECT = {"threshold": 2.0, "max_ratio": 0.3}


def _effect_flags(values: dict[int, float]) -> list[int]:
    labels = sorted(values)
    res = mad_outlier_test([values[k] for k in labels], names=labels, statistic="effect")
    return list(res.flagged)


def test_a_label_too_expensive_for_the_effect_size_is_cleared_whatever_its_index() -> None:
    # label 1 lies far below the bulk in log units (index above 2) but at 0.5 of the median: the log test
    # flags it, the effect statistic does not, and a range around it that stays above 0.3 clears it
    values = {k: 100.0 * (1 + 0.02 * (k % 5)) for k in range(2, 40)} | {0: 5.0, 1: 50.0}
    assert _effect_flags(values) == [0]
    labels = sorted(values)
    assert mad_outlier_test([values[k] for k in labels], names=labels, statistic="log").flagged == [0, 1]
    ranges = {k: (v, v) for k, v in values.items()} | {1: (40.0, 55.0)}
    assert clearly_unflagged(ranges, [1], **EFFECT) == [1]
    assert ranges_hold(ranges, [1], **EFFECT)
    near = ranges | {1: (25.0, 55.0)}  # its range reaches below 0.3 of the median: not cleared
    assert clearly_unflagged(near, [1], **EFFECT) == []
    assert not ranges_hold(near, [1], **EFFECT)
    # the planted label may be flagged: a range for it around the line leaves the verdict open
    assert ranges_hold(ranges | {0: (4.0, 6.0)}, [], **EFFECT)
    assert not ranges_hold(ranges | {0: (4.0, 40.0)}, [], **EFFECT)


def test_measured_ranges_keep_the_effect_flags_for_any_norms_inside_them() -> None:
    ranges = {k: (0.8 * v, 1.2 * v) for k, v in MANY.items() if k != 0} | {0: (MANY[0], MANY[0])}
    chosen = clearly_unflagged(ranges, [k for k in MANY if k != 0], **EFFECT)
    assert len(chosen) == 39 and ranges_hold(ranges, chosen, **EFFECT)
    for factor in (0.8, 1.0, 1.2):
        moved = {k: v * (factor if k in chosen else 1.0) for k, v in MANY.items()}
        assert _effect_flags(moved) == [0]
    assert not ranges_hold(ranges, [*chosen, 0], **EFFECT)  # a label that is flagged is never screened
    assert clearly_unflagged({1: (5.0, 6.0), 2: (7.0, 8.0)}, [1, 2], **EFFECT) == []  # too few labels


def test_many_stopped_labels_bound_the_median_and_mad_by_random_completions() -> None:
    # 200 labels: a planted one at 0.08 of the median, 8 run to the end, 191 stopped after a first pass at
    # about twice their final norm with ratios measured between 0.35 and 0.6 (a factor of 1.9, widened)
    rng = np.random.default_rng(0)
    final = {k: float(100 * np.exp(rng.normal(0, 0.15))) for k in range(200)} | {0: 8.0}
    ratios = [0.35, 0.4, 0.42, 0.45, 0.47, 0.5, 0.55, 0.6]
    first = {k: final[k] / float(rng.choice(ratios)) for k in final}
    stopped = [k for k in final if k not in (0, *range(1, 9))]
    ranges = {k: (v, v) for k, v in final.items()} | {
        k: (first[k] * 0.35 * 0.9, first[k] * 0.6 / 0.9) for k in stopped
    }
    points = {k: v for k, v in final.items() if k not in stopped}
    spread = drawn_spread(points, {k: first[k] for k in stopped}, ratios, margin=0.9, draws=200, seed=1)
    assert spread == drawn_spread(
        points, {k: first[k] for k in stopped}, ratios, margin=0.9, draws=200, seed=1
    )
    median_lo, median_hi, mad_lo, mad_hi = spread
    assert median_lo < math.log(100) < median_hi and median_hi - median_lo < 0.2  # narrow: many labels
    assert 0 < mad_lo < mad_hi < 0.5
    # the worst case over every range at once cannot tell whether label 0 is flagged; the completions can
    assert not ranges_hold(ranges, stopped, **EFFECT)
    assert ranges_hold(ranges, stopped, **EFFECT, spread=spread)
    # each stopped label's own range still counts in full: one reaching down to the effect line stays open
    near = ranges | {9: (20.0, first[9] * 0.6 / 0.9)}
    assert not ranges_hold(near, stopped, **EFFECT, spread=spread)
    with pytest.raises(SettingsError, match="at least one draw and one ratio, got 0 and 8"):
        drawn_spread(points, {k: first[k] for k in stopped}, ratios, margin=0.9, draws=0, seed=1)


# ---- end to end on a tiny hand-made model ----------------------------------------------------------------


def planted_model(classes: int = 8) -> nn.Module:
    """A linear 8×8 classifier: label 0 is reached by one bright corner pixel (the planted backdoor),
    the last label is much harder to reach than the others."""
    torch.manual_seed(0)
    lin = nn.Linear(64, classes)
    with torch.no_grad():
        lin.weight.normal_(0, 0.3)
        lin.bias.copy_(-torch.linspace(2, 3, classes))
        lin.bias[classes - 1] = -7.0
        lin.weight[0, 63] = 40.0
        lin.bias[0] = -30.0
    return nn.Sequential(nn.Flatten(), lin)


IMAGES = torch.rand(96, 1, 8, 8, generator=torch.Generator().manual_seed(1))
TINY = ReverseSettings.exhaustive(
    batch_size=8, batches_per_step=2, max_steps=60, patience=2, early_stop_patience=4, seed=9, screen_steps=25
)


def test_screened_labels_are_reported_with_their_bounds_and_the_planted_label_runs_in_full() -> None:
    model = planted_model()
    full = NeuralCleanse(model, settings=TINY, threshold=1.5).scan(IMAGES, samples=None)
    fast = NeuralCleanse(model, settings=TINY.replace(screening=True), threshold=1.5).scan(
        IMAGES, samples=None
    )
    assert fast.flagged == full.flagged == [0]
    assert (
        fast.screened.keys() == {7} and fast.label(7).stop_reason == "screened" and fast.label(7).steps == 25
    )
    lower, upper = fast.screened[7]
    assert lower == pytest.approx(TINY.screen_shrink * upper) and lower <= full.label(7).l1_norm <= upper
    assert any("screening: labels [7]" in n for n in fast.notes)
    for k in range(7):  # every other label ran exactly as in the full scan
        a, b = fast.label(k), full.label(k)
        assert a.stop_reason == b.stop_reason != "screened" and a.steps == b.steps
        assert a.l1_norm == pytest.approx(b.l1_norm, rel=1e-5)
    assert fast.median == pytest.approx(full.median, rel=1e-5)
    assert fast.run["images_processed"] < full.run["images_processed"]
    row = fast.label(7).to_dict()
    assert row["screened_bound"] == pytest.approx(lower, abs=1e-5)
    assert type(fast.label(7)).from_dict(row).screened_bound == pytest.approx(lower, abs=1e-5)


def test_screened_results_do_not_depend_on_the_labels_beside_them() -> None:
    model = planted_model()
    cfg = TINY.replace(screening=True)
    one = reverse_engineer(model, IMAGES, list(range(8)), cfg.replace(parallel_labels=1))
    three = reverse_engineer(model, IMAGES, list(range(8)), cfg.replace(parallel_labels=3))
    assert [s.stop_reason for s in one] == [s.stop_reason for s in three]
    for a, b in zip(one, three, strict=True):
        assert a.step == b.step and a.l1_norm() == pytest.approx(b.l1_norm(), rel=1e-5)


def many_label_model(classes: int = 30) -> nn.Module:
    """A linear 8×8 classifier with ``classes`` labels of spread difficulty, label 0 planted."""
    torch.manual_seed(0)
    lin = nn.Linear(64, classes)
    with torch.no_grad():
        lin.weight.normal_(0, 0.3)
        lin.bias.copy_(-torch.linspace(2, 6, classes)[torch.randperm(classes)])
        lin.weight[0, 63] = 40.0
        lin.bias[0] = -30.0
    return nn.Sequential(nn.Flatten(), lin)


#: long enough for the first pass (30 steps) to end before most labels converge
MANY_TINY = TINY.replace(early_stop_patience=8, max_steps=80)
MANY_FAST = MANY_TINY.replace(screening=True, screen_steps_many=30, screen_sample=4, screen_sample_from=10)


def test_many_labels_measure_their_floor_on_a_sample_and_screen_below_the_median() -> None:
    model = many_label_model()  # the paper's test as the verdict: the worst-case rule on L1 and log norms
    full = NeuralCleanse(model, settings=MANY_TINY, statistic="l1").scan(IMAGES, samples=None)
    fast = NeuralCleanse(model, settings=MANY_FAST, statistic="l1").scan(IMAGES, samples=None)
    assert fast.flagged == full.flagged and fast.verdict == full.verdict
    note = next(n for n in fast.notes if n.startswith("screening:"))
    assert "measured on labels [6, 9, 10, 21] run to the end" in note and "statistical" in note
    for k in (6, 9, 10, 21):  # the sample ran exactly as in the full scan
        assert fast.label(k).steps == full.label(k).steps and fast.label(k).stop_reason == "early_stop"
    screened = fast.screened
    assert len(screened) >= 10 and sum(full.label(k).l1_norm < full.median_l1 for k in screened) >= 5
    for k, (lower, upper) in screened.items():  # the measured floor held on this model
        assert lower <= full.label(k).l1_norm * (1 + 1e-5) and full.label(k).l1_norm <= upper * (1 + 1e-5)
    assert fast.run["images_processed"] < 0.92 * full.run["images_processed"]
    few = NeuralCleanse(model, settings=MANY_FAST.replace(screen_sample_from=31)).scan(IMAGES, samples=None)
    assert all(
        few.label(k).l1_norm > few.median_l1 for k in few.screened
    )  # under 31 labels: the assumed floor


def test_many_labels_under_an_effect_size_stop_on_measured_ranges_and_enter_the_test_at_an_estimate() -> None:
    model = many_label_model()  # the default verdict (effect): ranges measured on the sample
    full = NeuralCleanse(model, settings=MANY_TINY).scan(IMAGES, samples=None)
    fast = NeuralCleanse(model, settings=MANY_FAST).scan(IMAGES, samples=None)
    assert fast.flagged == full.flagged and 0 in full.flagged and fast.verdict == full.verdict == "backdoored"
    note = next(n for n in fast.notes if n.startswith("screening:"))
    assert "median final/first-pass ratio of labels [6, 9, 10, 21]" in note and "statistical" in note
    assert fast.estimated == sorted(fast.screened) and len(fast.screened) >= 10
    assert 0 not in fast.screened and fast.label(0).steps == full.label(0).steps
    for k, (lower, upper) in fast.screened.items():
        row = fast.label(k)
        first = float(fast.triggers[k].mask.sum())  # its trigger is the first pass's
        assert lower < row.l1_norm < upper <= first * (1 + 1e-5)  # the estimate, inside its range
        assert lower <= full.label(k).l1_norm * (1 + 1e-5) <= upper * (1 + 1e-5)  # the truth, too
        assert type(row).from_dict(row.to_dict()).screened_upper == pytest.approx(upper, abs=1e-5)
    assert "on estimated norms of" in fast.paper_test() and "estimated" not in full.paper_test()
    assert fast.run["images_processed"] < 0.92 * full.run["images_processed"]


class _Stop(Exception):
    pass


def _resumable_detector(classes: int) -> NeuralCleanse:
    if classes == 8:
        return NeuralCleanse(planted_model(), settings=TINY.replace(screening=True, parallel_labels=3))
    return NeuralCleanse(many_label_model(classes), settings=MANY_FAST.replace(parallel_labels=3))


@pytest.fixture(scope="module")
def uninterrupted() -> dict[int, DetectionReport]:
    return {}


@pytest.mark.parametrize(
    ("kill_at", "classes"),
    [(10, 8), (60, 8), (80, 8), (312, 30), (330, 30)],  # first pass, after it, candidates; sample, after it
)
def test_killed_screened_scan_resumes_to_the_same_result(
    tmp_path: Path, kill_at: int, classes: int, uninterrupted: dict[int, DetectionReport]
) -> None:
    nc = _resumable_detector(classes)
    if classes not in uninterrupted:  # one uninterrupted scan per detector, shared by its kill points
        uninterrupted[classes] = nc.scan(IMAGES, samples=None)
    reference = uninterrupted[classes]
    calls = [0]

    def kill(_p: object) -> None:
        calls[0] += 1
        if calls[0] == kill_at:
            raise _Stop

    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Stop):
        nc.scan(IMAGES, samples=None, checkpoint=ckpt, checkpoint_every=0.0, progress=kill)
    resumed = nc.scan(IMAGES, samples=None, checkpoint=ckpt, resume=True)
    assert resumed.flagged == reference.flagged and resumed.screened.keys() == reference.screened.keys()
    for a, b in zip(resumed.labels, reference.labels, strict=True):
        assert (a.steps, a.stop_reason) == (b.steps, b.stop_reason)
        assert a.l1_norm == pytest.approx(b.l1_norm, rel=1e-6)


def test_a_screened_compact_trigger_within_reach_of_the_compact_line_runs_to_the_end() -> None:
    patch = torch.zeros(8, 8)
    patch[5:8, 5:8] = 1.0
    scattered = torch.zeros(8, 8)
    scattered[::2, ::2] = 0.5

    def state(label: int, norm: float, mask: torch.Tensor, bound: float = math.nan) -> LabelState:
        z = torch.zeros(8, 8)
        s = LabelState(label, z, torch.zeros(1, 8, 8), z, z, torch.zeros(1, 8, 8), torch.zeros(1, 8, 8))
        s.best_mask, s.screened_bound = mask, bound
        s.screened_estimate = norm
        s.stop_reason = "screened" if math.isfinite(bound) else "early_stop"
        return s

    states = {k: state(k, 100.0, scattered) for k in range(3, 10)}  # the median of the test's norms: 100
    states |= {0: state(0, 60.0, patch, bound=30.0), 1: state(1, 60.0, scattered, bound=30.0)}
    states[2] = state(2, 90.0, patch, bound=60.0)
    labels = sorted(states)
    # label 0: compact, its range reaches below 0.45 x 100 / 0.9 = 50; label 1 is not compact; 2 is too dear
    assert _compact_in_reach(states, labels, [0, 1, 2], 0.45, 0.9) == [0]
    assert _compact_in_reach(states, labels, [0, 1, 2], None, 0.9) == []  # a verdict without the line
