from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from ml import metrics
from ml.calibration import calibrate, calibration_split
from ml.metrics import choose_threshold, choose_threshold_by_rule, sensitivity_specificity


def _site(n_patients: int, *, seed: int, shift: float = 0.0):
    """(labels, scores, groups): patients of 1-3 images each, about 1 normal to 2 pneumonia;
    pneumonia scores high, normal low, everything moved by `shift` (a site effect)."""
    rng = np.random.default_rng(seed)
    labels, scores, groups = [], [], []
    for p in range(n_patients):
        label = int(p % 3 != 0)
        for _ in range(int(rng.integers(1, 4))):
            centre = 0.8 if label else 0.25
            labels.append(label)
            scores.append(float(np.clip(rng.normal(centre, 0.12) + shift, 0.0, 1.0)))
            groups.append(f"{'person' if label else 'IM-'}{p}")
    return np.array(labels), np.array(scores), groups


def test_it_splits_disjointly_covering_everything_by_patient_and_stratified():
    labels, _, groups = _site(150, seed=0)
    cal, ev = calibration_split(labels, groups, fraction=0.3, seed=7)

    assert set(cal).isdisjoint(ev)
    assert sorted([*cal, *ev]) == list(range(len(labels)))
    cal_patients, eval_patients = {groups[i] for i in cal}, {groups[i] for i in ev}
    assert cal_patients.isdisjoint(eval_patients)
    for label in (0, 1):  # about 30% of each class, give or take one patient's images
        n_label = int((labels == label).sum())
        assert abs(int((labels[cal] == label).sum()) - 0.3 * n_label) <= 3


def test_it_splits_the_same_way_for_a_seed_whatever_the_image_order():
    labels, _, groups = _site(60, seed=1)
    cal, ev = calibration_split(labels, groups, fraction=0.5, seed=3)
    again = calibration_split(labels, groups, fraction=0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((cal, ev), again, strict=True))
    other, _ = calibration_split(labels, groups, fraction=0.5, seed=4)
    assert not np.array_equal(cal, other)

    order = np.random.default_rng(0).permutation(len(labels))
    shuffled, _ = calibration_split(labels[order], [groups[i] for i in order], fraction=0.5, seed=3)
    assert {groups[order[i]] for i in shuffled} == {groups[i] for i in cal}


def test_it_treats_every_image_as_its_own_patient_without_groups():
    labels = np.array([0] * 10 + [1] * 30)
    cal, ev = calibration_split(labels, None, fraction=0.2, seed=0)
    assert Counter(labels[cal]) == {0: 2, 1: 6}
    assert Counter(labels[ev]) == {0: 8, 1: 24}


@pytest.mark.parametrize(
    ("labels", "groups", "fraction", "error"),
    [
        ([0, 0, 1, 1], None, 0.0, "fraction must be within"),
        ([0, 0, 1, 1], None, 1.0, "fraction must be within"),
        ([0, 0, 1, 1], ["a", "a", "b", "c"], 0.5, "at least two negative patients"),
        ([0, 0, 1], None, 0.5, "at least two positive patients .*, got 1"),
        ([0, 1], ["a"], 0.5, "groups has 1"),
    ],
)
def test_it_refuses_a_split_that_cannot_hold_both_classes_on_both_sides(
    labels, groups, fraction, error
):
    with pytest.raises(ValueError, match=error):
        calibration_split(labels, groups, fraction=fraction, seed=0)


# A tiny example worked out by hand: negatives 0.1 0.2 0.3 0.7, positives 0.4 0.6 0.8 0.9.
TINY_Y = [0, 0, 0, 0, 1, 1, 1, 1]
TINY_S = [0.1, 0.2, 0.3, 0.7, 0.4, 0.6, 0.8, 0.9]


@pytest.mark.parametrize(
    ("rule", "target", "threshold"),
    [
        # 3 of 4 positives stay positive: the 3rd highest is 0.6, next lower score 0.4.
        ("sensitivity", 0.75, 0.5),
        # all 4: the lowest positive 0.4, next lower score 0.3.
        ("sensitivity", 1.0, 0.35),
        # 3 of 4 negatives stay negative: the 3rd lowest is 0.3, next higher score 0.4.
        ("specificity", 0.75, 0.35),
        # all 4: the highest negative 0.7, next higher score 0.8.
        ("specificity", 1.0, 0.75),
        # 2 of 4 (0.5 * 4 exactly): the 2nd lowest 0.2, next higher 0.3.
        ("specificity", 0.5, 0.25),
        # J = sens + spec - 1 by score: 0.9 .25, 0.8 .5, 0.7 .25, 0.6 .5, 0.4 .75 (max),
        # 0.3 .5, 0.2 .25; halfway from 0.4 to 0.3.
        ("youden", None, 0.35),
    ],
)
def test_it_chooses_hand_computed_thresholds_by_rule(rule, target, threshold):
    assert choose_threshold_by_rule(TINY_Y, TINY_S, rule=rule, target=target) == pytest.approx(
        threshold
    )


