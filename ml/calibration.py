"""Site calibration: choose a decision threshold on one part of a new site's labelled images
and report what it does on the other part, so no figure is measured on the images that chose it.

A threshold chosen on validation images from the training population does not carry over to
images acquired differently (ml/README.md: on the full-resolution originals the stored
threshold called only 5 of 8 pneumonias). A site that onboards sends labelled images; the
model scores them; `calibrate` splits them by patient into a calibration part and an
evaluation part, stratified by class, picks the threshold on the first and measures the
second. Pure numpy, no torch:

    from ml.calibration import calibrate
    from ml.data import patient_id
    groups = [patient_id(path) for path, _ in items]     # keep each child's images together
    result = calibrate(labels, scores, groups, fraction=0.5, rule="sensitivity", target=0.95,
                       seed=0, repeats=20)
    result.threshold, result.to_dict()                   # {"threshold", "sensitivity", ...}

`labels` are 0/1 (1 = PNEUMONIA), `scores` P(PNEUMONIA); `score >= threshold` is positive.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ml import metrics


def _groups_of(n: int, groups: Sequence[Hashable] | None) -> np.ndarray:
    """(N,) integer group index per image; None makes every image its own group.

    Groups are numbered in the sorted order of their names (as text), so the same patients
    give the same split whatever order the images come in.
    """
    if groups is None:
        return np.arange(n)
    if len(groups) != n:
        raise ValueError(f"labels has {n} values but groups has {len(groups)}")
    names = sorted(dict.fromkeys(groups), key=str)  # dict: first appearance breaks str ties
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[g] for g in groups], dtype=np.int64)


def calibration_split(
    labels: Sequence[int],
    groups: Sequence[Hashable] | None,
    *,
    fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(cal_idx, eval_idx): sorted image indices of the calibration and evaluation parts.

    About `fraction` of each class's images go to calibration, whole groups (patients) at a
    time, so a child's images never sit on both sides; a group counts under the class of its
    first image. Groups are taken in a seeded random order until the class's share is reached,
    and each class keeps at least one group on each side. The parts are disjoint and cover
    every image; the same seed gives the same split. Raises ValueError when a part would miss
    a class: fewer than two patients (groups) of a class.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be within (0, 1), got {fraction}")
    y = np.asarray(labels).astype(bool).ravel()  # (N,) True = positive class
    g = _groups_of(y.size, groups)  # (N,)
    _, first, sizes = np.unique(g, return_index=True, return_counts=True)  # (G,) each
    group_label = y[first]  # (G,) the label of each group's first image
    n_groups = first.size
    in_cal = np.zeros(n_groups, dtype=bool)
    for label in (False, True):
        name = "positive" if label else "negative"
        members = np.flatnonzero(group_label == label)
        if members.size < 2:
            raise ValueError(
                f"calibration_split needs at least two {name} patients (one for each part), "
                f"got {members.size}"
            )
        order = np.random.default_rng([seed, int(label)]).permutation(members)
        target, taken = fraction * sizes[members].sum(), 0
        for group in order[:-1]:  # the last stays for evaluation
            if taken and abs(taken + sizes[group] - target) >= abs(taken - target):
                continue  # it would overshoot more than it helps; a smaller group may fit
            in_cal[group] = True
            taken += sizes[group]
    # Each part holds a group filed under each class, and that group's first image has the
    # class: both parts have both classes.
    cal = in_cal[g]  # (N,)
    return np.flatnonzero(cal), np.flatnonzero(~cal)


@dataclass(frozen=True)
class Calibration:
    """A threshold chosen on the calibration part and its figures on the evaluation part.
    `to_dict()` is the JSON block a site's onboarding stores."""

    threshold: float
    sensitivity: float  # evaluation part, at `threshold`
    specificity: float
    accuracy: float
    auc: float  # evaluation part, threshold-free
    n_eval: int
    n_cal: int
    confusion: dict[str, int]  # evaluation part: tn, fp, fn, tp
    cal_sensitivity: float  # calibration part, at `threshold` (what the rule aimed at)
    cal_specificity: float
    rule: str
    target: float | None  # None for "youden"
    fraction: float
    seed: int
    # Over the primary split and `repeats` more (seeds seed+1 .. seed+repeats); None if 0.
    repeats: int = 0
    repeated: dict[str, float] | None = None  # {sensitivity,specificity,threshold}_{mean,sd}
    # The primary split, for whoever wants to look at the images; not part of to_dict().
    cal_idx: tuple[int, ...] = field(default=(), repr=False)
    eval_idx: tuple[int, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict:
        """JSON-ready; a NaN becomes None (strict JSON and jsonb have no NaN)."""
        d = {
            "threshold": self.threshold,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "accuracy": self.accuracy,
            "n_eval": self.n_eval,
            "n_cal": self.n_cal,
            "auc": self.auc,
            "confusion": dict(self.confusion),
            "cal_sensitivity": self.cal_sensitivity,
            "cal_specificity": self.cal_specificity,
            "rule": self.rule,
            "target": self.target,
            "fraction": self.fraction,
            "seed": self.seed,
            "repeats": self.repeats,
            "repeated": None if self.repeated is None else dict(self.repeated),
        }
        return metrics.nan_to_none(d)


def _one_split(
    y: np.ndarray, s: np.ndarray, groups, *, fraction: float, rule: str, target: float, seed: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """(threshold chosen on the calibration part, cal_idx, eval_idx) for one seeded split."""
    cal_idx, eval_idx = calibration_split(y, groups, fraction=fraction, seed=seed)
    # Only calibration-part scores reach the rule: the evaluation part cannot move it.
    threshold = metrics.choose_threshold_by_rule(y[cal_idx], s[cal_idx], rule=rule, target=target)
    return threshold, cal_idx, eval_idx


def calibrate(
    labels: Sequence[int],
    scores: Sequence[float],
    groups: Sequence[Hashable] | None,
    *,
    fraction: float = 0.5,
    rule: str = "sensitivity",
    target: float = 0.95,
    seed: int = 0,
    repeats: int = 0,
) -> Calibration:
    """Choose the threshold by `rule` (see metrics.choose_threshold_by_rule) on a `fraction`
    of the images (calibration_split, by patient) and measure it on the rest.

    One split of a small site is a noisy estimate; `repeats=K` resplits K more times (seeds
    seed+1 .. seed+K) and reports the mean and sample sd over all K+1 splits of the
    evaluation-part sensitivity, specificity and the threshold. The threshold and figures
    reported as such are always those of the primary split (`seed`).
    """
    if rule not in metrics.THRESHOLD_RULES:
        raise ValueError(f"rule must be one of {metrics.THRESHOLD_RULES}, got {rule!r}")
    if repeats < 0:
        raise ValueError(f"repeats must be >= 0, got {repeats}")
    y = np.asarray(labels).astype(bool).ravel()  # (N,)
    s = np.asarray(scores, dtype=np.float64).ravel()  # (N,)
    if y.shape != s.shape:
        raise ValueError(f"labels has {y.size} values but scores has {s.size}")
    if groups is not None:
        groups = list(groups)
    split = {"fraction": fraction, "rule": rule, "target": target}

    threshold, cal_idx, eval_idx = _one_split(y, s, groups, seed=seed, **split)
    y_eval, s_eval = y[eval_idx], s[eval_idx]
    counts = metrics.confusion(y_eval, s_eval, threshold)
    sensitivity, specificity = metrics.sensitivity_specificity(y_eval, s_eval, threshold)
    cal_sensitivity, cal_specificity = metrics.sensitivity_specificity(
        y[cal_idx], s[cal_idx], threshold
    )

    repeated = None
    if repeats:
        rows = [(threshold, sensitivity, specificity)]
        for r in range(1, repeats + 1):
            t, _, e = _one_split(y, s, groups, seed=seed + r, **split)
            rows.append((t, *metrics.sensitivity_specificity(y[e], s[e], t)))
        table = np.asarray(rows)  # (K + 1, 3): threshold, sensitivity, specificity
        means, sds = table.mean(axis=0), table.std(axis=0, ddof=1)
        repeated = {
            f"{name}_{stat}": float(v[i])
            for i, name in enumerate(("threshold", "sensitivity", "specificity"))
            for stat, v in (("mean", means), ("sd", sds))
        }

    return Calibration(
        threshold=float(threshold),
        sensitivity=sensitivity,
        specificity=specificity,
        accuracy=(counts["tp"] + counts["tn"]) / eval_idx.size,
        auc=metrics.roc_auc(y_eval, s_eval),
        n_eval=int(eval_idx.size),
        n_cal=int(cal_idx.size),
        confusion=counts,
        cal_sensitivity=cal_sensitivity,
        cal_specificity=cal_specificity,
        rule=rule,
        target=None if rule == "youden" else float(target),
        fraction=float(fraction),
        seed=int(seed),
        repeats=int(repeats),
        repeated=repeated,
        cal_idx=tuple(int(i) for i in cal_idx),
        eval_idx=tuple(int(i) for i in eval_idx),
    )


def map_scores(
    scores: Sequence[float], source_reference: Sequence[float], target_reference: Sequence[float]
) -> np.ndarray:
    """One model's scores put on another model's scale: each score goes to the other model's
    score at the same quantile, the quantiles read from both models' scores of one reference
    set of images (`source_reference[i]` and `target_reference[i]` score the same image;
    neither model should have trained on them). Monotone, so it keeps each model's ranking;
    interpolated in logit space, and scores beyond the reference's range go to its ends.

    Site adaptation pools two fine-tunes' out-of-fold scores to choose one threshold; the
    threshold is applied to the first, so the second's scores are mapped onto its scale."""
    source = np.sort(_logit(source_reference))  # (R,)
    target = np.sort(_logit(target_reference))  # (R,)
    if source.size != target.size or source.size < 2:
        raise ValueError(
            "the references must score the same images, at least two: "
            f"got {source.size} and {target.size}"
        )
    quantiles = np.linspace(0.0, 1.0, source.size)
    # Ties in a reference (saturated scores) take the middle of their quantiles.
    source, first = np.unique(source, return_index=True)
    last = np.r_[first[1:] - 1, quantiles.size - 1]
    at = np.interp(_logit(scores), source, (quantiles[first] + quantiles[last]) / 2)
    return 1.0 / (1.0 + np.exp(-np.interp(at, quantiles, target)))


def _logit(p: Sequence[float]) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64).ravel(), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)
