"""Site onboarding: import a site's labeled cases, audit the active model on them, calibrate
the site's threshold, and adapt the model, every figure measured on cases left out.

An audit (`site_audit_run`) scores the site's labeled studies with a model version and keeps:
- ml.evaluate's figures on all of them at the threshold in force (a retrospective audit: no
  choice is made on these cases, so all of them may be used);
- `calibrated`: the cases split once into a calibration and an evaluation part (stratified,
  whole patients, seeded; ml.calibration), the threshold chosen on the calibration part by
  the rule, its figures measured on the evaluation part only;
- `adapted` (adapt=True): a fine-tune from the audited model on the base training pool plus
  half of the calibration part weighted up, its threshold chosen by cross-fitting (a second
  fine-tune on the other half scores the first half, so every calibration case is scored by
  a model that did not see it), and the evaluation part's figures before and after. The
  candidate is registered and goes through the retraining gate (services.training.gate_decide)
  on the frozen validation split.
Activating a site threshold is an audited, admin-only action (`site_threshold_activate`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.files import File
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.utils import timezone

from diagnosis import model_loader, roles, selectors
from diagnosis.models import ModelVersion, Site, SiteAudit, SiteThreshold
from diagnosis.pseudonyms import keyed_count, patient_group
from diagnosis.services.registry import (
    model_version_activate,
    model_version_discard,
    model_version_register,
)
from diagnosis.services.storage import atomic_files
from diagnosis.services.studies import review_create, study_create_many

logger = logging.getLogger(__name__)

RULES = ("sensitivity", "specificity", "youden")  # ml.metrics.THRESHOLD_RULES
# The adapted model's recipe: one frozen epoch re-fits the head, two unfrozen adapt the body
# (the retraining order, shorter: the site's cases are few and easy to over-fit).
ADAPT_DEFAULTS = {"freeze_epochs": 1, "epochs": 2}
# At most this many copies of each site image per epoch (the rest of its weight is lost).
MAX_SITE_COPIES = 10

# ---------------------------------------------------------------------------- sites


def site_get_or_create(*, name: str, title: str = "") -> Site:
    from django.utils.text import slugify

    if not name or slugify(name) != name:
        raise ValueError(f"a site name is a slug (letters, digits, - and _), got {name!r}")
    site, _ = Site.objects.get_or_create(name=name, defaults={"title": title})
    return site


def site_import(*, site: Site, data: Path, user, chunk: int = 50) -> dict:
    """Import a labeled folder (Kaggle layout: NORMAL/, PNEUMONIA/) as studies of `site`, each
    label recorded as a review by `user` (who must be a radiologist or admin). Images already
    imported (same bytes) are not stored twice; their label is reviewed again only if it
    changed. A `patients.csv` beside the class folders (columns file, patient_id; file as in
    NORMAL/x.jpeg) gives each image's patient, kept as a keyed hash (diagnosis.pseudonyms).
    Returns counts."""
    from ml.evaluate import scan_eval_folder

    if not roles.can_review(user):
        raise PermissionDenied(f"{user} may not review: labels are imported as reviews.")
    items = scan_eval_folder(data)
    patients = _patients_csv(Path(data), items)
    before = set(site.studies.values_list("pk", flat=True))
    touched, elsewhere = set(), 0
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        uploads = [SimpleUploadedFile(Path(p).name, Path(p).read_bytes()) for p, _ in part]
        ids = [patients.get(Path(p).resolve(), "") for p, _ in part]
        studies = study_create_many(uploaded_by=user, images=uploads, site=site, patient_ids=ids)
        for study, (_, label) in zip(studies, part, strict=True):
            if study.site_id != site.pk:
                elsewhere += 1  # the same image is a study of another site
                continue
            touched.add(study.pk)
            if study.current_label != label:
                review_create(study=study, reviewer=user, label=label, note=f"imported from {data}")
    return {
        "images": len(items),
        "imported": len(touched - before),
        "already_there": len(touched & before),
        "same_bytes": len(items) - elsewhere - len(touched),  # one study for several files
        "elsewhere": elsewhere,
        "with_patient_id": sum(1 for p, _ in items if Path(p).resolve() in patients),
    }


def _patients_csv(data: Path, items) -> dict[Path, str]:
    """image path -> patient id from DATA/patients.csv ({} without one). A row naming an
    image that is not in the folder, or a file without the two columns, is a ValueError
    before anything is imported."""
    csv_path = data / "patients.csv"
    if not csv_path.is_file():
        return {}
    known = {Path(p).resolve() for p, _ in items}
    patients = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not {"file", "patient_id"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{csv_path} needs columns file and patient_id")
        for line, row in enumerate(reader, start=2):
            path = (data / (row["file"] or "").strip()).resolve()
            if path not in known:
                raise ValueError(f"{csv_path}:{line}: no image {row['file']!r} in {data}")
            patients[path] = (row["patient_id"] or "").strip()
    return patients


# ---------------------------------------------------------------------------- thresholds


def site_threshold_activate(
    *, site: Site, version: ModelVersion, threshold: float | None, user, reason: str = "",
    audit: SiteAudit | None = None,
) -> SiteThreshold:  # fmt: skip
    """Put `threshold` in force for `version` at `site` (None restores the version's own).
    Admins only; every activation is kept with who, when, why and the audit it came from."""
    roles.require(user, roles.can_promote, "Only admins may change a site's threshold.")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"a threshold is within [0, 1], got {threshold}")
    of_audit = (
        audit
        and audit.site_id == site.pk
        and version.pk in (audit.model_version_id, audit.candidate_id)
    )
    if audit is not None and not of_audit:
        raise ValueError(f"audit {audit.pk} is not of {version} at {site}")
    return SiteThreshold.objects.create(
        site=site, model_version=version, threshold=threshold, audit=audit,
        created_by=roles.recorded_user(user), reason=roles.recorded_reason(user, reason.strip()),
    )  # fmt: skip


def site_threshold_from_audit(
    *, audit: SiteAudit, user, reason: str = "", restore: bool = False
) -> SiteThreshold:
    """Put an audit's calibrated threshold in force for its version at its site, or with
    `restore` give the decision back to the version's own threshold (the site page's
    buttons, the API, `site_audit --activate`)."""
    calibrated = audit.calibrated
    if restore:
        threshold, why = None, "restored the version's own threshold"
    elif calibrated.get("threshold") is None:
        raise ValueError(f"audit {audit.pk} has no calibrated threshold")
    else:
        threshold = calibrated["threshold"]
        why = f"calibrated in audit {audit.pk} ({calibrated.get('rule')} rule)"
    return site_threshold_activate(
        site=audit.site, version=audit.model_version, threshold=threshold, user=user,
        audit=audit, reason=reason or why,
    )  # fmt: skip


# ---------------------------------------------------------------------------- audits


def site_audit_run(
    *, site: Site, user=None, version: ModelVersion | None = None, data_source: str = "",
    fraction: float = 0.5, rule: str = "sensitivity", target: float = 0.95, repeats: int = 0,
    seed: int = 0, adapt: bool = False, adapt_params: dict | None = None, echo=None,
) -> SiteAudit:  # fmt: skip
    """Audit `version` (default: the active model) on the site's labeled studies; see the
    module docstring. `echo` receives progress lines (the command's stdout). Promoting the
    adapted model (adapt_params["promote"]) is for admins (or roles.SYSTEM), checked before
    any work is done."""
    from ml.calibration import calibrate
    from ml.data import Item
    from ml.evaluate import evaluate_checkpoint

    actor, user = user, roles.recorded_user(user)  # who acts; what the rows record
    if adapt and (adapt_params or {}).get("promote"):
        roles.require(actor, roles.can_promote, "Only admins may promote an adapted model.")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}")
    version = version or selectors.model_version_active()
    if version is None:
        raise ValueError("no model is active: register and activate one first")
    studies = list(selectors.site_labeled_studies(site))
    if len({s.current_label for s in studies}) < 2 or len(studies) < 10:
        raise ValueError(
            f"site {site.name} has {len(studies)} labeled studies; an audit needs at least 10, "
            "of both classes (import a labeled folder with --data, or review its studies)"
        )
    items = [
        Item(
            Path(default_storage.path(s.image.name)),
            s.current_label,
            source=f"study:{s.pk}",
            patient=patient_group(s.patient_key, s.original_filename, f"study:{s.pk}"),
        )
        for s in studies
    ]
    groups = [item.patient for item in items]
    in_force = selectors.site_threshold_in_force(version, site)
    threshold = version.threshold if in_force is None else in_force.threshold
    say = echo or (lambda line: None)
    say(f"Scoring {len(items)} labeled studies of {site.name} with {version.name}")
    audit_eval = evaluate_checkpoint(
        model_loader.model_path(version),
        items,
        threshold=threshold,
        source=data_source or site.name,
    )
    metrics = audit_eval.to_dict()
    metrics["threshold_source"] = "version" if in_force is None else f"site:{in_force.pk}"
    y, scores = list(audit_eval.y_true), list(audit_eval.scores)
    calibration = calibrate(
        y, scores, groups, fraction=fraction, rule=rule, target=target, seed=seed, repeats=repeats
    )
    eval_idx, cal_idx = list(calibration.eval_idx), list(calibration.cal_idx)
    metrics["calibrated"] = calibration.to_dict() | {  # which cases did what, for review
        "patients": len(set(groups)),
        "patients_keyed": keyed_count(set(groups)),  # grouped by a real patient key
        "cal_studies": [studies[i].pk for i in cal_idx],
        "eval_studies": [studies[i].pk for i in eval_idx],
    }
    before = _evaluate_part(y, scores, eval_idx, threshold)
    metrics["calibrated"]["in_force_on_eval"] = _figures(before)
    evaluations = {
        "": audit_eval,
        "eval_in_force": before,
        "eval_calibrated": _evaluate_part(y, scores, eval_idx, calibration.threshold),
    }
    say(
        f"Calibrated ({rule} >= {target}) on {len(cal_idx)}: threshold "
        f"{calibration.threshold:.4f}; on the {len(eval_idx)} evaluation cases sensitivity "
        f"{calibration.sensitivity:.3f}, specificity {calibration.specificity:.3f} (at the "
        f"threshold in force {threshold:.4f}: {before.sensitivity:.3f} / {before.specificity:.3f})"
    )
    candidate = None
    if adapt:
        candidate, metrics["adapted"], evaluations["eval_adapted"] = _adapt(
            site=site, version=version, items=items, groups=groups, cal_idx=cal_idx,
            eval_idx=eval_idx, calibration=calibration, user=user, params=adapt_params or {},
            say=say,
        )  # fmt: skip
    try:
        audit = _store_audit(
            site=site, version=version, user=user, data_source=data_source or "reviewed studies",
            threshold=threshold, metrics=metrics, evaluations=evaluations, candidate=candidate,
        )  # fmt: skip
    except BaseException:
        if candidate is not None:
            model_version_discard(candidate)
            shutil.rmtree(metrics["adapted"]["workdir"], ignore_errors=True)
        raise
    if (
        candidate is not None
        and candidate.gate.get("passed")
        and (adapt_params or {}).get("promote")
    ):
        model_version_activate(version=candidate, user=actor, reason=f"adapted to {site.name}")
    return audit


def _evaluate_part(y: list, scores: list, idx: list, threshold: float):
    from ml.scores import evaluate_scores

    return evaluate_scores([y[i] for i in idx], [scores[i] for i in idx], threshold)


def _figures(evaluation) -> dict:
    keys = ("auc", "sensitivity", "specificity", "accuracy", "threshold")
    return {k: getattr(evaluation, k) for k in keys} | {"n_eval": evaluation.n["total"]}


def _store_audit(
    *, site, version, user, data_source, threshold, metrics, evaluations, candidate
) -> SiteAudit:
    from ml.plots import plot_reliability, plot_roc

    with tempfile.TemporaryDirectory() as tmp, atomic_files() as written, transaction.atomic():
        audit = SiteAudit.objects.create(
            site=site, model_version=version, created_by=user, data_source=data_source,
            threshold_in_force=threshold, metrics=metrics, candidate=candidate,
        )  # fmt: skip
        plots = {}
        for suffix, evaluation in evaluations.items():
            for kind, plot in (("roc", plot_roc), ("reliability", plot_reliability)):
                if suffix.startswith("eval_") and kind == "reliability" and "adapted" not in suffix:
                    continue  # the scores are the audit's: one reliability plot says it
                key = f"{kind}_{suffix}" if suffix else kind
                png = plot(evaluation, Path(tmp) / f"{key}.png")
                with png.open("rb") as fh:
                    name = f"sites/{site.name}/{audit.pk}/{key}.png"
                    stored = default_storage.save(name, File(fh))
                written.append(stored)
                plots[key] = stored
        audit.plots = plots
        audit.save(update_fields=["plots"])
    return audit


def audit_json(audit: SiteAudit) -> str:
    """The audit as `--json` writes it: ml.evaluate's keys plus calibrated (and adapted)."""
    body = dict(audit.metrics) | {
        "site": audit.site.name,
        "model_version": audit.model_version.name,
        "audit": audit.pk,
        "candidate": audit.candidate.name if audit.candidate else None,
    }
    return json.dumps(body, indent=2, sort_keys=True)


# ---------------------------------------------------------------------------- adaptation


def _adapt(*, site, version, items, groups, cal_idx, eval_idx, calibration, user, params, say):
    """Fine-tune `version` on the base pool plus half the calibration part (weighted up),
    choose its threshold on calibration cases it did not see, measure both models on the
    evaluation part, and put the candidate through the retraining gate (_judge). Returns
    (candidate, figures, evaluation). A candidate the gate rejects is kept, with its verdict,
    and never promoted; when a step fails instead (an error, not a verdict), the candidate is
    discarded (model_version_discard) and the work folder with its checkpoints removed.

    The recipe: continuing from the audited model keeps what it knows; the base pool is
    rehearsed so the model does not forget the population it was validated on (the gate
    checks that on the frozen validation split); the site's cases are repeated so that they
    carry as much of the loss as the base pool (`site_weight` x that, at most MAX_SITE_COPIES
    copies), since there are few of them; the threshold is chosen on site cases the fine-tune
    did not see. Half the calibration part is only ~60 cases of each class, too few to place
    a threshold at 95% sensitivity reliably: with `crossfit` (the default) a second fine-tune
    on the other half scores the first, and the threshold is chosen on all the calibration
    cases' out-of-fold scores (twice the training time). The candidate is the first model."""
    from diagnosis.services.cleaning import training_pool
    from diagnosis.services.training import limit_base_images
    from ml.calibration import calibration_split
    from ml.evaluate import evaluate_checkpoint
    from ml.metrics import choose_threshold_by_rule

    y = [int(items[i].label == version.positive_class) for i in cal_idx]
    fit_part, tune_part = calibration_split(
        y, [groups[i] for i in cal_idx], fraction=0.5, seed=calibration.seed
    )
    fit = [items[cal_idx[i]] for i in fit_part]
    tune = [items[cal_idx[i]] for i in tune_part]
    base_data = Path(params.get("base_data") or settings.TRAINING_BASE_DATA or "") or None
    site_keys = {item.source for item in items}
    pool = [i for i in training_pool(base_data=base_data) if i.source not in site_keys]
    pool = limit_base_images(pool, params.get("limit_per_class", 300), seed=params.get("seed", 0))
    if not pool:
        raise ValueError("no base training pool (TRAINING_BASE_DATA): adaptation rehearses it")
    copies = _site_copies(len(pool), len(fit), params)
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    workdir = Path(settings.VAR_DIR) / "training" / f"site-{site.name}-{stamp}"
    crossfit = params.get("crossfit", True)
    say(
        f"Adapting: {len(pool)} base images + {len(fit)} site images x {copies}; threshold "
        + (
            f"chosen on all {len(cal_idx)} calibration images, each scored by the fine-tune "
            "that did not see it (a second fine-tune swaps the halves)"
            if crossfit
            else f"chosen on {len(tune)} other calibration images"
        )
    )
    try:
        checkpoint, log = _fine_tune(version, pool + fit * copies, tune, workdir / "a", params)
        tuned = evaluate_checkpoint(checkpoint, tune)
        y_oof, s_oof = list(tuned.y_true), list(tuned.scores)
        if crossfit:
            copies_b = _site_copies(len(pool), len(tune), params)
            other, _ = _fine_tune(version, pool + tune * copies_b, fit, workdir / "b", params)
            try:
                swapped = evaluate_checkpoint(other, fit)
            finally:
                other.unlink()  # only its scores are kept
            y_oof += list(swapped.y_true)
            s_oof += list(swapped.scores)
        threshold = choose_threshold_by_rule(
            y_oof, s_oof, rule=calibration.rule, target=calibration.target or 0.0
        )
        eval_items = [items[i] for i in eval_idx]
        name = (
            f"{version.architecture.replace('_', '-')}-{site.name}-{timezone.now():%Y%m%d-%H%M%S}"
        )
        candidate = model_version_register(path=checkpoint, name=name, user=user)
        checkpoint.unlink()
        try:
            evaluation, verdict = _judge(
                candidate, version, site, eval_items, threshold, base_data, user
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
        figures = _figures(evaluation) | {
            "candidate": candidate.name,
            "n_fit": len(fit),
            "n_tune": len(tune),
            "n_base": len(pool),
            "site_copies": copies,
            "crossfit": crossfit,
            "n_threshold": len(y_oof),  # the calibration cases the threshold was chosen on
            "workdir": str(workdir),  # the fine-tunes' manifests and logs, the record
            "gate": verdict,
            "before": {"auc": calibration.auc, "sensitivity": calibration.sensitivity,
                       "specificity": calibration.specificity, "threshold": calibration.threshold},
        }  # fmt: skip
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)  # its checkpoints and manifests
        raise
    candidate.refresh_from_db()
    return candidate, figures, evaluation


def _site_copies(n_pool: int, n_site: int, params: dict) -> int:
    """How many times each site image is repeated in a fine-tune, so that the site's images
    carry `site_weight` x the base pool's share of the loss (at most MAX_SITE_COPIES).
    Weighted up by repetition, not by a loss weight: a loss weight of 8 is a learning rate 8
    times larger on the batches that hold a site image, which made the fine-tune diverge."""
    wanted = round(params.get("site_weight", 1.0) * n_pool / n_site)
    return max(1, min(MAX_SITE_COPIES, wanted))


def _judge(candidate, version, site, eval_items, threshold, base_data, user):
    """(evaluation on the site's evaluation part, gate verdict) of an adapted candidate, whose
    threshold is then set for the site. The gate is the one any retrain goes through, on the
    gate part of the frozen validation split of the base population (the adaptation chose its
    epoch on site images and its threshold by cross-fitting on the calibration part)."""
    from diagnosis.services.registry import evaluation_create
    from diagnosis.services.training import (
        evaluation_on_split,
        gate_decide,
        gate_images,
        validation_split_get_or_create,
        validation_split_parts,
    )
    from ml.evaluate import evaluate_checkpoint

    evaluation = evaluate_checkpoint(
        model_loader.model_path(candidate), eval_items, threshold=threshold
    )
    split = validation_split_get_or_create(base_data=base_data, user=user)
    _, gate_csv = validation_split_parts(split)
    candidate_eval = evaluation_create(version=candidate, data=gate_csv, user=user)
    active_eval = evaluation_on_split(version, split) or evaluation_create(
        version=version, data=gate_csv, user=user
    )
    verdict = gate_decide(candidate_eval.metrics, active_eval.metrics)
    verdict |= {"site": site.name} | gate_images(split)
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
    with contextlib.redirect_stdout(log):
        checkpoint = Path(main(config))
    return checkpoint, log.getvalue()
