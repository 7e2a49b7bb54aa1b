"""Figures from stored scores: AUC with a bootstrap CI, the operating point, calibration.

Pure numpy (through ml.metrics): a web process, a site audit or a gate computes figures from
probabilities it already has without importing torch. ml.evaluate scores images with a
checkpoint and hands the probabilities here; ml.plots draws an `Evaluation`.

    from ml.scores import evaluate_scores
    evaluate_scores([0, 1, 1], [0.2, 0.7, 0.4], threshold=0.5).to_dict()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ml import metrics

N_BOOTSTRAP = 1000
ECE_BINS = 10
# Rows (truth) and columns (prediction) of the subtype question's 3 x 3 confusion matrix.
THREE_WAY = ("normal", "bacterial", "viral")


@dataclass(frozen=True)
class SubtypeEvaluation:
    """The second question's figures: bacterial vs viral on the pneumonia images whose
    subtype is known (sensitivity: bacterial called bacterial; specificity: viral called
    viral), at the model's subtype threshold; and the 3 x 3 matrix of both questions."""

    auc: float
    auc_ci: tuple[float, float]
    sensitivity: float
    specificity: float
    accuracy: float
    threshold: float
    n: dict[str, int]  # bacterial, viral, and pneumonia of unknown subtype (not scored)
    # confusion[truth][predicted] over THREE_WAY: a normal call comes from the pneumonia
    # threshold, the subtype of a pneumonia call from the subtype threshold. Pneumonia of
    # unknown subtype is left out of it.
    confusion: dict[str, dict[str, int]]
    y_true: tuple[int, ...] = field(default=(), repr=False)  # 1 bacterial
    scores: tuple[float, ...] = field(default=(), repr=False)  # P(bacterial | pneumonia)

    def to_dict(self) -> dict:
        return metrics.nan_to_none(
            {
                "auc": self.auc,
                "auc_ci": list(self.auc_ci),
                "sensitivity": self.sensitivity,
                "specificity": self.specificity,
                "accuracy": self.accuracy,
                "threshold": self.threshold,
                "n": dict(self.n),
                "confusion": {truth: dict(row) for truth, row in self.confusion.items()},
            }
        )


def evaluate_subtype(
    y_true: Sequence[int],
    subtypes: Sequence[str],
    scores: Sequence[float],
    p_bacterial: Sequence[float],
    *,
    threshold: float,
    subtype_threshold: float,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
) -> SubtypeEvaluation:
    """Figures of the subtype question from per-image truth (y_true 1 = pneumonia, subtypes
    "bacterial" / "viral" / "" unknown) and both answers (P(pneumonia), P(bacterial |
    pneumonia)); `threshold` is the pneumonia question's."""
    if not len(y_true) == len(subtypes) == len(scores) == len(p_bacterial):
        raise ValueError("y_true, subtypes, scores and p_bacterial differ in length")
    known = [i for i, s in enumerate(subtypes) if y_true[i] and s in THREE_WAY[1:]]
    y = [int(subtypes[i] == "bacterial") for i in known]
    q = [float(p_bacterial[i]) for i in known]
    confusion = {truth: dict.fromkeys(THREE_WAY, 0) for truth in THREE_WAY}
    for i, (truth, p, b) in enumerate(zip(subtypes, scores, p_bacterial, strict=True)):
        row = "normal" if not y_true[i] else truth
        if row not in THREE_WAY:
            continue  # pneumonia of unknown subtype
        called = "normal" if p < threshold else ("bacterial" if b >= subtype_threshold else "viral")
        confusion[row][called] += 1
    if y:
        sensitivity, specificity = metrics.sensitivity_specificity(y, q, subtype_threshold)
        accuracy = sum(
            (v >= subtype_threshold) == bool(t) for t, v in zip(y, q, strict=True)
        ) / len(y)
    else:
        sensitivity = specificity = accuracy = float("nan")
    return SubtypeEvaluation(
        auc=metrics.roc_auc(y, q) if y else float("nan"),
        auc_ci=metrics.bootstrap_auc_ci(y, q, n=n_bootstrap, seed=seed)
        if y
        else (float("nan"), float("nan")),
        sensitivity=sensitivity,
        specificity=specificity,
        accuracy=accuracy,
        threshold=float(subtype_threshold),
        n={
            "bacterial": sum(y),
            "viral": len(y) - sum(y),
            "unknown": sum(1 for i, s in enumerate(subtypes) if y_true[i] and not s),
        },
        confusion=confusion,
        y_true=tuple(y),
        scores=tuple(q),
    )


@dataclass(frozen=True)
class Evaluation:
    """Figures for one model on one labelled set. `to_dict()` is the JSON ml.evaluate writes."""

    auc: float
    auc_ci: tuple[float, float]  # 95% stratified percentile bootstrap
    accuracy: float
    sensitivity: float
    specificity: float
    threshold: float
    confusion: dict[str, int]  # tn, fp, fn, tp
    brier: float
    ece: float  # equal-width bins on P(positive), see metrics.expected_calibration_error
    n: dict[str, int]  # {negative label: ..., positive label: ..., "total": ...}
    sensitivity_at_90_specificity: float
    specificity_at_95_sensitivity: float
    model: dict | None = None  # arch, created_at, data_hash (and checkpoint path)
    data: dict | None = None  # source, manifest_hash
    labels: tuple[str, str] = ("NORMAL", "PNEUMONIA")  # (negative, positive)
    subtype: SubtypeEvaluation | None = None  # None: the model does not answer it
    # What the figures were computed from, kept for plots; not part of to_dict().
    y_true: tuple[int, ...] = field(default=(), repr=False)
    scores: tuple[float, ...] = field(default=(), repr=False)
    p_bacterial: tuple[float | None, ...] = field(default=(), repr=False)  # with `subtype`

    def to_dict(self) -> dict:
        """JSON-ready: NaN (a figure that needs both classes, given one) becomes None, because
        strict JSON and PostgreSQL's jsonb have no NaN."""
        d = {
            "auc": self.auc,
            "auc_ci": list(self.auc_ci),
            "accuracy": self.accuracy,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "threshold": self.threshold,
            "confusion": dict(self.confusion),
            "brier": self.brier,
            "ece": self.ece,
            "n": dict(self.n),
            "sensitivity_at_90_specificity": self.sensitivity_at_90_specificity,
            "specificity_at_95_sensitivity": self.specificity_at_95_sensitivity,
            "model": self.model,
            "data": self.data,
            "subtype": None if self.subtype is None else self.subtype.to_dict(),
        }
        return metrics.nan_to_none(d)


