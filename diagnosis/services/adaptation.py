"""Site adaptation: a fine-tune of the audited model on the base pool plus half of a site's
calibration cases, its threshold cross-fitted, judged on the site's evaluation part and by
the retraining gate (see site_adapt). Called by services.sites.site_audit_run."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from diagnosis import files, model_loader, roles
from diagnosis.models import ModelVersion
from diagnosis.services.registry import (
    model_version_discard,
    model_version_records,
    model_version_register,
)
from diagnosis.services.thresholds import site_threshold_activate
from diagnosis.yielding import yielding_training

# The adapted model's recipe: one frozen epoch re-fits the head, two unfrozen adapt the body
# (the retraining order, shorter: the site's cases are few and easy to over-fit).
ADAPT_DEFAULTS = {"freeze_epochs": 1, "epochs": 2}
# Where the adapted model's threshold is chosen (site_adapt); the first is the default.
THRESHOLD_FROM = ("mapped", "pooled", "first")
# The site's share of an adaptation's loss against the base pool's (site_adapt). Measured at
# two constructed sites (ml/README "The adapted model's threshold"): at 1.0 both candidates
# forgot the base population (the gate refused them) and ranked the site worse than at 0.5.
SITE_WEIGHT = 0.5
# At most this many copies of each site image per epoch (the rest of its weight is lost).
MAX_SITE_COPIES = 10


def audit_figures(evaluation) -> dict:
    keys = ("auc", "sensitivity", "specificity", "accuracy", "threshold")
    return {k: getattr(evaluation, k) for k in keys} | {"n_eval": evaluation.n["total"]}


def site_adapt(*, site, version, items, groups, cal_idx, eval_idx, calibration, user, params, say):
    """Fine-tune `version` on the base pool plus half the calibration part (weighted up),
    choose its threshold on calibration cases it did not see, measure both models on the
    evaluation part, and put the candidate through the retraining gate (_judge). Returns
    (candidate, figures, evaluation). A candidate the gate rejects is kept, with its verdict,
    and never promoted; when a step fails instead (an error, not a verdict), the candidate is
    discarded (model_version_discard) and the work folder with its checkpoints removed.

    The recipe: continuing from the audited model keeps what it knows; the base pool is
    rehearsed so the model does not forget the population it was validated on (the gate checks
    that on the frozen validation split); the site's cases are repeated so that they carry
    `site_weight` (SITE_WEIGHT) times the base pool's share of the loss (at most MAX_SITE_COPIES
    copies), since there are few of them; the threshold is chosen on site cases the fine-tune
    did not see. Half the calibration part is only ~60 cases of each class, too few to place a
    threshold at 95% sensitivity reliably: with `crossfit` (the default) a second fine-tune on
    the other half scores the first, and the threshold is chosen on all the calibration cases'
    out-of-fold scores (twice the training time), the second's mapped onto the first's scale
    (ml.calibration.map_scores; `threshold_from` "pooled" takes them as they are, "first" the
    first's half only). The candidate is the first model. The rehearsed pool holds no image of
    the site's patients and none of the frozen validation split."""
    from diagnosis.services.cleaning import pool_patient, training_pool
    from diagnosis.services.gate import validation_split_get_or_create
    from diagnosis.services.training import limit_base_images
    from ml.calibration import calibration_split, map_scores
    from ml.evaluate import evaluate_checkpoint
    from ml.metrics import choose_threshold_by_rule

    crossfit = params.get("crossfit", True)
    threshold_from = params.get("threshold_from") or ("mapped" if crossfit else "first")
    allowed = THRESHOLD_FROM if crossfit else ("first",)
    if threshold_from not in allowed:
        raise ValueError(
            f"the adapted threshold comes from one of {', '.join(allowed)}"
            f"{'' if crossfit else ' without cross-fitting'}, not {threshold_from!r}"
        )
    y = [int(items[i].label == version.positive_class) for i in cal_idx]
    fit_part, tune_part = calibration_split(
        y, [groups[i] for i in cal_idx], fraction=0.5, seed=calibration.seed
    )
    fit = [items[cal_idx[i]] for i in fit_part]
    tune = [items[cal_idx[i]] for i in tune_part]
    base = params.get("base_data") or settings.TRAINING_BASE_DATA
    base_data = Path(base) if base else None  # Path("") would be the working directory
    # The frozen validation split first: the pool leaves its images out, so the gate part
    # judges the candidate on images it never trained on (as retraining does).
    split = validation_split_get_or_create(base_data=base_data, user=user)
    # No image of the site's patients is rehearsed: a site built from base images (ml.shift)
    # would otherwise train on the originals of its own evaluation cases.
    site_keys, site_patients = {item.source for item in items}, set(groups)
    pool = [
        i
        for i in training_pool(base_data=base_data)
        if i.source not in site_keys and pool_patient(i) not in site_patients
    ]
    pool = limit_base_images(pool, params.get("limit_per_class", 300), seed=params.get("seed", 0))
    if not pool:
        raise ValueError("no base training pool (TRAINING_BASE_DATA): adaptation rehearses it")
    copies = _site_copies(len(pool), len(fit), params)
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    workdir = files.scratch() / f"site-{site.name}-{stamp}"
    say(
        f"Adapting: {len(pool)} base images + {len(fit)} site images x {copies}; threshold "
        + (
            f"chosen on {len(tune)} other calibration images"
            if threshold_from == "first"
            else f"chosen on all {len(cal_idx)} calibration images, each scored by the "
            "fine-tune that did not see it (a second fine-tune swaps the halves)"
            + (", its scores mapped onto the first's scale" if threshold_from == "mapped" else "")
        )
    )
    checkpoint, log = _fine_tune(version, pool + fit * copies, tune, workdir / "a", params)
    tuned = evaluate_checkpoint(checkpoint, tune)
    y_oof, s_oof = list(tuned.y_true), list(tuned.scores)
    scales = ()
    if crossfit:
        copies_b = _site_copies(len(pool), len(tune), params)
        other, _ = _fine_tune(version, pool + tune * copies_b, fit, workdir / "b", params)
        try:
            swapped = evaluate_checkpoint(other, fit)
            scales = _reference_scores(checkpoint, other, split, base_data)
        finally:
            other.unlink()  # only its scores are kept
        y_oof += list(swapped.y_true)
        s_oof += list(swapped.scores)
    rule = {"rule": calibration.rule, "target": calibration.target or 0.0}
    thresholds = {"first": choose_threshold_by_rule(tuned.y_true, tuned.scores, **rule)}
    if crossfit:
        thresholds["pooled"] = choose_threshold_by_rule(y_oof, s_oof, **rule)
        mapped = list(tuned.scores) + list(map_scores(swapped.scores, *scales))
        thresholds["mapped"] = choose_threshold_by_rule(y_oof, mapped, **rule)
    threshold = thresholds[threshold_from]
    eval_items = [items[i] for i in eval_idx]
    name = f"{version.architecture.replace('_', '-')}-{site.name}-{timezone.now():%Y%m%d-%H%M%S}"
    candidate = model_version_register(path=checkpoint, name=name, user=user)
    checkpoint.unlink()
    try:
        manifests = {"manifest": workdir / "a" / "train.csv"}
        manifests["val_manifest"] = workdir / "a" / "tune.csv"
        if crossfit:
            manifests["crossfit_manifest"] = workdir / "b" / "train.csv"
        model_version_records(candidate, manifests, f"training/{name}")
        evaluation, verdict = _judge(
            candidate, version, site, eval_items, threshold, split, base_data, user
        )
    except BaseException:
        model_version_discard(candidate)  # no candidate without the audit that made it
        raise
    ModelVersion.objects.filter(pk=candidate.pk).update(
        parent=version, gate=verdict, training_log=log
    )
    say(
        f"Adapted {candidate.name}: threshold {threshold:.4f}; on the evaluation part AUC "
        f"{evaluation.auc:.4f}, sensitivity {evaluation.sensitivity:.3f}, specificity "
        f"{evaluation.specificity:.3f}; gate {'passed' if verdict['passed'] else 'failed'}: "
        f"{verdict['reason']}"
    )
    figures = audit_figures(evaluation) | {
        "candidate": candidate.name,
        "n_fit": len(fit),
        "n_tune": len(tune),
        "n_base": len(pool),
        "site_copies": copies,
        "crossfit": crossfit,
        "threshold_from": threshold_from,
        "n_threshold": len(tuned.y_true) if threshold_from == "first" else len(y_oof),
        # What each way of choosing would have given on the evaluation part (reported, never
        # chosen on): the first fine-tune's own half, both halves' scores as they are, or
        # with the second fine-tune's mapped onto the first's scale.
        "thresholds": {name: _at(evaluation, t) for name, t in thresholds.items()},
        "gate": verdict,
        "before": {"auc": calibration.auc, "sensitivity": calibration.sensitivity,
                   "specificity": calibration.specificity, "threshold": calibration.threshold},
    }  # fmt: skip
    candidate.refresh_from_db()
    return candidate, figures, evaluation


def _at(evaluation, threshold: float) -> dict:
    """{"threshold", "sensitivity", "specificity"} of an evaluation's scores at `threshold`."""
    from ml.metrics import sensitivity_specificity

    sensitivity, specificity = sensitivity_specificity(
        evaluation.y_true, evaluation.scores, threshold
    )
    return {"threshold": threshold, "sensitivity": sensitivity, "specificity": specificity}


def _reference_scores(first: Path, second: Path, split, base_data) -> tuple[list, list]:
    """(second's, first's) scores of the frozen validation split's selection part: images
    neither fine-tune trained on (training_pool holds the split out), read here only to put
    the second fine-tune's scores on the first's scale (ml.calibration.map_scores)."""
    from diagnosis.services.gate import validation_split_parts
    from ml.data import read_manifest
    from ml.evaluate import evaluate_checkpoint

    selection_csv, _ = validation_split_parts(split, base_data=base_data)
    reference = read_manifest(selection_csv)
    return (
        list(evaluate_checkpoint(second, reference).scores),
        list(evaluate_checkpoint(first, reference).scores),
    )


def _site_copies(n_pool: int, n_site: int, params: dict) -> int:
    """How many times each site image is repeated in a fine-tune, so that the site's images
    carry `site_weight` x the base pool's share of the loss (at most MAX_SITE_COPIES).
    Weighted up by repetition, not by a loss weight: a loss weight of 8 is a learning rate 8
    times larger on the batches that hold a site image, which made the fine-tune diverge."""
    wanted = round(params.get("site_weight", SITE_WEIGHT) * n_pool / n_site)
    return max(1, min(MAX_SITE_COPIES, wanted))


def _judge(candidate, version, site, eval_items, threshold, split, base_data, user):
    """(evaluation on the site's evaluation part, gate verdict) of an adapted candidate, whose
    threshold is then set for the site. The gate is the one any retrain goes through, on the
    gate part of the frozen validation split of the base population (the adaptation chose its
    epoch on site images and its threshold by cross-fitting on the calibration part)."""
    from diagnosis.services.gate import gate_judge, validation_split_parts
    from ml.evaluate import evaluate_checkpoint

    evaluation = evaluate_checkpoint(
        model_loader.model_path(candidate), eval_items, threshold=threshold
    )
    _, gate_csv = validation_split_parts(split, base_data=base_data)
    verdict = gate_judge(candidate, version, split, gate_csv, user=user)[2] | {"site": site.name}
    site_threshold_activate(
        site=site, version=candidate, threshold=threshold, user=roles.SYSTEM,
        reason=f"chosen when {candidate.name} was adapted to {site.name}",
    )  # fmt: skip
    return evaluation, verdict


def _fine_tune(version, train_items, val_items, workdir: Path, params: dict):
    """(checkpoint, training log): `version` fine-tuned on `train_items` by ml.train, with the
    adaptation's schedule (ADAPT_DEFAULTS, or the flags in `params`)."""
    from diagnosis.services.training import RETRAIN_DEFAULTS, TRAIN_FLAGS
    from ml.data import write_manifest
    from ml.train import TrainConfig, main

    chosen = {k: params[k] for k in TRAIN_FLAGS if k in params}
    config = TrainConfig(
        manifest=write_manifest(workdir / "train.csv", train_items),
        val_manifest=write_manifest(workdir / "tune.csv", val_items),
        out=workdir / "adapted.pt",
        init_checkpoint=model_loader.model_path(version),
        **(RETRAIN_DEFAULTS | ADAPT_DEFAULTS | chosen),
    )
    log = io.StringIO()
    with contextlib.redirect_stdout(log), yielding_training():
        checkpoint = Path(main(config))
    return checkpoint, log.getvalue()
