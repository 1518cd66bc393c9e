"""The screening scheduler: its decision rule on hand-made norms, and a screened scan end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from neuralcleanse import NeuralCleanse, ReverseSettings, SettingsError
from neuralcleanse.detection.engine import reverse_engineer
from neuralcleanse.detection.outlier import mad_outlier_test
from neuralcleanse.detection.schedule import choose_screened, labels_to_resume, screening_holds

RULE = {"shrink": 0.8, "tolerance": 0.05}  # (the default shrink is 0.7)


def test_a_far_label_is_screened_and_a_small_one_never() -> None:
    values = {0: 10.0, 1: 60.0, 2: 62.0, 3: 65.0, 4: 70.0, 5: 72.0, 6: 300.0}
    assert choose_screened(values, list(values), **RULE) == [6]


def test_screening_leaves_median_and_mad_exact_inside_the_bounds() -> None:
    values = {0: 10.0, 1: 60.0, 2: 62.0, 3: 65.0, 4: 70.0, 5: 72.0, 6: 300.0, 7: 250.0}
    screened = choose_screened(values, list(values), **RULE)
    assert screened == [6, 7]
    full = mad_outlier_test([values[k] for k in sorted(values)])
    for f in (0.8, 0.9, 1.0):  # any true norm between the lower bound and the recorded value
        moved = [values[k] * (f if k in screened else 1.0) for k in sorted(values)]
        r = mad_outlier_test(moved)
        assert (
            r.median == full.median and r.mad == pytest.approx(full.mad) and r.flagged == full.flagged == [0]
        )


def test_a_label_whose_lower_bound_could_cross_the_median_stays() -> None:
    # 80 could shrink to 64, below the median (66): the median would move
    values = {0: 10.0, 1: 60.0, 2: 62.0, 3: 66.0, 4: 70.0, 5: 80.0}
    assert not screening_holds(values, [5], **RULE)
    assert choose_screened(values, list(values), **RULE) == []


def test_a_label_that_would_move_the_mad_stays() -> None:
    # 85 stays above the median (60) even at 68, but deviations 25 and 8 give MADs 10 and 8
    values = {0: 40.0, 1: 50.0, 2: 60.0, 3: 62.0, 4: 85.0}
    assert not screening_holds(values, [4], **RULE)
    assert screening_holds(values, [4], shrink=0.8, tolerance=0.5)  # 1.25 (L1), 1.44 (log)


def test_few_or_nan_labels_are_never_screened() -> None:
    assert not screening_holds({0: 1.0, 1: 500.0}, [1], **RULE)
    assert not screening_holds({0: 1.0, 1: 2.0, 2: 3.0, 3: math.nan}, [3], **RULE)
    assert choose_screened({0: 1.0, 1: math.nan, 2: 2.0, 3: 900.0}, [1], **RULE) == []
    assert screening_holds({0: 1.0}, [], **RULE)


def test_labels_are_resumed_when_the_median_moves_up() -> None:
    first = {0: 10.0, 1: 60.0, 2: 62.0, 3: 65.0, 4: 70.0, 5: 72.0, 6: 300.0, 7: 150.0}
    assert 7 in choose_screened(first, list(first), **RULE)
    # the candidates converged to larger norms than they had: 150 may now be needed for the MAD
    final = {**first, 1: 100.0, 2: 120.0, 3: 125.0, 4: 130.0, 5: 140.0}
    assert labels_to_resume(final, [6, 7], **RULE) == [7]
    assert labels_to_resume(first, [6], **RULE) == []


def test_screening_settings_are_checked() -> None:
    assert ReverseSettings().screening is False
    for bad in (
        {"screen_shrink": 0.0},
        {"screen_shrink": 1.5},
        {"screen_steps": 0},
        {"screen_tolerance": -1},
    ):
        with pytest.raises(SettingsError):
            ReverseSettings(**bad)
    with pytest.raises(SettingsError):
        ReverseSettings(screening="yes")  # type: ignore[arg-type]


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
TINY = ReverseSettings(
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
    assert lower == pytest.approx(0.7 * upper) and lower <= full.label(7).l1_norm <= upper
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


class _Stop(Exception):
    pass


@pytest.mark.parametrize("kill_at", [10, 60, 80])  # in the first pass, right after it, among the candidates
def test_killed_screened_scan_resumes_to_the_same_result(tmp_path: Path, kill_at: int) -> None:
    nc = NeuralCleanse(planted_model(), settings=TINY.replace(screening=True, parallel_labels=3))
    reference = nc.scan(IMAGES, samples=None)
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
