"""Rank training images by how likely their label is wrong (fastai's ImageClassifierCleaner,
done with out-of-fold predictions instead of the model's own training-set losses).

    python -m ml.cleaning --data ../shared/data/chest_xray --out var/cleaning.csv
    python -m ml.cleaning --manifest export/manifest.csv --out var/cleaning.csv \
        --checkpoint var/models/effl0-full.pt --folds 5 --seed 0

Three steps, each usable on its own:

1. `extract_features`: pooled penultimate features (the classifier's input) of a frozen body,
   computed once: the ImageNet EfficientNet-Lite0 by default, or a checkpoint's body.
2. `out_of_fold_probabilities` (ml.label_issues, numpy only): k folds, stratified by class
   and grouped by patient; per fold a class-balanced L2 logistic regression on the other
   folds' standardised features predicts the held-out fold. No image is scored by a head that
   saw it or its patient's other images.
3. `find_label_issues` (ml.label_issues; confident learning, Northcutt et al. 2021) and
   `rank_label_issues` (`rank_probabilities` for stored probabilities): label issues first,
   then by cross-entropy of the given label, highest first.

    from ml.cleaning import rank_label_issues
    results = rank_label_issues(items)  # [CleaningResult(path, label, probability, ...), ...]

Why a linear head on frozen features: a fine-tuned network memorises wrong labels, so its loss
on its own training images hides them; k full fine-tunes would take hours on CPU, while k
logistic regressions on cached features take seconds. A checkpoint trained on these very
images has seen their labels; its features make issues less visible than ImageNet's do.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ml import data, metrics
from ml.data import CLASS_NAMES, POSITIVE_CLASS, Item, patient_of
from ml.label_issues import find_label_issues, out_of_fold_probabilities
from ml.models import ARCHITECTURES, build_model, default_preprocessing
from ml.preprocessing import Preprocessing, eval_transform, open_image

CSV_COLUMNS = ("path", "label", "probability", "loss", "self_confidence", "label_issue", "rank")


@dataclass(frozen=True)
class CleaningResult:
    path: str
    label: str  # the given label, the one being questioned
    probability: float  # out-of-fold P(PNEUMONIA)
    loss: float  # cross-entropy of the given label under that probability
    self_confidence: float  # out-of-fold P(given label); lower is worse
    label_issue: bool  # confident learning flags it (see find_label_issues)
    rank: int  # 1 = the most likely mislabelled image


# ---------------------------------------------------------------------------------------------
# 1. Features, once


def _feature_model(
    backbone: str, checkpoint: str | os.PathLike | None, input_size: int
) -> tuple[nn.Module, Preprocessing]:
    """The body whose pooled features we read, and the preprocessing its weights expect."""
    if checkpoint is not None:
        from ml.checkpoint import load_checkpoint

        model, meta = load_checkpoint(checkpoint)
        pre = meta.preprocessing  # the pixels it was trained on; input_size does not apply
    else:
        model = build_model(backbone, pretrained="imagenet")
        pre = default_preprocessing(backbone, input_size)
    # Both architectures end in one nn.Linear fed by the pooled features: swapping it for an
    # Identity makes the forward pass return them, (B, 3, S, S) -> (B, D).
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    model.set_submodule(name, nn.Identity())
    return model.eval().to(memory_format=torch.channels_last), pre


def extract_features(
    items: Sequence[Item],
    *,
    backbone: str = "efficientnet_lite0",
    checkpoint: str | os.PathLike | None = None,
    batch_size: int = 32,
    input_size: int = 160,
) -> np.ndarray:
    """(N, D) float32 penultimate features of `items`, in order, through the eval transform.

    With `checkpoint`, its body and its stored preprocessing are used; `backbone` and
    `input_size` then do not apply.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, pre = _feature_model(backbone, checkpoint, input_size)
    transform = eval_transform(pre)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            batch = [
                transform(open_image(item[0], size=pre.input_size))
                for item in items[start : start + batch_size]
            ]
            x = torch.stack(batch).contiguous(memory_format=torch.channels_last)  # (B, 3, S, S)
            chunks.append(model(x).float().numpy())  # (B, D)
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# 2. Out-of-fold probabilities and confident learning: ml.label_issues
# 3. The ranking


def rank_label_issues(
    items: Sequence[Item],
    *,
    folds: int = 5,
    seed: int = 0,
    backbone: str = "efficientnet_lite0",
    checkpoint: str | os.PathLike | None = None,
    input_size: int = 160,
    batch_size: int = 32,
    features: np.ndarray | None = None,
) -> list[CleaningResult]:
    """All `items`, label issues first, then by loss (highest first); rank 1 is the worst.

    `features` (N, D) skips extraction, e.g. features computed once for several seeds.
    Manifest weights are not used: every image counts once in every head that trains on it.
    """
    _check_labels(items)
    if features is None:
        features = extract_features(
            items,
            backbone=backbone,
            checkpoint=checkpoint,
            batch_size=batch_size,
            input_size=input_size,
        )
    y = np.array([int(label == POSITIVE_CLASS) for _, label in items])
    groups = [patient_of(item) for item in items]
    p1 = out_of_fold_probabilities(features, y, groups, folds=folds, seed=seed)
    return rank_probabilities(items, p1)


