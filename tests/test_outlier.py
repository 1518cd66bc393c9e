from __future__ import annotations

import math

import numpy as np
import pytest

from neuralcleanse import SettingsError, mad_outlier_test


def test_matches_a_hand_computation() -> None:
    norms = [2.0, 10.0, 11.0, 12.0, 13.0, 14.0, 30.0]
    r = mad_outlier_test(norms)
    med = 12.0
    mad = 1.4826 * np.median(np.abs(np.array(norms) - med))  # deviations 10,2,1,0,1,2,18 -> median 2
    assert r.median == med and r.mad == pytest.approx(mad) and r.mad == pytest.approx(2.9652)
    assert r.anomaly_index[0] == pytest.approx(10 / mad)
    # label 6 is a far bigger outlier, but above the median: never flagged
    assert r.anomaly_index[6] > r.anomaly_index[0] and r.flagged == [0]


def test_threshold_is_strict_and_configurable() -> None:
    norms = [4.0, 10.0, 11.0, 12.0, 13.0, 14.0]
    r = mad_outlier_test(norms)
    idx = r.anomaly_index[0]
    assert mad_outlier_test(norms, threshold=idx).flagged == []  # index == threshold: not flagged
    assert mad_outlier_test(norms, threshold=idx - 1e-9).flagged == [0]


def test_ineligible_labels_count_but_are_not_flagged() -> None:
    r = mad_outlier_test([1.0, 10.0, 11.0, 12.0, 13.0], eligible=[False, True, True, True, True])
    assert r.flagged == [] and r.median == 11.0 and "never reached" in r.notes[0]


def test_nan_norms_are_left_out_and_reported() -> None:
    r = mad_outlier_test([1.0, math.nan, 10.0, 11.0, 12.0, 13.0], names=[5, 6, 7, 8, 9, 10])
    assert r.used == [True, False, True, True, True, True]
    assert math.isnan(r.anomaly_index[1]) and r.median == 11.0
    assert r.flagged == [5] and "[6]" in r.notes[0]


def test_zero_mad() -> None:
    r = mad_outlier_test([3.0, 20.0, 20.0, 20.0, 20.0])
    assert r.mad == 0.0 and r.anomaly_index[0] == math.inf and r.anomaly_index[1] == 0.0
    assert r.flagged == [0] and any("MAD is 0" in n for n in r.notes)


def test_too_few_labels_is_inconclusive() -> None:
    r = mad_outlier_test([1.0, 50.0])
    assert not r.conclusive and r.flagged == [] and "at least 3" in r.notes[0]
    with pytest.raises(SettingsError):
        mad_outlier_test([1.0, 2.0, 3.0], threshold=0)


# The L1 norms a scan found on the zoo's Fashion-MNIST model with two infected labels (2 and 9).
TWO_LABELS_FMNIST = [47.04, 40.70, 5.60, 47.26, 67.66, 55.08, 35.65, 87.78, 19.26, 10.09]


def test_wide_natural_spread_leaves_the_l1_test_powerless() -> None:
    r = mad_outlier_test(TWO_LABELS_FMNIST)
    assert r.ceiling == pytest.approx(r.median / r.mad) and r.ceiling < 2
    # even the 5.6-pixel trigger, 8x smaller than the median, stays under the threshold
    assert r.flagged == [] and r.powerless and not r.conclusive
    assert any("no power" in n for n in r.notes)


def test_log_statistic_measures_how_many_times_smaller() -> None:
    r = mad_outlier_test(TWO_LABELS_FMNIST, statistic="log")
    logs = np.log(TWO_LABELS_FMNIST)
    med = float(np.median(logs))
    mad = 1.4826 * float(np.median(np.abs(logs - med)))
    assert r.median == pytest.approx(med) and r.mad == pytest.approx(mad)
    assert r.anomaly_index[2] == pytest.approx((med - logs[2]) / mad)
    assert r.flagged == [2, 9] and math.isinf(r.ceiling) and r.conclusive
    # scale-free: multiplying every norm by a constant changes nothing
    scaled = mad_outlier_test([10 * v for v in TWO_LABELS_FMNIST], statistic="log")
    assert scaled.anomaly_index == pytest.approx(r.anomaly_index)
    # a zero norm is floored, not -inf
    zero = mad_outlier_test([0.0, *TWO_LABELS_FMNIST[1:]], statistic="log")
    assert zero.flagged[0] == 0 and math.isfinite(zero.anomaly_index[0])


