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
