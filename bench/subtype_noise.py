"""What a subtype head costs the pneumonia question when the subtype labels carry no signal.

    .venv/bin/python -m bench.subtype_noise

Synthetic X-rays (tests.synthetic, 60 per class, 64 px) whose pneumonia file names say
bacteria or virus at random, either with images that show no difference ("noise") or with
the subtype's own look ("learnable": lobar bacterial, diffuse viral); the schedule of
tests/ml/test_fine_tune.py (ImageNet EfficientNet-Lite0, LR finder, 3 frozen + 3 unfrozen
epochs), once per --subtype-head. Prints the learning rate the LR finder chose, the pneumonia
AUC on the carved-out test split (which chose nothing) and the best validation subtype AUC.
One run at a time, a few minutes in all on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ml.checkpoint import read_meta
from ml.data import read_manifest
from ml.inference import Predictor
from ml.metrics import roc_auc
from ml.train import main as train
from ml.train import parse_config
from tests.synthetic import write_dataset


def run(root: Path, head: str, learnable: bool) -> dict:
    data = root / ("learnable" if learnable else "noise")
    if not data.is_dir():
        write_dataset(data, 60, size=64, seed=7, subtypes=learnable)
    out = root / f"{data.name}-{head}.pt"
    config = parse_config(
        ["--data", str(data), "--out", str(out), "--print-freq", "0", "--arch",
         "efficientnet_lite0", "--pretrained", "imagenet", "--img-size", "64", "--batch-size",
         "8", "--freeze-epochs", "3", "--epochs", "3", "--lr-find-iters", "40",
         "--subtype-head", head]
    )  # fmt: skip
    meta = read_meta(train(config))
    test = read_manifest(meta.train_args["test_manifest"])
    predictions = Predictor.from_checkpoint(out).predict_batch([item.path for item in test])
    y = [int(item.label == "PNEUMONIA") for item in test]
    subtype = [h["val_subtype_auc"] for h in meta.metrics["history"] if h["val_subtype_auc"]]
    return {
        "labels": data.name,
        "head": head,
        "lr": meta.train_args["lr_used"],
        "auc": roc_auc(y, [p.probability for p in predictions]),
        "subtype": max(subtype) if subtype else None,
    }


def main(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            run(Path(tmp), head, learnable) for learnable in (False, True) for head in args.heads
        ]
    lines = [
        "| subtype labels | head | LR finder's rate | test pneumonia AUC | best val subtype AUC |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        subtype = "-" if r["subtype"] is None else f"{r['subtype']:.3f}"
        lines.append(
            f"| {r['labels']} | {r['head']} | {r['lr']:.2e} | {r['auc']:.3f} | {subtype} |"
        )
    table = "\n".join(lines)
    print(table, flush=True)
    return table


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="A subtype head on uninformative labels")
    parser.add_argument(
        "--heads", type=lambda s: s.split(","), default=["none", "two_heads", "three_class"],
        help="--subtype-head values, e.g. none,three_class",
    )  # fmt: skip
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