def test_a_well_spread_clean_set_is_conclusive_with_either_statistic() -> None:
    norms = [60.0, 70.0, 72.0, 75.0, 80.0, 66.0, 90.0, 85.0, 78.0, 69.0]
    for stat in ("l1", "log"):
        r = mad_outlier_test(norms, statistic=stat)  # type: ignore[arg-type]
        assert r.flagged == [] and r.conclusive and not r.powerless


def test_unknown_statistic() -> None:
    with pytest.raises(SettingsError, match="statistic"):
        mad_outlier_test([1.0, 2.0, 3.0], statistic="l2")  # type: ignore[arg-type]


# L1 norms measured on full Fashion-MNIST (`docs/detection.md`): two clean models of the same recipe
# (seeds 0 and 1) and a BadNets model (4x4 white square, target 0). Bag (8) is easy in every model.
FMNIST_CLEAN_S0 = [59.09, 52.62, 69.75, 63.53, 70.23, 58.55, 53.19, 79.72, 26.21, 76.26]
FMNIST_CLEAN_S1 = [38.27, 62.54, 59.6, 63.47, 56.34, 59.38, 43.85, 84.33, 33.37, 68.27]
FMNIST_BADNETS = [12.56, 53.69, 53.09, 57.84, 61.6, 63.05, 37.72, 111.93, 27.92, 86.5]


def test_relative_statistic_cancels_a_natural_shortcut() -> None:
    # the paper's test calls the clean model's Bag label a backdoor ...
    assert mad_outlier_test(FMNIST_CLEAN_S0).flagged == [8]
    # ... measured against the same label in another clean model, it is ordinary
    r = mad_outlier_test(FMNIST_CLEAN_S0, statistic="relative", reference=FMNIST_CLEAN_S1)
    ratios = np.log(np.array(FMNIST_CLEAN_S0) / np.array(FMNIST_CLEAN_S1))
    med = float(np.median(ratios))
    assert r.median == pytest.approx(med)
    assert r.mad == pytest.approx(1.4826 * float(np.median(np.abs(ratios - med))))
    assert r.flagged == [] and r.conclusive and math.isinf(r.ceiling)
    # while the planted label stands out far more than in the paper's test
    bad = mad_outlier_test(FMNIST_BADNETS, statistic="relative", reference=FMNIST_CLEAN_S1)
    assert (
        bad.flagged == [0]
        and bad.anomaly_index[0] > 5 > 2.5 > mad_outlier_test(FMNIST_BADNETS).anomaly_index[0]
    )
    assert bad.below_median[0] and not bad.below_median[7]


def test_relative_statistic_needs_matching_reference_norms() -> None:
    with pytest.raises(SettingsError, match="reference"):
        mad_outlier_test(FMNIST_CLEAN_S0, statistic="relative")
    with pytest.raises(SettingsError, match="reference"):
        mad_outlier_test(FMNIST_CLEAN_S0, reference=FMNIST_CLEAN_S1)
    with pytest.raises(SettingsError, match="9 reference norms for 10 labels"):
        mad_outlier_test(FMNIST_CLEAN_S0, statistic="relative", reference=FMNIST_CLEAN_S1[:9])
    # a label without a usable reference norm is left out, and the notes say so
    holes = [math.nan, *FMNIST_CLEAN_S1[1:-1], 0.0]
    r = mad_outlier_test(FMNIST_BADNETS, statistic="relative", reference=holes)
    assert r.used[0] is False and r.used[9] is False and math.isnan(r.anomaly_index[0])
    assert any("reference norm" in n and "[0, 9]" in n for n in r.notes)


def test_labels_left_out_are_outside_the_statistics_without_a_nan_note() -> None:
    """A scan's unreachable labels (outputs the task never uses) are left out like a NaN norm, but the
    scan says why in its own note, so the test adds none."""
    norms = [10.0, 60.0, 62.0, 65.0, 70.0, 500.0, 600.0]
    r = mad_outlier_test(norms, left_out=[False] * 5 + [True, True])
    plain = mad_outlier_test(norms[:5])
    assert r.flagged == plain.flagged == [0] and r.median == plain.median and r.mad == plain.mad
    assert math.isnan(r.anomaly_index[5]) and math.isnan(r.anomaly_index[6]) and not r.used[5]
    assert not any("finite" in n for n in r.notes)
    nan = mad_outlier_test([*norms[:5], math.nan, 600.0], left_out=[False] * 6 + [True])
    assert any(n.startswith("labels [5] have no finite L1 norm") for n in nan.notes)
    with pytest.raises(SettingsError, match="2 left-out flags for 7 labels"):
        mad_outlier_test(norms, left_out=[True, False])
