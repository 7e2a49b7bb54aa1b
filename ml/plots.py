"""Evaluation plots as PNG files: ROC curve, confusion matrix, reliability diagram.

    from ml.plots import save_plots
    save_plots(evaluate_checkpoint(...), "var/eval/run1")  # roc.png, confusion.png, reliability.png

Figures are drawn with matplotlib's object API on the Agg canvas, never through pyplot: no
global figure state and no GUI backend, so this is safe in a worker or a web process.
Only callers that ask for plots import this module; inference never needs matplotlib.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ml import metrics
from ml.scores import ECE_BINS, THREE_WAY, Evaluation, SubtypeEvaluation

DPI = 120


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)  # attaches the Agg canvas that savefig renders with
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _roc(
    y_true, scores, auc: float, ci: tuple[float, float], point: tuple[float, float], *,
    point_label: str, xlabel: str, ylabel: str, title: str,
) -> Figure:  # fmt: skip
    """A ROC curve with the chance diagonal and the operating point (1 - spec, sens)."""
    fpr, tpr, _ = metrics.roc_curve(y_true, scores)
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    low, high = ci
    ax.plot(fpr, tpr, lw=2, label=f"AUC {auc:.3f} (95% CI {low:.3f}-{high:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.plot(*point, "o", color="crimson", label=point_label)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def _counts(counts: np.ndarray, labels: list[str], title: str, size: tuple) -> Figure:
    """Counts, rows = truth, columns = prediction, shaded by share of the row."""
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    fig = Figure(figsize=size)
    ax = fig.add_subplot()
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), count in np.ndenumerate(counts):
        colour = "white" if shares[i, j] > 0.6 else "black"
        ax.text(j, i, f"{count}\n{shares[i, j]:.0%}", ha="center", va="center", color=colour)
    ticks = list(range(len(labels)))
    ax.set_xticks(ticks, labels=labels)
    ax.set_yticks(ticks, labels=labels)
    ax.set(xlabel="predicted", ylabel="truth", title=title)
    return fig


def plot_roc(evaluation: Evaluation, path: str | os.PathLike) -> Path:
    """The ROC curve with the chance diagonal and the operating point at the threshold."""
    e = evaluation
    fig = _roc(
        e.y_true, e.scores, e.auc, e.auc_ci, (1.0 - e.specificity, e.sensitivity),
        point_label=f"threshold {e.threshold:.3f}",
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)", title=f"ROC, n = {e.n['total']}",
    )  # fmt: skip
    return _save(fig, Path(path))


def plot_confusion(evaluation: Evaluation, path: str | os.PathLike) -> Path:
    """2 x 2 counts, rows = truth, columns = prediction, shaded by share of the row."""
    e = evaluation
    c = e.confusion
    counts = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])  # (truth, predicted)
    fig = _counts(counts, list(e.labels), f"threshold {e.threshold:.3f}", (4.5, 4))
    return _save(fig, Path(path))


def plot_reliability(evaluation: Evaluation, path: str | os.PathLike) -> Path:
    """Share of positives against mean P(positive) per bin (on the diagonal = calibrated),
    above a histogram of how many images each bin holds."""
    e = evaluation
    bins = metrics.reliability_bins(e.y_true, e.scores, ECE_BINS)
    centres = (bins.edges[:-1] + bins.edges[1:]) / 2.0
    width = bins.edges[1] - bins.edges[0]
    fig = Figure(figsize=(4.5, 5.5))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    filled = bins.count > 0
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    top.plot(
        bins.mean_probability[filled],
        bins.fraction_positive[filled],
        "o-",
        color="crimson",
        label="this model (one point per bin)",
    )
    top.set(ylim=(0, 1), ylabel="share of positives", title=f"ECE {e.ece:.3f}, Brier {e.brier:.3f}")
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(centres, bins.count, width=width * 0.9, color="grey")
    bottom.set(xlim=(0, 1), xlabel=f"P({e.labels[1]})", ylabel="images")
    return _save(fig, Path(path))


def plot_subtype_roc(subtype: SubtypeEvaluation, path: str | os.PathLike) -> Path:
    """Bacterial vs viral ROC on the pneumonia images of known subtype, with the operating
    point at the subtype threshold."""
    t = subtype
    fig = _roc(
        t.y_true, t.scores, t.auc, t.auc_ci, (1.0 - t.specificity, t.sensitivity),
        point_label=f"subtype threshold {t.threshold:.3f}",
        xlabel="viral called bacterial (1 - specificity)",
        ylabel="bacterial called bacterial (sensitivity)",
        title=f"bacterial vs viral, {t.n['bacterial']} + {t.n['viral']} images",
    )  # fmt: skip
    return _save(fig, Path(path))


def plot_subtype_confusion(subtype: SubtypeEvaluation, path: str | os.PathLike) -> Path:
    """The 3 x 3 normal / bacterial / viral counts, shaded by share of the row."""
    counts = np.array([[subtype.confusion[r][c] for c in THREE_WAY] for r in THREE_WAY])
    title = f"subtype threshold {subtype.threshold:.3f}"
    return _save(_counts(counts, list(THREE_WAY), title, (5, 4.5)), Path(path))


def save_plots(evaluation: Evaluation, out_dir: str | os.PathLike) -> list[Path]:
    """roc.png, confusion.png and reliability.png in out_dir (created if missing), plus
    subtype_roc.png and subtype_confusion.png for a model that answers the subtype."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_roc(evaluation, out / "roc.png"),
        plot_confusion(evaluation, out / "confusion.png"),
        plot_reliability(evaluation, out / "reliability.png"),
    ]
    t = evaluation.subtype
    if t is not None and len(set(t.y_true)) == 2:
        paths.append(plot_subtype_roc(t, out / "subtype_roc.png"))
    if t is not None:
        paths.append(plot_subtype_confusion(t, out / "subtype_confusion.png"))
    return paths
