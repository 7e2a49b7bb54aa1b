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
  candidate is registered and goes through the retraining gate (services.gate.gate_decide)
  on the frozen validation split.
Adaptation is in adaptation.py; activating a site threshold (thresholds.py) is an audited,
admin-only action.
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from pathlib import Path

from django.core.exceptions import PermissionDenied
from django.core.files import File
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction

from diagnosis import files, model_loader, roles, selectors
from diagnosis.models import Label, ModelVersion, Site, SiteAudit, SiteThreshold
from diagnosis.pseudonyms import key_counts, patient_group
from diagnosis.services.adaptation import audit_figures, site_adapt
from diagnosis.services.registry import model_version_activate, model_version_discard
from diagnosis.services.storage import atomic_files
from diagnosis.services.studies import review_create, study_create_many
from diagnosis.services.thresholds import site_threshold_from_audit

logger = logging.getLogger(__name__)

RULES = ("sensitivity", "specificity", "youden")  # ml.metrics.THRESHOLD_RULES

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
    A pneumonia's subtype, where its Kermany-style file name gives one (`person1_bacteria_1`,
    `person1_virus_6`), is recorded with its review, as training and ml.evaluate read it.
    Returns counts."""
    from ml.data import kermany_subtype
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
        for study, (path, label) in zip(studies, part, strict=True):
            if study.site_id != site.pk:
                elsewhere += 1  # the same image is a study of another site
                continue
            touched.add(study.pk)
            subtype = kermany_subtype(path) if label == Label.PNEUMONIA else ""
            if (study.current_label, study.current_subtype) != (label, subtype):
                review_create(
                    study=study, reviewer=user, label=label, subtype=subtype,
                    note=f"imported from {data}",
                )  # fmt: skip
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


# ---------------------------------------------------------------------------- audits


@files.with_scratch("site-audit")
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
    from ml.data import SUBTYPES, Item
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
            files.local_path(s.image.name),
            s.current_label,
            source=f"study:{s.pk}",
            patient=patient_group(s.patient_key, s.original_filename, f"study:{s.pk}"),
            subtype=s.current_subtype if s.current_subtype in SUBTYPES else "",
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
        **key_counts(groups),  # images and patients, and how many known by a real key
        "cal_studies": [studies[i].pk for i in cal_idx],
        "eval_studies": [studies[i].pk for i in eval_idx],
    }
    before = _evaluate_part(y, scores, eval_idx, threshold)
    metrics["calibrated"]["in_force_on_eval"] = audit_figures(before)
    # The second question on the same evaluation part, at the subtype threshold in force
    # there (the site's, else the version's; None: the version does not answer it).
    metrics["calibrated"]["subtype_on_eval"] = _subtype_part(
        audit_eval, items, eval_idx, in_force.subtype_threshold if in_force else None
    )
    # ... and at a subtype threshold of the site's own, chosen on the calibration part only.
    metrics["calibrated"]["subtype_calibrated"] = _subtype_calibrated(
        audit_eval, items, cal_idx, eval_idx
    )
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
    say(_subtype_line(metrics["calibrated"]["subtype_on_eval"]))
    if metrics["calibrated"]["subtype_calibrated"] is not None:
        say(_subtype_calibrated_line(metrics["calibrated"]["subtype_calibrated"]))
    candidate = None
    if adapt:
        candidate, metrics["adapted"], evaluations["eval_adapted"] = site_adapt(
            site=site, version=version, items=items, groups=groups, cal_idx=cal_idx,
            eval_idx=eval_idx, calibration=calibration, user=user, params=adapt_params or {},
            say=say,
        )  # fmt: skip
        # The adapted model's second question on the same evaluation part, at its own
        # subtype threshold (None: it does not answer it).
        metrics["adapted"]["subtype_on_eval"] = _subtype_part(
            evaluations["eval_adapted"], [items[i] for i in eval_idx], range(len(eval_idx))
        )
        say(f"Adapted model: {_subtype_line(metrics['adapted']['subtype_on_eval'])}")
    try:
        audit = _store_audit(
            site=site, version=version, user=user, data_source=data_source or "reviewed studies",
            threshold=threshold, metrics=metrics, evaluations=evaluations, candidate=candidate,
        )  # fmt: skip
    except BaseException:
        if candidate is not None:
            model_version_discard(candidate)
        raise
    if (
        candidate is not None
        and candidate.gate.get("passed")
        and (adapt_params or {}).get("promote")
    ):
        model_version_activate(version=candidate, user=actor, reason=f"adapted to {site.name}")
    return audit


def site_onboard(
    *, site_name: str, title: str = "", data: Path | None = None, import_user=None, user,
    version_name: str = "", activate: bool = False, echo=None, **audit,
) -> tuple[SiteAudit, dict | None, SiteThreshold | None]:  # fmt: skip
    """`manage.py site_audit`'s workflow: the site (made if new), its labeled folder imported
    (labels as reviews by `import_user`), the audit (site_audit_run with `audit`'s arguments)
    and, with `activate`, its calibrated threshold put in force. Putting a threshold in force
    or promoting the adapted model is for admins (or roles.SYSTEM), refused before any work.
    Returns (audit, import counts or None, the threshold row or None)."""
    if activate or (audit.get("adapt") and (audit.get("adapt_params") or {}).get("promote")):
        roles.require(
            user, roles.can_promote,
            "Only admins may put a site threshold in force or promote a model.",
        )  # fmt: skip
    version = None
    if version_name:
        version = ModelVersion.objects.filter(name=version_name).first()
        if version is None:
            raise ValueError(f"No model version named {version_name!r}.")
    site = site_get_or_create(name=site_name, title=title)
    counts = None
    if data is not None:
        if not Path(data).is_dir():
            raise ValueError(f"{data} is not a folder")
        if import_user is None:
            raise ValueError("importing a folder needs a user: its labels are recorded as reviews")
        counts = site_import(site=site, data=Path(data), user=import_user)
        if echo:
            echo(
                f"Imported {counts['imported']} studies from {counts['images']} images into "
                f"{site.name} ({counts['already_there']} already there, {counts['same_bytes']} "
                f"files repeating another's bytes, {counts['elsewhere']} studies of another site "
                f"left there, {counts['with_patient_id']} with a patient id from patients.csv)"
            )
    result = site_audit_run(
        site=site, user=user, version=version, data_source=str(data or ""), echo=echo, **audit
    )
    row = site_threshold_from_audit(audit=result, user=user) if activate else None
    return result, counts, row


def _evaluate_part(y: list, scores: list, idx: list, threshold: float):
    from ml.scores import evaluate_scores

    return evaluate_scores([y[i] for i in idx], [scores[i] for i in idx], threshold)


def _subtype_part(
    evaluation, items: list, idx, subtype_threshold: float | None = None
) -> dict | None:
    """The subtype figures (ml.scores.evaluate_subtype) of `evaluation` on its cases `idx`
    (`items` holds their subtypes, in the evaluation's order) at `subtype_threshold` (None:
    the version's own); None for a version that does not answer the question."""
    from ml.data import subtype_of
    from ml.scores import evaluate_subtype

    if evaluation.subtype is None:
        return None
    part = evaluate_subtype(
        [evaluation.y_true[i] for i in idx], [subtype_of(items[i]) for i in idx],
        [evaluation.scores[i] for i in idx], [evaluation.p_bacterial[i] for i in idx],
        threshold=evaluation.threshold,
        subtype_threshold=evaluation.subtype.threshold
        if subtype_threshold is None
        else subtype_threshold,
    )  # fmt: skip
    return part.to_dict()


def _subtype_calibrated(evaluation, items: list, cal_idx: list, eval_idx: list) -> dict | None:
    """A subtype threshold of the site's own and what it gives on the evaluation part: the
    rule ml.train uses on validation (Youden's J on the pneumonias of known subtype, both
    errors counted alike), applied to the calibration part's pneumonias only. None for a
    version that does not answer the question; no threshold (and why) when the calibration
    part lacks one of the subtypes."""
    from ml.data import subtype_of
    from ml.metrics import youden_threshold

    if evaluation.subtype is None:
        return None
    known = [
        i for i in cal_idx
        if evaluation.y_true[i] and subtype_of(items[i]) in ("bacterial", "viral")
    ]  # fmt: skip
    truth = [int(subtype_of(items[i]) == "bacterial") for i in known]
    n_cal = {"bacterial": sum(truth), "viral": len(truth) - sum(truth)}
    base = {"rule": "youden", "n_cal": n_cal, "version_threshold": evaluation.subtype.threshold}
    if not n_cal["bacterial"] or not n_cal["viral"]:
        return base | {"threshold": None, "why": "the calibration part needs both subtypes"}
    threshold = youden_threshold(truth, [evaluation.p_bacterial[i] for i in known])
    return _subtype_part(evaluation, items, eval_idx, threshold) | base


def _subtype_calibrated_line(subtype: dict) -> str:
    n = subtype["n_cal"]
    if subtype["threshold"] is None:
        return (
            f"Subtype threshold not calibrated: the calibration part has {n['bacterial']} "
            f"bacterial and {n['viral']} viral pneumonias of known subtype; it needs both."
        )
    return (
        f"Subtype threshold calibrated (Youden's J on {n['bacterial']} bacterial and "
        f"{n['viral']} viral calibration pneumonias): {subtype['threshold']:.4f}; on the "
        f"evaluation part sensitivity {subtype['sensitivity']:.3f}, specificity "
        f"{subtype['specificity']:.3f}, accuracy {subtype['accuracy']:.3f}"
    )


def _subtype_line(subtype: dict | None) -> str:
    if subtype is None:
        return "Subtype: not predicted by this model."
    n = subtype["n"]
    if not n["bacterial"] or not n["viral"]:
        return (
            f"Subtype: the evaluation part has {n['bacterial']} bacterial and {n['viral']} "
            "viral pneumonias of known subtype; figures need both."
        )
    return (
        f"Subtype on the evaluation part ({n['bacterial']} bacterial, {n['viral']} viral, "
        f"{n['unknown']} unknown): AUC {subtype['auc']:.3f}; at the subtype threshold in force "
        f"{subtype['threshold']:.4f} sensitivity {subtype['sensitivity']:.3f}, specificity "
        f"{subtype['specificity']:.3f}"
    )


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
