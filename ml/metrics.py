"""Binary classification metrics on P(positive) scores, in plain numpy (no scikit-learn).

from ml.metrics import choose_threshold, roc_auc, sensitivity_specificity
t = choose_threshold(y_val, p_val, min_sensitivity=0.95)
sens, spec = sensitivity_specificity(y_val, p_val, t)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    high to low, that threshold is the k-th of them, k = ceil(min_sensitivity * n_positives).
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
    return float(positives[k - 1])
