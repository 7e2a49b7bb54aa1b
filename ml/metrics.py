"""Binary classification metrics on P(positive) scores, in plain numpy (no scikit-learn).

    from ml.metrics import bootstrap_auc_ci, choose_threshold, roc_auc, sensitivity_specificity
    t = choose_threshold(y_val, p_val, min_sensitivity=0.95)
    sens, spec = sensitivity_specificity(y_val, p_val, t)
    low, high = bootstrap_auc_ci(y_test, p_test, n=1000, seed=0)  # 95% stratified bootstrap
    t = choose_threshold_by_rule(y_val, p_val, rule="specificity", target=0.90)  # or "youden"

Everywhere `score >= threshold` means positive, `y_true` is 0/1 (1 = the positive class) and
figures that need both classes are NaN when one is missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _as_arrays(y_true: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool).ravel()  # (N,) True = positive class
    s = np.asarray(scores, dtype=np.float64).ravel()  # (N,)
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but scores has {s.size}")
    return y, s


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks where tied values share the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values, and the run each sorted element belongs to.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half). NaN with one class."""
    y, s = _as_arrays(y_true, scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = _average_ranks(s)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def sensitivity_specificity(
    y_true: Sequence[int], scores: Sequence[float], threshold: float
) -> tuple[float, float]:
    """(sensitivity, specificity) when `score >= threshold` means positive. NaN for a class
    with no examples."""
    y, s = _as_arrays(y_true, scores)
    predicted = s >= threshold
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    sensitivity = float((predicted & y).sum() / n_pos) if n_pos else math.nan
    specificity = float((~predicted & ~y).sum() / n_neg) if n_neg else math.nan
    return sensitivity, specificity


def choose_threshold(
    y_true: Sequence[int], scores: Sequence[float], *, min_sensitivity: float = 0.95
) -> float:
    """The highest threshold whose sensitivity on these (validation) data is >= min_sensitivity.

    Missing a pneumonia costs more than a false alarm, so sensitivity is fixed first and the
    threshold is then as high as possible to keep specificity up. With positives' scores sorted
    high to low, the k-th of them must stay positive, k = ceil(min_sensitivity * n_positives).
    The threshold sits halfway between that score and the next lower score of any image, so
    it classifies these images the same way but does not flip that k-th positive on a change
    of the last float digit (another runtime, another batch size).
    """
    if not 0.0 < min_sensitivity <= 1.0:
        raise ValueError(f"min_sensitivity must be within (0, 1], got {min_sensitivity}")
    y, s = _as_arrays(y_true, scores)
    positives = np.sort(s[y])[::-1]  # (P,) high to low
    if positives.size == 0:
        raise ValueError("choose_threshold needs at least one positive example")
    # The small epsilon stops float noise (0.95 * 20 = 19.000000000000004) from asking for one
    # more positive than the rule means.
    k = max(1, math.ceil(min_sensitivity * positives.size - 1e-9))
    kth = float(positives[k - 1])
    below = s[s < kth]
    return (kth + float(below.max())) / 2.0 if below.size else kth


def choose_threshold_for_specificity(
    y_true: Sequence[int], scores: Sequence[float], *, min_specificity: float = 0.90
) -> float:
    """The lowest threshold whose specificity on these data is >= min_specificity: the most
    pneumonias found while bothering at most 1 - min_specificity of the healthy children.

    The mirror of choose_threshold: with negatives' scores sorted low to high, the m-th of
    them must stay negative, m = ceil(min_specificity * n_negatives), and the threshold sits
    halfway between that score and the next higher score of any image (just above it when no
    image scores higher), so it classifies these images the same way as the exact bound.
    """
    if not 0.0 < min_specificity <= 1.0:
        raise ValueError(f"min_specificity must be within (0, 1], got {min_specificity}")
    y, s = _as_arrays(y_true, scores)
    negatives = np.sort(s[~y])  # (N,) low to high
    if negatives.size == 0:
        raise ValueError("choose_threshold_for_specificity needs at least one negative example")
    m = max(1, math.ceil(min_specificity * negatives.size - 1e-9))  # float noise, as above
    mth = float(negatives[m - 1])
    above = s[s > mth]
    return (mth + float(above.min())) / 2.0 if above.size else float(np.nextafter(mth, np.inf))


def youden_threshold(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """The threshold that maximises Youden's J = sensitivity + specificity - 1.

    Among equally good thresholds the lowest (the most sensitive) wins, since a missed
    pneumonia costs more than a false alarm. Placed halfway to the next lower score, as in
    choose_threshold. Needs both classes.
    """
    fpr, tpr, thresholds = roc_curve(y_true, scores)
    if thresholds.size < 2 or np.isnan(fpr).any() or np.isnan(tpr).any():
        raise ValueError("youden_threshold needs at least one positive and one negative example")
    j = (tpr - fpr)[1:]  # (K,) one per distinct score, high to low; point 0 calls nothing
    best = 1 + (j.size - 1 - int(np.argmax(j[::-1])))  # the last (lowest) maximum
    if best + 1 < thresholds.size:
        return (float(thresholds[best]) + float(thresholds[best + 1])) / 2.0
    return float(thresholds[best])


THRESHOLD_RULES = ("sensitivity", "specificity", "youden")


def choose_threshold_by_rule(
    y_true: Sequence[int],
    scores: Sequence[float],
    *,
    rule: str = "sensitivity",
    target: float = 0.95,
) -> float:
    """One entry point for the threshold rules (`target` is ignored by "youden"):

    - "sensitivity": the highest threshold whose sensitivity is >= target (choose_threshold);
    - "specificity": the lowest threshold whose specificity is >= target;
    - "youden": the one that maximises sensitivity + specificity - 1.
    """
    if rule == "sensitivity":
        return choose_threshold(y_true, scores, min_sensitivity=target)
    if rule == "specificity":
        return choose_threshold_for_specificity(y_true, scores, min_specificity=target)
    if rule == "youden":
        return youden_threshold(y_true, scores)
    raise ValueError(f"rule must be one of {THRESHOLD_RULES}, got {rule!r}")


def confusion(y_true: Sequence[int], scores: Sequence[float], threshold: float) -> dict[str, int]:
    """Counts {"tn", "fp", "fn", "tp"} when `score >= threshold` means positive."""
    y, s = _as_arrays(y_true, scores)
    predicted = s >= threshold
    return {
        "tn": int((~predicted & ~y).sum()),
        "fp": int((predicted & ~y).sum()),
        "fn": int((~predicted & y).sum()),
        "tp": int((predicted & y).sum()),
    }


def roc_curve(
    y_true: Sequence[int], scores: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds falling from +inf through every distinct score.

    Point i is the operating point of `score >= thresholds[i]`; the first point (0, 0) at +inf
    calls nothing positive, the last calls everything positive. scikit-learn's roc_curve with
    drop_intermediate=False gives the same arrays. NaN rates for a class with no examples.
    """
    y, s = _as_arrays(y_true, scores)
    order = np.argsort(-s, kind="mergesort")  # high to low
    s_sorted, y_sorted = s[order], y[order]
    # The last index of each run of equal scores: a threshold takes in the whole run at once.
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s.size - 1] if s.size else []
    tps = np.r_[0, np.cumsum(y_sorted)[last]]
    fps = np.r_[0, np.cumsum(~y_sorted)[last]]
    n_pos, n_neg = tps[-1], fps[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tps / n_pos if n_pos else np.full(tps.shape, math.nan)
        fpr = fps / n_neg if n_neg else np.full(fps.shape, math.nan)
    return fpr.astype(np.float64), tpr.astype(np.float64), np.r_[np.inf, s_sorted[last]]


def sensitivity_at_specificity(
    y_true: Sequence[int], scores: Sequence[float], target: float = 0.90
) -> float:
    """The highest sensitivity of any threshold whose specificity is >= target (NaN with one
    class). Reads "if we may only bother 1 - target of healthy children, how many sick ones do
    we find?", a figure that does not depend on the stored threshold."""
    fpr, tpr, _ = roc_curve(y_true, scores)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return math.nan
    # The tolerance keeps 0.9 == 9 / 10 from failing on float noise.
    return float(tpr[(1.0 - fpr) >= target - 1e-12].max())  # (0, 0) at +inf always qualifies


def specificity_at_sensitivity(
    y_true: Sequence[int], scores: Sequence[float], target: float = 0.95
) -> float:
    """The highest specificity of any threshold whose sensitivity is >= target (NaN with one
    class): the price in false alarms of finding `target` of the pneumonias."""
    fpr, tpr, _ = roc_curve(y_true, scores)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return math.nan
    return float((1.0 - fpr[tpr >= target - 1e-12]).max())  # (1, 1) always qualifies


def bootstrap_auc_ci(
    y_true: Sequence[int],
    scores: Sequence[float],
    *,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile confidence interval of the ROC AUC from a stratified bootstrap.

    Each of the `n` resamples draws the positives from the positives and the negatives from
    the negatives, with replacement and in their original numbers, so every resample has both
    classes (a plain bootstrap of a small test set can draw a one-class sample whose AUC does
    not exist). The interval is the alpha/2 and 1 - alpha/2 quantiles of the resampled AUCs;
    the same seed gives the same interval. (NaN, NaN) with one class.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")
    y, s = _as_arrays(y_true, scores)
    positives, negatives = s[y], s[~y]
    if positives.size == 0 or negatives.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(positives.size, bool), np.zeros(negatives.size, bool)]
    aucs = np.empty(n)
    for i in range(n):
        resampled = np.r_[
            rng.choice(positives, positives.size), rng.choice(negatives, negatives.size)
        ]
        aucs[i] = roc_auc(labels, resampled)
    low, high = np.quantile(aucs, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def brier(y_true: Sequence[int], probabilities: Sequence[float]) -> float:
    """Mean squared difference between P(positive) and the 0/1 truth (0 is perfect)."""
    y, p = _as_arrays(y_true, probabilities)
    return float(np.mean((p - y) ** 2)) if y.size else math.nan


@dataclass(frozen=True)
class Reliability:
    """P(positive) grouped in equal-width bins: what a reliability diagram plots."""

    edges: np.ndarray  # (n_bins + 1,) 0.0, 1 / n_bins, ..., 1.0
    count: np.ndarray  # (n_bins,) images per bin
    mean_probability: np.ndarray  # (n_bins,) mean P(positive) in the bin; NaN when empty
    fraction_positive: np.ndarray  # (n_bins,) share of positives in the bin; NaN when empty


def reliability_bins(
    y_true: Sequence[int], probabilities: Sequence[float], n_bins: int = 10
) -> Reliability:
    """Bin i holds i / n_bins <= p < (i + 1) / n_bins; p = 1.0 goes into the last bin."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y, p = _as_arrays(y_true, probabilities)
    if ((p < 0.0) | (p > 1.0)).any():
        raise ValueError("probabilities must be within [0, 1]")
    index = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)  # (N,)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_probability = np.bincount(index, weights=p, minlength=n_bins) / count
        fraction_positive = np.bincount(index, weights=y, minlength=n_bins) / count
    return Reliability(
        np.linspace(0.0, 1.0, n_bins + 1), count, mean_probability, fraction_positive
    )


def expected_calibration_error(
    y_true: Sequence[int], probabilities: Sequence[float], n_bins: int = 10
) -> float:
    """ECE of P(positive): sum over equal-width bins of (bin size / N) * |share of positives in
    the bin - mean P(positive) in the bin|. This is the binary "reliability diagram" ECE on the
    positive class, not the top-label (max-probability) ECE of Guo et al. 2017; the two differ
    for a binary model. Empty bins count zero; NaN with no examples."""
    bins = reliability_bins(y_true, probabilities, n_bins)
    total = int(bins.count.sum())
    if total == 0:
        return math.nan
    filled = bins.count > 0
    gaps = np.abs(bins.fraction_positive[filled] - bins.mean_probability[filled])
    return float((bins.count[filled] / total * gaps).sum())


def apply_temperature(probabilities: Sequence[float], temperature: float) -> np.ndarray:
    """P(positive) of a two-class softmax whose logits are divided by `temperature`: the
    logit difference is log(p / (1 - p)), so p -> sigmoid(logit(p) / T). T > 1 softens
    over-confident probabilities, T < 1 sharpens them; the ranking (and the AUC) is kept."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0 - 1e-12)
    return 1.0 / (1.0 + np.exp(-np.log(p / (1.0 - p)) / temperature))


def fit_temperature(y_true: Sequence[int], probabilities: Sequence[float]) -> float:
    """The temperature (Guo et al. 2017) that minimises the negative log-likelihood of these
    labelled probabilities: a golden-section search over log T in [-4, 4], which the NLL is
    convex in. Fit it on images that chose nothing else the figures are judged on."""
    y, _ = _as_arrays(y_true, probabilities)
    if y.size == 0:
        raise ValueError("fit_temperature needs labelled examples")

    def nll(log_t: float) -> float:
        q = np.clip(apply_temperature(probabilities, math.exp(log_t)), 1e-12, 1.0 - 1e-12)
        return float(-np.mean(np.where(y, np.log(q), np.log(1.0 - q))))

    low, high = -4.0, 4.0
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(80):  # the bracket shrinks by 0.618 a step: far below float precision
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return math.exp((low + high) / 2.0)


def nan_to_none(value):
    """A figure's NaN (AUC of one class, say) as None, through dicts and lists: strict JSON
    and PostgreSQL's jsonb have no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return value
