"""Recipe benchmark: train each recipe with several seeds and judge it on the proxy for
"another hospital" (the most recent acquisitions, held out by ml.train --test-split
acquisition) and on the 16 full-resolution images. Prints one table; resumable.

    .venv/bin/python -m bench.recipes --data ../shared/data/chest_xray \
        --full-resolution ../shared/data/full_resolution --out var/recipes \
        --recipes robust,fastai --seeds 0,1,2

Each run is `python -m ml.train --arch efficientnet_lite0 --pretrained imagenet --recipe R
--seed S --test-split acquisition` (plus --train-args), one after the other, never two at
once (two trainings on two cores run ~10x slower). A run whose checkpoint and scores exist is
not trained again, so the command can be stopped and started. Which images chose what: the
epoch and the stored threshold were chosen on each run's validation split (random patients
of the older acquisitions); the temperature below is fitted on that same split; the proxy and
the full-resolution images chose nothing, and judge.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ml import metrics

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("val", "proxy", "full_res")


def train(args: argparse.Namespace, recipe: str, seed: int, checkpoint: Path) -> float:
    """Train one run in its own process; returns the wall time in seconds."""
    command = [
        sys.executable, "-m", "ml.train", "--data", str(args.data), "--arch", args.arch,
        "--pretrained", "imagenet", "--recipe", recipe, "--seed", str(seed),
        "--test-split", "acquisition", "--out", str(checkpoint), "--print-freq", "0",
        *shlex.split(args.train_args),
    ]  # fmt: skip
    print(f"== training {checkpoint.name}: {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    with open(checkpoint.with_suffix(".log"), "w") as log:
        subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def score(args: argparse.Namespace, checkpoint: Path) -> dict[str, np.ndarray]:
    """0/1 truth and P(pneumonia) of the run's validation split, its proxy (the carved-out
    acquisition test split) and the full-resolution images."""
    from ml.data import read_manifest
    from ml.evaluate import evaluate_checkpoint, scan_eval_folder

    sets = {
        "val": read_manifest(checkpoint.with_suffix(".val.csv")),
        "proxy": read_manifest(checkpoint.with_suffix(".test.csv")),
    }
    if args.full_resolution is not None and args.full_resolution.is_dir():
        sets["full_res"] = scan_eval_folder(args.full_resolution)
    out = {}
    for name, items in sets.items():
        evaluation = evaluate_checkpoint(checkpoint, items)
        out[f"{name}_y"] = np.asarray(evaluation.y_true, dtype=np.int8)
        out[f"{name}_p"] = np.asarray(evaluation.scores, dtype=np.float64)
    return out


def heatmap_share(args: argparse.Namespace, checkpoint: Path) -> dict[str, float]:
    """Mean share of Grad-CAM mass outside ml.gradcam.THORAX_BOX: on the full-resolution
    images, and on the first 32 images of each class of the proxy."""
    from ml.data import read_manifest
    from ml.evaluate import scan_eval_folder
    from ml.gradcam import mass_outside
    from ml.inference import Predictor

    predictor = Predictor.from_checkpoint(checkpoint)
    proxy = read_manifest(checkpoint.with_suffix(".test.csv"))
    normal = [item for item in proxy if item.label == "NORMAL"]
    pneumonia = [item for item in proxy if item.label == "PNEUMONIA"]
    sets = {"proxy": normal[:32] + pneumonia[:32]}
    if args.full_resolution is not None and args.full_resolution.is_dir():
        sets["full_res"] = scan_eval_folder(args.full_resolution)
    shares = {}
    for name, items in sets.items():
        values = []
        for start in range(0, len(items), 16):
            x = predictor.inputs([item.path for item in items[start : start + 16]])
            values += mass_outside(predictor.cams(x)).tolist()
        shares[name] = float(np.nanmean(values))
    return shares


def run_once(args: argparse.Namespace, recipe: str, seed: int) -> dict:
    checkpoint = args.out / f"{recipe}-s{seed}.pt"
    facts = checkpoint.with_suffix(".run.json")
    if not checkpoint.is_file():
        wall = train(args, recipe, seed, checkpoint)
        facts.write_text(json.dumps({"wall_s": wall}))
    scores = checkpoint.with_suffix(".scores.npz")
    if not scores.is_file():
        np.savez(scores, **score(args, checkpoint))
    cams = checkpoint.with_suffix(".cams.json")
    if not cams.is_file():
        cams.write_text(json.dumps(heatmap_share(args, checkpoint)))
    from ml.checkpoint import read_meta

    meta = read_meta(checkpoint)
    data = dict(np.load(scores))
    wall = json.loads(facts.read_text())["wall_s"] if facts.is_file() else float("nan")
    return {
        "recipe": recipe, "seed": seed, "threshold": meta.threshold, "wall_s": wall,
        "outside": json.loads(cams.read_text()), **data,
    }  # fmt: skip


def figures(run: dict) -> dict:
    """The table's figures of one run."""
    t = run["threshold"]
    yv, pv, yp, pp = run["val_y"], run["val_p"], run["proxy_y"], run["proxy_p"]
    temperature = metrics.fit_temperature(yv, pv)
    scaled = metrics.apply_temperature(pp, temperature)
    sens, spec = metrics.sensitivity_specificity(yp, pp, t)
    low, high = metrics.bootstrap_auc_ci(yp, pp, n=1000, seed=0)
    row = {
        "minutes": run["wall_s"] / 60,
        "val_auc": metrics.roc_auc(yv, pv),
        "proxy_auc": metrics.roc_auc(yp, pp),
        "proxy_ci": (low, high),
        "proxy_sens": sens,
        "proxy_spec": spec,
        "proxy_ece": metrics.expected_calibration_error(yp, pp),
        "proxy_brier": metrics.brier(yp, pp),
        "temperature": temperature,
        "proxy_ece_t": metrics.expected_calibration_error(yp, scaled),
        "proxy_brier_t": metrics.brier(yp, scaled),
        "threshold": t,
        "outside_proxy": run["outside"]["proxy"],
        "outside_full_res": run["outside"].get("full_res", float("nan")),
    }
    # Other rules for the threshold, each chosen on validation, each judged on the proxy.
    rules = {
        "sensitivity >= 0.95 (stored)": t,
        "Youden": metrics.youden_threshold(yv, pv),
        "specificity >= 0.95": metrics.choose_threshold_for_specificity(
            yv, pv, min_specificity=0.95
        ),
    }
    row["rules"] = {name: metrics.sensitivity_specificity(yp, pp, th) for name, th in rules.items()}
    tv = metrics.apply_temperature(pv, temperature)
    t_rule = metrics.choose_threshold(yv, tv, min_sensitivity=0.95)
    row["rules"]["sensitivity >= 0.95 after temperature"] = metrics.sensitivity_specificity(
        yp, scaled, t_rule
    )
    if "full_res_y" in run:
        yf, pf = run["full_res_y"], run["full_res_p"]
        row["full_res_auc"] = metrics.roc_auc(yf, pf)
        row["full_res_sens"], row["full_res_spec"] = metrics.sensitivity_specificity(yf, pf, t)
    return row


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def report(rows: list[tuple[dict, dict]]) -> str:
    head = (
        "| recipe | seed | min | val AUC | proxy AUC (95% CI) | proxy sens / spec @ stored thr "
        "| ECE / Brier | T | ECE / Brier after T | full-res AUC | full-res sens / spec "
        "| Grad-CAM off thorax: proxy / full-res |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for run, f in rows:
        low, high = f["proxy_ci"]
        full = (
            f"{f['full_res_auc']:.3f} | {f['full_res_sens']:.3f} / {f['full_res_spec']:.3f}"
            if "full_res_auc" in f
            else "- | -"
        )
        lines.append(
            f"| {run['recipe']} | {run['seed']} | {f['minutes']:.1f} | {f['val_auc']:.4f} | "
            f"{f['proxy_auc']:.3f} ({low:.3f}-{high:.3f}) | {f['proxy_sens']:.3f} / "
            f"{f['proxy_spec']:.3f} (thr {f['threshold']:.3f}) | {f['proxy_ece']:.3f} / "
            f"{f['proxy_brier']:.3f} | {f['temperature']:.2f} | {f['proxy_ece_t']:.3f} / "
            f"{f['proxy_brier_t']:.3f} | {full} | {f['outside_proxy']:.2f} / "
            f"{f['outside_full_res']:.2f} |"
        )
    by_recipe: dict[str, list[dict]] = {}
    for run, f in rows:
        by_recipe.setdefault(run["recipe"], []).append(f)
    lines += [
        "",
        "| recipe (mean ± sd over seeds) | runs | proxy AUC | proxy sens | proxy spec | ECE "
        "| ECE after T | full-res AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for recipe, fs in by_recipe.items():
        cols = ["proxy_auc", "proxy_sens", "proxy_spec", "proxy_ece", "proxy_ece_t"]
        cells = [_mean_sd([f[c] for f in fs]) for c in cols]
        full = _mean_sd([f["full_res_auc"] for f in fs]) if "full_res_auc" in fs[0] else "-"
        lines.append(f"| {recipe} | {len(fs)} | " + " | ".join(cells) + f" | {full} |")
    lines += ["", "| recipe | threshold rule (chosen on validation) | proxy sens | proxy spec |",
              "|---|---|---|---|"]  # fmt: skip
    for recipe, fs in by_recipe.items():
        for rule in fs[0]["rules"]:
            sens = _mean_sd([f["rules"][rule][0] for f in fs])
            spec = _mean_sd([f["rules"][rule][1] for f in fs])
            lines.append(f"| {recipe} | {rule} | {sens} | {spec} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> str:
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:  # seed by seed, so a cut-short run still compares the recipes
        for recipe in args.recipes:
            checkpoint = args.out / f"{recipe}-s{seed}.pt"
            if args.report_only and not checkpoint.with_suffix(".scores.npz").is_file():
                continue
            run = run_once(args, recipe, seed)
            rows.append((run, figures(run)))
    table = report(rows)
    print(table, flush=True)
    return table


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Compare training recipes on the proxy")
    add = parser.add_argument
    add("--data", type=Path, required=True, help="Kaggle-layout training folder")
    add("--full-resolution", type=Path, help="labelled folder of full-resolution images")
    add("--out", type=Path, default=Path("var/recipes"), help="checkpoints, logs and scores")
    add("--recipes", type=lambda s: s.split(","), default=["fastai", "crops", "robust"], help="a,b")
    add("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2], help="0,1")
    add("--arch", default="efficientnet_lite0", help="architecture (ImageNet weights)")
    add("--train-args", default="", help="more ml.train flags, e.g. '--img-size 192'")
    add("--report-only", action="store_true", help="print the table of the runs done so far")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
