from __future__ import annotations

import math

import pytest

from ml.metrics import choose_threshold, roc_auc, sensitivity_specificity


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
    # float noise in 0.95 * 20 = 19.000000000000004 would pick).
    assert t == pytest.approx(0.10)
    sensitivity, specificity = sensitivity_specificity(y, positives + negatives, t)
    assert sensitivity >= 0.95
    assert specificity == 0.5
    assert choose_threshold(y, positives + negatives, min_sensitivity=1.0) == pytest.approx(0.05)


def test_it_refuses_to_choose_a_threshold_without_positives():
    with pytest.raises(ValueError, match="at least one positive"):
        choose_threshold([0, 0], [0.1, 0.2])
