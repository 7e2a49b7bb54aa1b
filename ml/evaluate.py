"""Evaluate a checkpoint on a labelled image set: AUC with a bootstrap CI, the operating point,
calibration, a table on stdout, a JSON file and optional plots.

    python -m ml.evaluate --checkpoint var/models/demo-resnet34.pt \
        --data ../shared/data/full_resolution --json var/eval/full_resolution.json \
        --plots var/eval/full_resolution

--data takes the Kaggle layout (DIR/{NORMAL,PNEUMONIA}, or DIR/test/... which is preferred
over DIR/train/... so a data set root is never scored on its training split); --data-manifest
takes a CSV with path,label columns. The decision threshold is the checkpoint's unless
--threshold is given. From code, without a model (e.g. stored probabilities):

    from ml.evaluate import evaluate_scores
    evaluate_scores([0, 1, 1], [0.2, 0.7, 0.4], threshold=0.5).to_dict()
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ml import metrics
from ml.data import CLASS_NAMES, Item, manifest_hash, read_manifest, scan_folder
from ml.inference import Predictor

N_BOOTSTRAP = 1000
ECE_BINS = 10


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
    # What the figures were computed from, kept for plots; not part of to_dict().
    y_true: tuple[int, ...] = field(default=(), repr=False)
    scores: tuple[float, ...] = field(default=(), repr=False)

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
) -> Evaluation:
    """All figures from 0/1 truth (1 = labels[1]) and P(positive) scores; no model needed."""
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
        y_true=tuple(y),
        scores=tuple(s),
    )


def evaluate_checkpoint(
    path: str | os.PathLike,
    items: Sequence[Item],
    *,
    threshold: float | None = None,
    batch_size: int = 32,
    source: str | os.PathLike | None = None,
    device: str = "cpu",
) -> Evaluation:
    """Score `items` [(image path, class name)] with the checkpoint at `path`, in batches.

    `threshold` overrides the checkpoint's own; `source` is recorded as where the items came
    from (a folder or manifest)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    predictor = Predictor.from_checkpoint(path, device=device)
    meta = predictor.meta
    unknown = sorted({label for _, label in items} - set(meta.class_names))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model's classes {meta.class_names}")
    scores: list[float] = []
    for start in range(0, len(items), batch_size):
        batch = [image for image, _ in items[start : start + batch_size]]
        scores += [p.probability for p in predictor.predict_batch(batch)]
    negative = meta.class_names[1 - meta.positive_index]
    return evaluate_scores(
        [int(label == meta.positive_class) for _, label in items],
        scores,
        meta.threshold if threshold is None else threshold,
        labels=(negative, meta.positive_class),
        model={
            "arch": meta.arch,
            "created_at": meta.created_at,
            "data_hash": meta.data_hash,
            "checkpoint": os.fspath(path),
        },
        data={
            "source": None if source is None else os.fspath(source),
            "manifest_hash": manifest_hash(items),
        },
    )


# ---------------------------------------------------------------------------------------------
# Command line


def scan_eval_folder(root: str | os.PathLike) -> list[Item]:
    """Images of a Kaggle-layout folder: ROOT/{NORMAL,PNEUMONIA}, else ROOT/test/..., else
    (as ml.data.scan_folder does) ROOT/train/..."""
    root = Path(root)
    if not (root / CLASS_NAMES[0]).is_dir() and (root / "test").is_dir():
        root = root / "test"
    return scan_folder(root)


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
    return "\n".join(lines)


def main(args: argparse.Namespace) -> Evaluation:
    if args.threads:
        torch.set_num_threads(args.threads)
    source = args.data if args.data is not None else args.data_manifest
    items = scan_eval_folder(args.data) if args.data is not None else read_manifest(source)
    evaluation = evaluate_checkpoint(
        args.checkpoint,
        items,
        threshold=args.threshold,
        batch_size=args.batch_size,
        source=source,
        device=args.device,
    )
    model = evaluation.model
    print(f"checkpoint {args.checkpoint} ({model['arch']}, created {model['created_at']})")
    print(f"data       {source} (manifest {evaluation.data['manifest_hash'][:12]})")
    if model["data_hash"] == evaluation.data["manifest_hash"]:
        print("WARNING: these are the images the model was trained and validated on")
    print(format_table(evaluation), flush=True)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(evaluation.to_dict(), indent=2, allow_nan=False) + "\n")
    print(f"wrote {args.json}")
    if args.plots is not None:
        from ml.plots import save_plots  # matplotlib only when plots are asked for

        for path in save_plots(evaluation, args.plots):
            print(f"wrote {path}")
    return evaluation


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint", add_help=add_help)
    add = parser.add_argument
    add("--checkpoint", required=True, type=Path, help="checkpoint written by ml.train")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument(
        "--data", type=Path, help="folder with NORMAL/ and PNEUMONIA/ (or test/... or train/...)"
    )
    data.add_argument(
        "--data-manifest", type=Path, help="CSV manifest with path,label columns (ml.data)"
    )
    add("--json", required=True, type=Path, help="where to write the metrics as JSON")
    add(
        "--plots",
        type=Path,
        default=None,
        help="folder for roc.png, confusion.png, reliability.png",
    )
    add(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold on P(positive) (default: the checkpoint's)",
    )
    add("--batch-size", type=int, default=32, help="images per forward pass")
    add("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