def test_it_prefers_the_most_sensitive_of_equally_good_youden_thresholds():
    # J is 0.5 at 0.8, 0.6 and 0.4: the lowest wins, halfway down to 0.3.
    y, s = [0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.3, 0.5, 0.7, 0.4, 0.6, 0.8, 0.9]
    assert choose_threshold_by_rule(y, s, rule="youden") == pytest.approx(0.35)


def test_it_keeps_the_sensitivity_rule_identical_to_choose_threshold():
    labels, scores, _ = _site(80, seed=5)
    for target in (0.8, 0.95, 1.0):
        assert choose_threshold_by_rule(labels, scores, target=target) == choose_threshold(
            labels, scores, min_sensitivity=target
        )


def test_it_sets_the_specificity_threshold_just_above_the_top_score_when_needed():
    t = choose_threshold_by_rule([1, 0, 0], [0.2, 0.1, 0.9], rule="specificity", target=1.0)
    assert 0.9 < t < 0.9 + 1e-12
    assert sensitivity_specificity([1, 0, 0], [0.2, 0.1, 0.9], t) == (0.0, 1.0)


def test_it_refuses_an_unknown_rule_or_a_missing_class():
    with pytest.raises(ValueError, match="rule must be one of"):
        choose_threshold_by_rule(TINY_Y, TINY_S, rule="f1")
    with pytest.raises(ValueError, match="at least one negative"):
        choose_threshold_by_rule([1, 1], [0.2, 0.3], rule="specificity")
    with pytest.raises(ValueError, match="one positive and one negative"):
        choose_threshold_by_rule([1, 1], [0.2, 0.3], rule="youden")
    with pytest.raises(ValueError, match="rule must be one of"):
        calibrate(TINY_Y, TINY_S, None, rule="f1")


# Four patients, two images each. With fraction 0.5 calibration gets one normal patient (A or
# B) and one pneumonia patient (C or D); the rule keeps every calibration pneumonia (target 1).
# Worked out by hand for each of the four splits: threshold, then on the evaluation part
# sensitivity, specificity, accuracy and AUC.
HAND_Y = [0, 0, 0, 0, 1, 1, 1, 1]
HAND_S = [0.1, 0.2, 0.3, 0.6, 0.5, 0.9, 0.7, 0.8]
HAND_G = ["A", "A", "B", "B", "C", "C", "D", "D"]
HAND = {
    # cal A+C: lowest pneumonia 0.5, next lower 0.2 -> 0.35; eval B (0.3 0.6) + D (0.7 0.8)
    frozenset("AC"): (0.35, 1.0, 0.5, 0.75, 1.0),
    # cal A+D: lowest 0.7, next lower 0.2 -> 0.45; eval B (0.3 0.6) + C (0.5 0.9): AUC 3/4
    frozenset("AD"): (0.45, 1.0, 0.5, 0.75, 0.75),
    # cal B+C: lowest 0.5, next lower 0.3 -> 0.4; eval A (0.1 0.2) + D (0.7 0.8)
    frozenset("BC"): (0.4, 1.0, 1.0, 1.0, 1.0),
    # cal B+D: lowest 0.7, next lower 0.6 -> 0.65; eval A (0.1 0.2) + C (0.5 0.9)
    frozenset("BD"): (0.65, 0.5, 1.0, 0.75, 1.0),
}


def test_it_reports_hand_computed_figures_on_the_evaluation_part():
    seen = set()
    for seed in range(30):
        result = calibrate(HAND_Y, HAND_S, HAND_G, fraction=0.5, target=1.0, seed=seed)
        cal_patients = frozenset(HAND_G[i] for i in result.cal_idx)
        threshold, sensitivity, specificity, accuracy, auc = HAND[cal_patients]
        assert result.threshold == pytest.approx(threshold)
        assert (result.sensitivity, result.specificity) == (sensitivity, specificity)
        assert (result.accuracy, result.auc) == (accuracy, auc)
        assert (result.n_cal, result.n_eval) == (4, 4)
        assert result.cal_sensitivity == 1.0
        seen.add(cal_patients)
    assert seen == set(HAND)  # the seeds went through every split


