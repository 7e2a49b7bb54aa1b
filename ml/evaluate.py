"""Evaluate a checkpoint on a labelled image set: AUC with a bootstrap CI, the operating point,
calibration, a table on stdout, a JSON file and optional plots.

    python -m ml.evaluate --checkpoint var/models/demo.pt \
        --data ../shared/data/full_resolution --json var/eval/full_resolution.json \
        --plots var/eval/full_resolution

--data takes the Kaggle layout (DIR/{NORMAL,PNEUMONIA}, or DIR/test/... which is preferred
over DIR/train/... so a data set root is never scored on its training split); --data-manifest
takes a CSV with path,label columns. The decision threshold is the checkpoint's unless
--threshold is given. A model that also answers bacterial vs viral (ml.heads) gets a
`subtype` report beside it (AUC with CI on the pneumonia images of known subtype, sensitivity,
specificity and accuracy at its subtype threshold, the 3 x 3 normal / bacterial / viral
matrix; plots subtype_roc.png and subtype_confusion.png), the subtype read from Kermany file
names or a manifest's `subtype` column exactly as ml.train reads it. Figures from stored
probabilities, without torch: ml.scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ml.data import CLASS_NAMES, Item, manifest_hash, read_manifest, scan_folder, subtype_of
from ml.inference import Predictor
from ml.scores import (  # noqa: F401 - re-exported: the figures live in the torch-free half
    ECE_BINS,
    N_BOOTSTRAP,
    Evaluation,
    evaluate_scores,
    evaluate_subtype,
    format_table,
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
    bacterial: list[float | None] = []
    for start in range(0, len(items), batch_size):
        batch = [image for image, _ in items[start : start + batch_size]]
        predictions = predictor.predict_batch(batch)
        scores += [p.probability for p in predictions]
        bacterial += [p.p_bacterial for p in predictions]
    negative = meta.class_names[1 - meta.positive_index]
    y_true = [int(label == meta.positive_class) for _, label in items]
    threshold = meta.threshold if threshold is None else threshold
    subtype = None
    if meta.subtype is not None:  # the subtype as training reads it: names, manifests
        subtype = evaluate_subtype(
            y_true, [subtype_of(item) for item in items], scores, bacterial,
            threshold=threshold, subtype_threshold=meta.subtype.threshold,
        )  # fmt: skip
    evaluation = evaluate_scores(
        y_true,
        scores,
        threshold,
        subtype=subtype,
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
    if subtype is None:
        return evaluation
    # Per image, for figures on a part of the items (a site audit's evaluation part).
    return dataclasses.replace(evaluation, p_bacterial=tuple(bacterial))


# ---------------------------------------------------------------------------------------------
# Command line


def scan_eval_folder(root: str | os.PathLike) -> list[Item]:
    """Images of a Kaggle-layout folder: ROOT/{NORMAL,PNEUMONIA}, else ROOT/test/..., else
    (as ml.data.scan_folder does) ROOT/train/..."""
    root = Path(root)
    if not (root / CLASS_NAMES[0]).is_dir() and (root / "test").is_dir():
        root = root / "test"
    return scan_folder(root)


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