def rank_probabilities(items: Sequence[Item], probabilities: np.ndarray) -> list[CleaningResult]:
    """The ranking of `items` given their out-of-fold P(PNEUMONIA), e.g. stored ones."""
    _check_labels(items)
    y = np.array([int(label == POSITIVE_CLASS) for _, label in items])
    p1 = np.asarray(probabilities, dtype=np.float64)  # (N,)
    self_confidence = np.where(y == 1, p1, 1.0 - p1)
    loss = -np.log(np.clip(self_confidence, 1e-12, 1.0))
    issues = find_label_issues(y, p1)
    # A flagged image can have a lower loss than an unflagged one (the two classes have
    # their own thresholds); the flag is the stronger evidence, so it sorts first.
    order = sorted(range(len(items)), key=lambda i: (not issues[i], -loss[i], i))
    return [
        CleaningResult(
            path=os.fspath(items[i][0]),
            label=items[i][1],
            probability=float(p1[i]),
            loss=float(loss[i]),
            self_confidence=float(self_confidence[i]),
            label_issue=bool(issues[i]),
            rank=rank,
        )
        for rank, i in enumerate(order, start=1)
    ]


def _check_labels(items: Sequence[Item]) -> None:
    unknown = sorted({label for _, label in items} - set(CLASS_NAMES))
    if unknown:
        raise ValueError(f"labels {unknown} are not among {list(CLASS_NAMES)}")


# ---------------------------------------------------------------------------------------------
# Command line


def write_results(csv_path: str | os.PathLike, results: Sequence[CleaningResult]) -> Path:
    """The ranked list as CSV; label_issue is 1/0 like the manifests' exclude column."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in results:
            writer.writerow(
                [r.path, r.label, f"{r.probability:.6f}", f"{r.loss:.6f}",
                 f"{r.self_confidence:.6f}", int(r.label_issue), r.rank]
            )  # fmt: skip
    return csv_path


def format_top(results: Sequence[CleaningResult], n: int) -> str:
    lines = [f"{'rank':>5}  {'issue':<5}  {'label':<9}  {'P(pneu)':>7}  {'loss':>6}  image"]
    for r in results[:n]:
        lines.append(
            f"{r.rank:>5}  {'yes' if r.label_issue else '':<5}  {r.label:<9}  "
            f"{r.probability:>7.3f}  {r.loss:>6.2f}  {Path(r.path).name}"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> list[CleaningResult]:
    if args.threads:
        torch.set_num_threads(args.threads)
    items = data.items_from_args(args)
    if args.limit_per_class:
        items = data.limit_per_class(items, args.limit_per_class, seed=args.seed)
    counts = Counter(label for _, label in items)
    print(f"{len(items)} images ({', '.join(f'{c} {counts[c]}' for c in CLASS_NAMES)})")
    start = time.perf_counter()
    features = extract_features(
        items,
        backbone=args.backbone,
        checkpoint=args.checkpoint,
        batch_size=args.batch_size,
        input_size=args.input_size,
    )
    body = args.checkpoint or f"{args.backbone} (ImageNet)"
    print(f"features {features.shape} from {body} in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    results = rank_label_issues(items, folds=args.folds, seed=args.seed, features=features)
    y = [int(r.label == POSITIVE_CLASS) for r in results]
    auc = metrics.roc_auc(y, [r.probability for r in results])
    seconds = time.perf_counter() - start
    print(f"{args.folds} out-of-fold heads in {seconds:.1f} s, out-of-fold ROC AUC {auc:.4f}")
    flagged = Counter(r.label for r in results if r.label_issue)
    print(
        "label issues: "
        + ", ".join(f"{c} {flagged[c]}/{counts[c]}" for c in CLASS_NAMES)
        + f" (total {sum(flagged.values())})"
    )
    print(format_top(results, args.top))
    print(f"wrote {write_results(args.out, results)}")
    return results


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Rank training images by how likely their label is wrong", add_help=add_help
    )
    add = parser.add_argument
    data.add_source_arguments(parser)
    add("--out", required=True, type=Path, help="where to write the ranked list (CSV)")
    add("--folds", default=5, type=int, help="cross-validation folds, grouped by patient")
    add("--seed", default=0, type=int, help="seed of the folds and of --limit-per-class")
    add(
        "--checkpoint",
        type=Path,
        help="read features from this checkpoint's body (and its preprocessing) "
        "instead of the ImageNet --backbone",
    )
    add(
        "--backbone",
        default="efficientnet_lite0",
        choices=ARCHITECTURES,
        help="ImageNet body used without --checkpoint",
    )
    add("--input-size", default=160, type=int, help="input size for --backbone, in pixels")
    add("--batch-size", default=32, type=int, help="images per forward pass")
    add("--limit-per-class", type=int, help="at most N images per class (seeded, whole patients)")
    add("--top", default=20, type=int, help="how many of the ranked images to print")
    add("--threads", default=0, type=int, help="torch CPU threads (0: torch's default)")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
