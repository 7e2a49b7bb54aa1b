"""Bacterial or viral: one network for both questions against a binary model of the same
recipe, on the carved-out test split and on shifted copies of it. Prints two tables;
resumable (a run whose checkpoint exists is not trained again, scores are cached).

    .venv/bin/python -m bench.subtype --data ../shared/data/chest_xray --out var/subtype \
        --heads none,two_heads,three_class --seed 0

Each run is `python -m ml.train --arch efficientnet_lite0 --pretrained imagenet --recipe crops
--seed S --test-split acquisition --subtype-head H` (bench.recipes' command plus the head),
one after the other. The same seed gives every head the same patients in each split.

Which images chose what: each run's epoch (by pneumonia AUC), pneumonia threshold
(sensitivity >= 0.95) and subtype threshold (Youden) were chosen on its validation split; the
test split (the most recent acquisitions of each numbering family) and its shifted copies
(bench.hard_proxy's calibrated families, --families) chose nothing, and judge. The subtype is
read from the Kermany file names, as training reads it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench.hard_proxy import parse_families, setting, shifted_bytes
from bench.recipes import train
from ml import metrics

DEFAULT_FAMILIES = (
    "tighter collimation=0.75,wider collimation=0.2,lower resolution=0.18,noise=12,JPEG=8"
)


def scores(checkpoint: Path, items: list, shift, cache: Path, batch_size: int = 32) -> dict:
    """Per image: pneumonia truth, subtype truth ("" none), P(pneumonia), P(bacterial) (NaN
    for a binary model), on `items` shifted by `shift` (None: as they are); cached."""
    if cache.is_file():
        return dict(np.load(cache))
    from ml.data import subtype_of
    from ml.inference import Predictor

    predictor = Predictor.from_checkpoint(checkpoint)
    p, b = [], []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        sources = [
            item.path if shift is None else shifted_bytes(item.path, shift) for item in batch
        ]
        for prediction in predictor.predict_batch(sources):
            p.append(prediction.probability)
            b.append(np.nan if prediction.p_bacterial is None else prediction.p_bacterial)
    out = {
        "y": np.array([int(item.label == "PNEUMONIA") for item in items], np.int8),
        "subtype": np.array([subtype_of(item) for item in items]),
        "p": np.asarray(p),
        "b": np.asarray(b),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def figures(data: dict, threshold: float, subtype_threshold: float | None) -> dict:
    """The table's figures of one set of scores: the pneumonia question's, and the subtype's
    as ml.evaluate reports them (ml.scores.evaluate_subtype)."""
    from ml.scores import evaluate_subtype

    y, p = data["y"], data["p"]
    sens, spec = metrics.sensitivity_specificity(y, p, threshold)
    row = {"auc": metrics.roc_auc(y, p), "ci": metrics.bootstrap_auc_ci(y, p, n=1000, seed=0),
           "sens": sens, "spec": spec}  # fmt: skip
    if subtype_threshold is None:
        return row
    t = evaluate_subtype(
        y.tolist(), data["subtype"].tolist(), p.tolist(), data["b"].tolist(),
        threshold=threshold, subtype_threshold=subtype_threshold,
    )  # fmt: skip
    return row | {
        "subtype_auc": t.auc, "subtype_ci": t.auc_ci, "subtype_sens": t.sensitivity,
        "subtype_spec": t.specificity, "subtype_acc": t.accuracy,
        "n_bacterial": t.n["bacterial"], "n_viral": t.n["viral"],
    }  # fmt: skip


def run_once(args: argparse.Namespace, head: str) -> dict:
    from ml.checkpoint import read_meta
    from ml.data import read_manifest

    checkpoint = args.out / f"{head}-s{args.seed}.pt"
    facts = checkpoint.with_suffix(".run.json")
    if not checkpoint.is_file():
        train_args = argparse.Namespace(
            data=args.data, arch=args.arch,
            train_args=f"--subtype-head {head} {args.train_args}".strip(),
        )  # fmt: skip
        facts.write_text(json.dumps({"wall_s": train(train_args, "crops", args.seed, checkpoint)}))
    meta = read_meta(checkpoint)
    st = meta.subtype.threshold if meta.subtype else None
    test = read_manifest(checkpoint.with_suffix(".test.csv"))
    cache = args.out / "scores"
    result = {
        "head": head,
        "minutes": json.loads(facts.read_text())["wall_s"] / 60 if facts.is_file() else np.nan,
        "val_auc": meta.metrics["val_auc"],
        "val_subtype_auc": (meta.metrics.get("subtype") or {}).get("val_auc"),
        "threshold": meta.threshold,
        "subtype_threshold": st,
        "test": figures(scores(checkpoint, test, None, cache / f"{checkpoint.stem}.test.npz"),
                        meta.threshold, st),
        "shifted": {},
    }  # fmt: skip
    for family, value in args.families.items():
        key = f"{checkpoint.stem}.{family.replace(' ', '_')}-{value:g}.npz"
        data = scores(checkpoint, test, setting(family, value), cache / key)
        result["shifted"][family] = figures(data, meta.threshold, st)
    return result


def _f(value, digits: int = 3) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and np.isnan(value))
        else (f"{value:.{digits}f}")
    )


def report(rows: list[dict]) -> str:
    lines = [
        "| head | min | val AUC | test AUC (95% CI) | sens / spec @ thr | val subtype AUC "
        "| test subtype AUC (95% CI) | subtype sens / spec / acc @ subtype thr |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["test"]
        subtype = "- | -"
        if "subtype_auc" in t:
            lo, hi = t["subtype_ci"]
            subtype = (
                f"{_f(t['subtype_auc'])} ({_f(lo)}-{_f(hi)}) | {_f(t['subtype_sens'])} / "
                f"{_f(t['subtype_spec'])} / {_f(t['subtype_acc'])} "
                f"(thr {_f(r['subtype_threshold'])}; {t['n_bacterial']} b, {t['n_viral']} v)"
            )
        lo, hi = t["ci"]
        lines.append(
            f"| {r['head']} | {_f(r['minutes'], 1)} | {_f(r['val_auc'], 4)} | {_f(t['auc'])} "
            f"({_f(lo)}-{_f(hi)}) | {_f(t['sens'])} / {_f(t['spec'])} (thr {_f(r['threshold'])})"
            f" | {_f(r['val_subtype_auc'])} | {subtype} |"
        )
    lines += [
        "",
        "| head | shifted test split | AUC | sens / spec @ thr | subtype AUC "
        "| subtype sens / spec @ subtype thr |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for family, t in r["shifted"].items():
            lines.append(
                f"| {r['head']} | {family} | {_f(t['auc'])} | {_f(t['sens'])} / {_f(t['spec'])}"
                f" | {_f(t.get('subtype_auc'))} | {_f(t.get('subtype_sens'))} / "
                f"{_f(t.get('subtype_spec'))} |"
            )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> str:
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = [run_once(args, head) for head in args.heads]
    table = report(rows)
    print(table, flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s for this invocation)", flush=True)
    return table


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Subtype heads against a binary model")
    add = parser.add_argument
    add("--data", type=Path, required=True, help="Kaggle-layout training folder")
    add("--out", type=Path, default=Path("var/subtype"), help="checkpoints, logs and scores")
    add("--heads", type=lambda s: s.split(","), default=["none", "two_heads", "three_class"],
        help="--subtype-head values to train, e.g. none,two_heads")  # fmt: skip
    add("--seed", type=int, default=0, help="ml.train --seed of every run")
    add("--arch", default="efficientnet_lite0", help="architecture (ImageNet weights)")
    add("--train-args", default="", help="more ml.train flags")
    add("--families", type=parse_families, default=parse_families(DEFAULT_FAMILIES),
        help="shifts of the test split, 'family=value,...' (bench.hard_proxy's names)")  # fmt: skip
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