def evaluate_scores(
    y_true: Sequence[int],
    scores: Sequence[float],
    threshold: float,
    *,
    labels: tuple[str, str] = ("NORMAL", "PNEUMONIA"),
    model: dict | None = None,
    data: dict | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    subtype: SubtypeEvaluation | None = None,
) -> Evaluation:
    """All figures from 0/1 truth (1 = labels[1]) and P(positive) scores; no model needed.
    `subtype` (evaluate_subtype) rides along for a model that answers that question too."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], got {threshold}")
    y = [int(bool(v)) for v in y_true]
    s = [float(v) for v in scores]
    if len(y) != len(s):
        raise ValueError(f"y_true has {len(y)} values but scores has {len(s)}")
    if not y:
        raise ValueError("nothing to evaluate: no examples")
    counts = metrics.confusion(y, s, threshold)
    sensitivity, specificity = metrics.sensitivity_specificity(y, s, threshold)
    n_pos = sum(y)
    return Evaluation(
        auc=metrics.roc_auc(y, s),
        auc_ci=metrics.bootstrap_auc_ci(y, s, n=n_bootstrap, seed=seed),
        accuracy=(counts["tp"] + counts["tn"]) / len(y),
        sensitivity=sensitivity,
        specificity=specificity,
        threshold=float(threshold),
        confusion=counts,
        brier=metrics.brier(y, s),
        ece=metrics.expected_calibration_error(y, s, n_bins=ECE_BINS),
        n={labels[0]: len(y) - n_pos, labels[1]: n_pos, "total": len(y)},
        sensitivity_at_90_specificity=metrics.sensitivity_at_specificity(y, s, 0.90),
        specificity_at_95_sensitivity=metrics.specificity_at_sensitivity(y, s, 0.95),
        model=model,
        data=data,
        labels=labels,
        subtype=subtype,
        y_true=tuple(y),
        scores=tuple(s),
    )


def format_table(evaluation: Evaluation) -> str:
    e = evaluation
    c = e.confusion
    neg, pos = e.labels
    low, high = e.auc_ci

    def ratio(hits: int, total: int) -> str:
        return f"({hits}/{total})"

    rows = [
        ("images", f"{e.n['total']} ({neg} {e.n[neg]}, {pos} {e.n[pos]})"),
        ("ROC AUC", f"{e.auc:.3f}  95% CI {low:.3f}-{high:.3f} (stratified bootstrap)"),
        ("threshold", f"{e.threshold:.4f}"),
        ("sensitivity", f"{e.sensitivity:.3f}  {ratio(c['tp'], c['tp'] + c['fn'])}"),
        ("specificity", f"{e.specificity:.3f}  {ratio(c['tn'], c['tn'] + c['fp'])}"),
        ("accuracy", f"{e.accuracy:.3f}  {ratio(c['tp'] + c['tn'], e.n['total'])}"),
        ("sensitivity @ 90% spec", f"{e.sensitivity_at_90_specificity:.3f}"),
        ("specificity @ 95% sens", f"{e.specificity_at_95_sensitivity:.3f}"),
        ("Brier score", f"{e.brier:.4f}"),
        (f"ECE ({ECE_BINS} bins)", f"{e.ece:.4f}"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    head = f"predicted {neg}", f"predicted {pos}"
    col = max(len(head[0]), len(head[1]), 6)
    lines += [
        "",
        f"{'truth':<{width}}  {head[0]:>{col}}  {head[1]:>{col}}",
        f"{neg:<{width}}  {c['tn']:>{col}}  {c['fp']:>{col}}",
        f"{pos:<{width}}  {c['fn']:>{col}}  {c['tp']:>{col}}",
    ]
    if e.subtype is not None:
        lines += ["", *format_subtype(e.subtype)]
    return "\n".join(lines)


def format_subtype(t: SubtypeEvaluation) -> list[str]:
    low, high = t.auc_ci
    rows = [
        ("subtype images", f"bacterial {t.n['bacterial']}, viral {t.n['viral']} "
         f"(pneumonia of unknown subtype, not scored: {t.n['unknown']})"),
        ("subtype ROC AUC", f"{t.auc:.3f}  95% CI {low:.3f}-{high:.3f}"),
        ("subtype threshold", f"{t.threshold:.4f} on P(bacterial | pneumonia)"),
        ("sensitivity", f"{t.sensitivity:.3f}  (bacterial called bacterial)"),
        ("specificity", f"{t.specificity:.3f}  (viral called viral)"),
        ("accuracy", f"{t.accuracy:.3f}"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += ["", f"{'truth':<{width}}  " + "  ".join(f"{c:>9}" for c in THREE_WAY)]
    for truth in THREE_WAY:
        row = t.confusion[truth]
        lines.append(f"{truth:<{width}}  " + "  ".join(f"{row[c]:>9}" for c in THREE_WAY))
    return lines