def test_it_chooses_the_threshold_from_calibration_scores_only(monkeypatch):
    labels, scores, groups = _site(90, seed=2)
    scores = scores + np.arange(len(scores)) * 1e-9  # every score unique: it names its image
    received = []
    real = metrics.choose_threshold_by_rule

    def spy(y, s, **kwargs):
        received.append(set(np.asarray(s).tolist()))
        return real(y, s, **kwargs)

    monkeypatch.setattr(metrics, "choose_threshold_by_rule", spy)
    result = calibrate(labels, scores, groups, fraction=0.4, seed=1, repeats=3)

    assert len(received) == 4  # the primary split and three more
    for r, seen in enumerate(received):
        cal, ev = calibration_split(labels, groups, fraction=0.4, seed=1 + r)
        assert seen == set(scores[cal].tolist())
        assert seen.isdisjoint(scores[ev].tolist())
    assert received[0] == set(scores[list(result.cal_idx)].tolist())


def test_it_ignores_evaluation_scores_when_choosing_the_threshold():
    labels, scores, groups = _site(90, seed=3)
    first = calibrate(labels, scores, groups, seed=0)
    scrambled = scores.copy()
    ev = list(first.eval_idx)
    scrambled[ev] = np.random.default_rng(9).uniform(0.0, 1.0, len(ev))
    second = calibrate(labels, scrambled, groups, seed=0)

    assert second.threshold == first.threshold
    assert second.cal_idx == first.cal_idx
    assert second.auc < first.auc  # the evaluation figures did see the change


def test_it_moves_the_threshold_down_on_a_site_whose_scores_are_lower():
    val_y, val_s, _ = _site(300, seed=10)
    site_y, site_s, site_g = _site(300, seed=11, shift=-0.3)
    val_threshold = choose_threshold(val_y, val_s, min_sensitivity=0.95)
    result = calibrate(site_y, site_s, site_g, fraction=0.5, target=0.95, seed=0)

    assert result.threshold < val_threshold - 0.2
    ev = list(result.eval_idx)
    stale_sensitivity, _ = sensitivity_specificity(site_y[ev], site_s[ev], val_threshold)
    assert stale_sensitivity < 0.7  # the validation threshold misses pneumonias here
    assert result.sensitivity >= 0.9  # the calibrated one finds them on unseen patients


def test_it_repeats_the_split_for_a_mean_and_sd_without_moving_the_primary_figures():
    labels, scores, groups = _site(120, seed=4)
    single = calibrate(labels, scores, groups, seed=5)
    repeated = calibrate(labels, scores, groups, seed=5, repeats=9)

    assert single.repeated is None and repeated.repeats == 9
    assert (repeated.threshold, repeated.sensitivity) == (single.threshold, single.sensitivity)
    rows = [single] + [calibrate(labels, scores, groups, seed=5 + r) for r in range(1, 10)]
    sens = [r.sensitivity for r in rows]
    assert repeated.repeated["sensitivity_mean"] == pytest.approx(np.mean(sens))
    assert repeated.repeated["sensitivity_sd"] == pytest.approx(np.std(sens, ddof=1))
    spec = [r.specificity for r in rows]
    assert repeated.repeated["specificity_mean"] == pytest.approx(np.mean(spec))
    assert repeated.repeated["threshold_sd"] > 0.0


def test_it_serialises_the_json_block_the_issue_asks_for():
    labels, scores, groups = _site(60, seed=6)
    d = calibrate(labels, scores, groups, rule="youden", repeats=2).to_dict()
    assert {"threshold", "sensitivity", "specificity", "accuracy", "n_eval"} <= set(d)
    assert d["rule"] == "youden" and d["target"] is None
    assert d["n_eval"] + d["n_cal"] == len(labels)
    assert set(d["repeated"]) == {
        f"{name}_{stat}"
        for name in ("threshold", "sensitivity", "specificity")
        for stat in ("mean", "sd")
    }
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_map_scores_puts_one_models_scores_on_the_others_scale():
    from ml.calibration import map_scores

    rng = np.random.default_rng(0)
    first = rng.uniform(0.01, 0.99, size=400)  # (R,) one model's scores of the reference
    second = first**3  # the other model ranks them alike, on another scale
    assert map_scores(second[:5], second, first) == pytest.approx(first[:5], abs=1e-3)
    mapped = map_scores([1e-9, 0.2, 0.5, 0.999], second, first)  # beyond both ends too
    assert list(mapped) == sorted(mapped)  # monotone: the ranking is kept
    assert mapped[0] == pytest.approx(first.min()) and mapped[-1] == pytest.approx(first.max())
    # Ties (saturated scores) map to the middle of their quantiles.
    assert map_scores([0.3], [0.1, 0.3, 0.3, 0.9], [0.1, 0.2, 0.4, 0.9])[0] == pytest.approx(
        1 / (1 + np.sqrt((0.8 / 0.2) * (0.6 / 0.4)))
    )
    with pytest.raises(ValueError, match="the same images"):
        map_scores([0.5], [0.1, 0.2], [0.1, 0.2, 0.3])
