from __future__ import annotations

import math

import numpy as np
import pytest

from ml import metrics
from ml.metrics import (
    bootstrap_auc_ci,
    brier,
    choose_threshold,
    confusion,
    expected_calibration_error,
    reliability_bins,
    roc_auc,
    roc_curve,
    sensitivity_at_specificity,
    sensitivity_specificity,
    specificity_at_sensitivity,
)


def test_it_computes_auc_with_ties_counting_half():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_it_counts_a_score_equal_to_the_threshold_as_positive():
    y = [1, 1, 1, 1, 0, 0]
    p = [0.9, 0.6, 0.5, 0.2, 0.5, 0.1]
    assert sensitivity_specificity(y, p, 0.5) == (0.75, 0.5)
    assert sensitivity_specificity(y, p, 0.0) == (1.0, 0.0)


def test_it_chooses_the_highest_threshold_that_keeps_the_sensitivity():
    positives = [i / 20 for i in range(1, 21)]  # 20 positives: 0.05 .. 1.0
    negatives = [0.01, 0.02, 0.3, 0.6]
    y = [1] * 20 + [0] * 4
    t = choose_threshold(y, positives + negatives, min_sensitivity=0.95)
    # 19 of 20 positives must stay above: the 19th highest score is 0.10 (not 0.05, which
    # float noise in 0.95 * 20 = 19.000000000000004 would pick); the threshold sits halfway
    # to the next lower score, 0.05.
    assert t == pytest.approx(0.075)
    sensitivity, specificity = sensitivity_specificity(y, positives + negatives, t)
    assert sensitivity >= 0.95
    assert specificity == 0.5
    # All 20: halfway between the lowest positive, 0.05, and the next lower score, 0.02.
    assert choose_threshold(y, positives + negatives, min_sensitivity=1.0) == pytest.approx(0.035)


def test_it_refuses_to_choose_a_threshold_without_positives():
    with pytest.raises(ValueError, match="at least one positive"):
        choose_threshold([0, 0], [0.1, 0.2])


# A small example worked out by hand:
#   negatives 0.1 0.3 0.5 0.7, positives 0.4 0.6 0.8 0.9
#   AUC: positive-above-negative pairs 2 + 3 + 4 + 4 = 13 of 16
#   threshold 0.5: tn 2 (0.1, 0.3), fp 2 (0.5, 0.7), fn 1 (0.4), tp 3
#   Brier: negatives 0.01 + 0.09 + 0.25 + 0.49, positives 0.36 + 0.16 + 0.04 + 0.01; / 8
Y = [0, 0, 0, 0, 1, 1, 1, 1]
P = [0.1, 0.3, 0.5, 0.7, 0.4, 0.6, 0.8, 0.9]


def test_it_matches_the_hand_computed_example():
    assert roc_auc(Y, P) == pytest.approx(13 / 16)
    assert sensitivity_specificity(Y, P, 0.5) == (0.75, 0.5)
    assert confusion(Y, P, 0.5) == {"tn": 2, "fp": 2, "fn": 1, "tp": 3}
    assert confusion(Y, P, 0.95) == {"tn": 4, "fp": 0, "fn": 4, "tp": 0}
    assert brier(Y, P) == pytest.approx(1.41 / 8)


def test_it_computes_ece_over_equal_width_bins():
    # 2 bins: [0, .5) holds .1 .3 .4 (1 of 3 positive, mean .2667): gap 1/15, weight 3/8;
    #         [.5, 1] holds .5 .7 .6 .8 .9 (3 of 5 positive, mean .7): gap .1, weight 5/8.
    assert expected_calibration_error(Y, P, n_bins=2) == pytest.approx(3 / 8 / 15 + 5 / 8 * 0.1)
    # 3 bins: {.1 .3}: 0 vs .2; {.4 .5 .6}: 2/3 vs .5; {.7 .8 .9}: 2/3 vs .8.
    expected = 2 / 8 * 0.2 + 3 / 8 * (1 / 6) + 3 / 8 * (0.8 - 2 / 3)
    assert expected_calibration_error(Y, P, n_bins=3) == pytest.approx(expected)
    bins = reliability_bins(Y, P, n_bins=3)
    assert bins.count.tolist() == [2, 3, 3]
    assert bins.mean_probability == pytest.approx([0.2, 0.5, 0.8])
    assert bins.fraction_positive == pytest.approx([0.0, 2 / 3, 2 / 3])
    # A perfectly calibrated set has no gap; p = 1.0 lands in the last bin, not past it.
    assert expected_calibration_error([0, 1, 1, 0], [0.0, 1.0, 1.0, 0.0]) == 0.0
    assert reliability_bins([1], [1.0], n_bins=4).count.tolist() == [0, 0, 0, 1]


def test_it_reads_sensitivity_and_specificity_off_the_roc_curve():
    # Specificity >= .9 allows no false positive: threshold above .7 keeps positives .8 and .9.
    assert sensitivity_at_specificity(Y, P, 0.90) == 0.5
    # Specificity >= .75 allows one (.7): threshold .6 keeps .6 .8 .9.
    assert sensitivity_at_specificity(Y, P, 0.75) == 0.75
    # Sensitivity >= .95 needs all four positives: threshold .4 passes .5 and .7 as well.
    assert specificity_at_sensitivity(Y, P, 0.95) == 0.5
    assert specificity_at_sensitivity(Y, P, 0.75) == 0.75  # threshold .6
    assert math.isnan(sensitivity_at_specificity([1, 1], [0.2, 0.3]))


def test_it_builds_the_roc_curve_from_every_distinct_score():
    fpr, tpr, thresholds = roc_curve(Y, P)
    assert thresholds.tolist() == [math.inf, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.1]
    assert tpr.tolist() == [0, 0.25, 0.5, 0.5, 0.75, 0.75, 1, 1, 1]
    assert fpr.tolist() == [0, 0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 1]
    # Tied scores are one threshold: both examples enter together.
    fpr, tpr, thresholds = roc_curve([0, 1, 1], [0.5, 0.5, 0.9])
    assert thresholds.tolist() == [math.inf, 0.9, 0.5]
    assert (fpr.tolist(), tpr.tolist()) == ([0, 0, 1], [0, 0.5, 1])


def test_it_bootstraps_a_seeded_interval_around_the_auc():
    rng = np.random.default_rng(1)
    y = [0] * 30 + [1] * 30
    p = np.r_[rng.normal(0.4, 0.15, 30), rng.normal(0.6, 0.15, 30)].tolist()
    auc = roc_auc(y, p)
    low, high = bootstrap_auc_ci(y, p, n=500, seed=3)
    assert low < auc < high
    assert 0.05 < high - low < 0.5  # a real interval for 60 examples, not a point or [0, 1]
    assert bootstrap_auc_ci(y, p, n=500, seed=3) == (low, high)
    assert bootstrap_auc_ci(y, p, n=500, seed=4) != (low, high)
    assert all(math.isnan(v) for v in bootstrap_auc_ci([1, 1], [0.2, 0.3]))


def test_temperature_scaling_recovers_the_temperature_that_made_probabilities_overconfident():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 2.0, size=4000)
    y = rng.random(4000) < 1.0 / (1.0 + np.exp(-logits))  # calibrated at T = 1
    overconfident = 1.0 / (1.0 + np.exp(-3.0 * logits))  # the same ranking, logits x 3
    t = metrics.fit_temperature(y, overconfident)
    assert 2.7 < t < 3.3
    fixed = metrics.apply_temperature(overconfident, t)
    ece = metrics.expected_calibration_error
    assert ece(y, fixed) < 0.03 < ece(y, overconfident)
    assert metrics.roc_auc(y, fixed) == pytest.approx(metrics.roc_auc(y, overconfident))
    assert metrics.apply_temperature([0.5, 0.9], 1.0) == pytest.approx([0.5, 0.9])
    with pytest.raises(ValueError, match="temperature"):
        metrics.apply_temperature([0.5], 0.0)
