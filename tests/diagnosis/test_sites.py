"""Sites: per-site thresholds in the worker, audits, calibration, adaptation, permissions."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from PIL import Image, ImageOps

from diagnosis import services
from diagnosis.models import ModelVersion, Review, Site, SiteAudit, SiteThreshold, Study
from diagnosis.roles import SYSTEM
from ml import metrics
from tests.conftest import api_client_for, make_checkpoint
from tests.diagnosis.conftest import QUICK
from tests.synthetic import make_xray, write_dataset


@pytest.fixture
def good_model(db, tmp_path):
    """Random weights whose probabilities spread (no ties), so every figure is informative."""
    path = make_checkpoint(tmp_path / "spread.pt", seed=2, input_size=64, fc_scale=0.01)
    return services.model_version_register(path=path, name="good", activate=True, user=SYSTEM)


@pytest.fixture
def site_b(db):
    return services.site_get_or_create(name="hospital-b", title="Hospital B")


def _jpeg(label: str, seed: int, size: int = 128) -> SimpleUploadedFile:
    buffer = io.BytesIO()
    make_xray(label, seed=seed, size=size).save(buffer, format="JPEG", quality=90)
    return SimpleUploadedFile(f"{label}-{seed}.jpg", buffer.getvalue())


def labeled_studies(site, reviewer, n_per_class: int = 6) -> list[Study]:
    studies = []
    for label in ("NORMAL", "PNEUMONIA"):
        for i in range(n_per_class):
            study = services.study_create(
                uploaded_by=reviewer, image=_jpeg(label, 100 + i), site=site
            )
            services.review_create(study=study, reviewer=reviewer, label=label)
            studies.append(study)
    return studies


def scores_of(version: ModelVersion, studies) -> dict[int, float]:
    from diagnosis import model_loader
    from ml.inference import Predictor

    predictor = Predictor.from_checkpoint(model_loader.model_path(version))
    return {s.pk: predictor.predict(s.image.path).probability for s in studies}


# ---------------------------------------------------------------------------- the worker


def test_it_applies_each_sites_threshold_in_the_worker(
    active_model, alice, ada, site_b, xray_upload, settings
):
    settings.PREDICTION_BATCH_SIZE = 4
    services.site_threshold_activate(
        site=site_b, version=active_model, threshold=0.0, user=ada, reason="call everything"
    )
    here = services.study_create(uploaded_by=alice, image=xray_upload("here.jpg"))
    there = services.study_create(uploaded_by=alice, image=xray_upload("there.jpg"), site=site_b)

    services.prediction_run(here.predictions.get().pk)  # one claim takes both
    ours, theirs = here.predictions.get(), there.predictions.get()
    assert ours.claim == theirs.claim
    assert (ours.threshold, ours.threshold_source) == (active_model.threshold, "model version")
    assert ours.label == ("PNEUMONIA" if ours.probability >= active_model.threshold else "NORMAL")
    assert (theirs.threshold, theirs.label) == (0.0, "PNEUMONIA")
    assert theirs.threshold_source == "site hospital-b"

    body = api_client_for(alice).get(reverse("api:study-detail", args=[there.pk])).json()
    assert body["site"] == "hospital-b"
    assert body["prediction"]["threshold_source"] == "site hospital-b"
    page = Client()
    page.force_login(alice)
    html = page.get(reverse("study-detail", args=[there.pk])).content.decode()
    assert '<span id="threshold-source">site hospital-b</span>' in html

    # Restoring the version's own threshold is a row of its own; the next call uses it.
    services.site_threshold_activate(site=site_b, version=active_model, threshold=None, user=ada)
    later = services.study_create(uploaded_by=alice, image=xray_upload("later.jpg"), site=site_b)
    services.prediction_run(later.predictions.get().pk)
    assert later.predictions.get().threshold == active_model.threshold
    assert SiteThreshold.objects.filter(site=site_b).count() == 2


def test_only_admins_set_a_site_threshold(active_model, rita, ada, site_b):
    with pytest.raises(PermissionDenied):
        services.site_threshold_activate(
            site=site_b, version=active_model, threshold=0.3, user=rita
        )
    with pytest.raises(ValueError, match="within"):
        services.site_threshold_activate(site=site_b, version=active_model, threshold=2, user=ada)
    assert not SiteThreshold.objects.exists()


# ---------------------------------------------------------------------------- audits


def test_an_audits_figures_match_hand_computed_ones(good_model, rita, site_b):
    studies = labeled_studies(site_b, rita)
    audit = services.site_audit_run(site=site_b, fraction=0.5, seed=3, repeats=2)

    by_pk = scores_of(good_model, studies)
    pks = [s.pk for s in studies]
    y = [int(s.current_label == "PNEUMONIA") for s in studies]
    s = [by_pk[pk] for pk in pks]
    m, t = audit.metrics, good_model.threshold
    assert len(set(s)) == len(s)  # real scores, no ties
    assert m["auc"] == pytest.approx(metrics.roc_auc(y, s), abs=1e-6)
    assert (m["sensitivity"], m["specificity"]) == pytest.approx(
        metrics.sensitivity_specificity(y, s, t), abs=1e-9
    )
    assert m["threshold"] == t and m["threshold_source"] == "version"
    assert m["n"] == {"NORMAL": 6, "PNEUMONIA": 6, "total": 12}

    # Calibration: two disjoint parts covering every case, stratified; the threshold from
    # the calibration part's scores only, the figures from the evaluation part's only.
    c = m["calibrated"]
    cal, ev = c["cal_studies"], c["eval_studies"]
    assert not set(cal) & set(ev) and sorted(cal + ev) == sorted(pks)
    label = {study.pk: study.current_label for study in studies}
    assert {label[pk] for pk in cal} == {label[pk] for pk in ev} == {"NORMAL", "PNEUMONIA"}
    y_cal = [int(label[pk] == "PNEUMONIA") for pk in cal]
    assert c["threshold"] == pytest.approx(
        metrics.choose_threshold_by_rule(y_cal, [by_pk[pk] for pk in cal], target=0.95)
    )
    y_ev, s_ev = [int(label[pk] == "PNEUMONIA") for pk in ev], [by_pk[pk] for pk in ev]
    assert (c["sensitivity"], c["specificity"]) == pytest.approx(
        metrics.sensitivity_specificity(y_ev, s_ev, c["threshold"]), abs=1e-9
    )
    assert c["n_eval"] == len(ev) and c["in_force_on_eval"]["n_eval"] == len(ev)
    assert c["repeats"] == 2 and c["repeated"]["sensitivity_sd"] >= 0
    assert {"roc", "reliability", "roc_eval_in_force", "roc_eval_calibrated"} <= set(audit.plots)

    # The evaluation part stays out of every later training run; the calibration part may go in.
    pool = {item.source for item in services.training_pool()}
    assert pool == {f"study:{pk}" for pk in cal}


def test_the_command_imports_a_labeled_folder_and_writes_the_json(good_model, rita, ada, tmp_path):
    from ml.scores import Evaluation

    folder = tmp_path / "site"
    write_dataset(folder, 6, size=128, seed=4)
    out = tmp_path / "audit.json"
    args = ["--site", "clinic-c", "--data", str(folder), "--import-user", "rita"]
    said = io.StringIO()
    call_command("site_audit", *args, "--json", str(out), "--repeats", "1", stdout=said)

    site = Site.objects.get(name="clinic-c")
    assert site.studies.count() == 12
    reviews = Review.objects.filter(study__site=site)
    assert reviews.count() == 12 and {r.reviewer for r in reviews} == {rita}
    body = json.loads(out.read_text())
    kept_for_plots = {"y_true", "scores", "p_bacterial", "labels"}  # not in to_dict()
    evaluate_keys = set(Evaluation.__dataclass_fields__) - kept_for_plots
    assert evaluate_keys <= set(body)
    assert {"threshold", "sensitivity", "specificity", "accuracy", "n_eval"} <= set(
        body["calibrated"]
    )
    assert body["site"] == "clinic-c" and body["model_version"] == good_model.name
    # A binary version: the audit says so of the second question.
    assert body["calibrated"]["subtype_on_eval"] is None
    assert "Subtype: not predicted by this model." in said.getvalue()

    # Once more with --activate: nothing imported twice, the threshold put in force.
    call_command("site_audit", *args, "--activate", "--user", "ada", stdout=io.StringIO())
    assert site.studies.count() == 12 and reviews.count() == 12
    row = SiteThreshold.objects.get(site=site)
    assert row.created_by == ada and row.audit == SiteAudit.objects.filter(site=site).first()
    assert row.threshold == row.audit.metrics["calibrated"]["threshold"]


def test_the_command_refuses_bad_input_and_changes_nothing(active_model, alice, rita, tmp_path):
    folder = tmp_path / "site"
    write_dataset(folder, 3, size=128, seed=4)
    refusals = {
        "needs --import-user": ["--site", "c", "--data", str(folder)],
        "may not review": ["--site", "c", "--data", str(folder), "--import-user", "alice"],
        "not a folder": ["--site", "c", "--data", str(tmp_path / "none"), "--import-user", "rita"],
        "at least 10": ["--site", "empty"],
        "within": ["--site", "c", "--calibration-fraction", "1"],
        "slug": ["--site", "no spaces"],
    }
    for message, args in refusals.items():
        with pytest.raises(CommandError, match=message):
            call_command("site_audit", *args, stdout=io.StringIO())
    assert not Study.objects.exists() and not SiteAudit.objects.exists()


# ---------------------------------------------------------------------------- pages and API


PAGES = {
    # page: {persona: status}
    "sites": {"anonymous": 302, "nemo": 403, "alice": 200, "rita": 200, "ada": 200},
    "site": {"anonymous": 302, "nemo": 403, "alice": 200, "rita": 200, "ada": 200},
    "activate": {"anonymous": 302, "nemo": 403, "alice": 403, "rita": 403, "ada": 302},
    "api-sites": {"anonymous": 401, "nemo": 403, "alice": 200, "rita": 200, "ada": 200},
    "api-site": {"anonymous": 401, "nemo": 403, "alice": 200, "rita": 200, "ada": 200},
    "api-activate": {"anonymous": 401, "nemo": 403, "alice": 403, "rita": 403, "ada": 201},
}


@pytest.fixture
def audit(active_model, site_b):
    """An audit row as site_audit_run stores one, without scoring anything: the matrix below
    makes thirty of them."""
    calibrated = {"threshold": 0.42, "sensitivity": 1.0, "specificity": 0.5, "n_eval": 6}
    return SiteAudit.objects.create(
        site=site_b, model_version=active_model, data_source="reviewed studies",
        threshold_in_force=0.5, metrics={"auc": 0.9, "calibrated": calibrated},
    )  # fmt: skip


@pytest.fixture
def real_audit(good_model, rita, site_b):
    labeled_studies(site_b, rita)
    return services.site_audit_run(site=site_b)


@pytest.mark.parametrize("persona", ["anonymous", "nemo", "alice", "rita", "ada"])
@pytest.mark.parametrize("page", PAGES)
def test_it_enforces_roles_on_the_site_pages_and_api(request, persona, page, audit):
    user = None if persona == "anonymous" else request.getfixturevalue(persona)
    client, api = Client(), api_client_for(user) if user else None
    if user is not None:
        client.force_login(user)
    else:
        from rest_framework.test import APIClient

        api = APIClient()
    name, form = audit.site.name, {"audit": audit.pk, "reason": "go-live"}
    calls = {
        "sites": lambda: client.get(reverse("site-list")),
        "site": lambda: client.get(reverse("site-detail", args=[name])),
        "activate": lambda: client.post(reverse("site-threshold-activate", args=[name]), form),
        "api-sites": lambda: api.get(reverse("api:site-list")),
        "api-site": lambda: api.get(reverse("api:site-detail", args=[name])),
        "api-activate": lambda: api.post(reverse("api:site-threshold-activate", args=[name]), form),
    }
    response = calls[page]()

    assert response.status_code == PAGES[page][persona]
    activated = page.endswith("activate") and persona == "ada"
    assert SiteThreshold.objects.count() == int(activated)
    if activated:
        row = SiteThreshold.objects.get()
        assert (row.created_by, row.audit, row.reason) == (user, audit, "go-live")
        assert row.threshold == audit.metrics["calibrated"]["threshold"]


def test_the_site_page_shows_the_audit_and_the_threshold_in_force(real_audit, ada):
    audit = real_audit
    services.site_threshold_from_audit(audit=audit, user=ada)
    client = Client()
    client.force_login(ada)
    html = client.get(reverse("site-detail", args=[audit.site.name])).content.decode()
    assert f"Audit #{audit.pk}" in html and "this site's" in html
    assert f"{audit.metrics['calibrated']['threshold']:.4f}" in html
    body = api_client_for(ada).get(reverse("api:site-detail", args=[audit.site.name])).json()
    assert body["threshold_source"] == "site hospital-b"
    assert body["threshold_in_force"] == audit.metrics["calibrated"]["threshold"]
    # A binary version: no subtype threshold anywhere.
    assert audit.metrics["calibrated"]["subtype_calibrated"] is None
    assert body["subtype_threshold_in_force"] is None
    assert body["thresholds"][0]["subtype_threshold"] is None
    assert "and subtype threshold" not in html and "Subtype threshold calibrated" not in html
    assert "Subtype (bacterial at or above" not in html
    assert "<td>-</td>" in html  # the history's subtype column: none to have
    assert set(body["audits"][0]["plots"]) == set(audit.plots)
    assert client.get(body["audits"][0]["plots"]["roc"]).status_code == 200


# ---------------------------------------------------------------------------- adaptation


@pytest.mark.slow
def test_adaptation_improves_the_evaluation_part_on_a_shifted_site(
    base, random_active, rita, ada, tmp_path, settings
):
    """The induced shift: at this site the pneumonias come from another machine, whose films
    are inverted and darker; its normals look like the base data. The active model knows
    nothing of it; fine-tuned on the base pool and half the calibration part, it ranks the
    evaluation part much better."""
    folder = tmp_path / "site"
    for path, label in write_dataset(folder, 30, size=64, seed=11):
        if label == "PNEUMONIA":
            with open(path, "rb") as fh:
                image = ImageOps.invert(Image.open(fh).convert("L"))
            image.point(lambda v: v // 2).save(path, quality=92)
    site = services.site_get_or_create(name="inverted")
    services.site_import(site=site, data=folder, user=rita)

    # A short rehearsal of the base pool and the site repeated: a quick run on two cores.
    params = QUICK | {"epochs": 6, "limit_per_class": 10, "site_weight": 4.0}
    audit = services.site_audit_run(site=site, user=ada, adapt=True, adapt_params=params)

    adapted, calibrated = audit.metrics["adapted"], audit.metrics["calibrated"]
    assert adapted["auc"] >= 0.9 and adapted["auc"] > calibrated["auc"]  # the same cases
    assert adapted["n_eval"] == calibrated["n_eval"]
    candidate = audit.candidate
    assert candidate.parent == random_active and candidate.gate["site"] == "inverted"
    # The verdict is the gate's rule applied to the figures it recorded.
    gate = candidate.gate
    judged = candidate.evaluations.get(data_hash=gate["judged_on"]["hash"]).metrics
    assert gate["candidate"]["auc"] == judged["auc"]
    assert gate["passed"] is (
        gate["candidate"]["sensitivity"] >= settings.RETRAIN_MIN_SENSITIVITY
        and gate["candidate"]["auc"] >= gate["active"]["auc"] - settings.RETRAIN_GATE_MARGIN
    )
    row = SiteThreshold.objects.get(site=site, model_version=candidate)
    assert row.threshold == adapted["threshold"]
    # Cross-fitted: the threshold was chosen on every calibration case, each scored by the
    # fine-tune that did not train on it. Neither fine-tune saw an evaluation case: the site
    # rows of their training manifests are calibration cases, and the two halves are disjoint.
    assert adapted["crossfit"] and adapted["n_threshold"] == calibrated["n_cal"]
    halves = []
    for key in ("manifest_record", "crossfit_manifest_record"):
        with default_storage.open(candidate.train_args[key], "r") as f:
            sources = {row["source"] for row in csv.DictReader(f)}
        halves.append({int(s.split(":")[1]) for s in sources if s.startswith("study:")})
    assert halves[0] and halves[1] and not halves[0] & halves[1]
    assert halves[0] | halves[1] == set(calibrated["cal_studies"])
    assert not (halves[0] | halves[1]) & set(calibrated["eval_studies"])


def test_adaptation_without_a_base_pool_says_so_and_keeps_nothing(
    random_active, rita, ada, site_b, settings, monkeypatch, tmp_path
):
    """No TRAINING_BASE_DATA and no base_data parameter: the clear error, not a scan of the
    working directory for class folders."""
    settings.TRAINING_BASE_DATA = ""
    labeled_studies(site_b, rita, n_per_class=8)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="no base training pool"):
        services.site_audit_run(site=site_b, user=ada, adapt=True, adapt_params={"seed": 0})
    assert not SiteAudit.objects.exists()
    assert set(ModelVersion.objects.values_list("name", flat=True)) == {random_active.name}


@pytest.mark.parametrize("where", ["second fine-tune", "gate", "storing the audit"])
def test_a_failed_adaptation_leaves_no_candidate_and_no_work_folder_behind(
    where, base, random_active, rita, ada, site_b, tmp_path, settings, monkeypatch
):
    """A step that fails before the candidate is registered (the cross-fitting fine-tune),
    after (the gate) or at the very end (storing the audit): no candidate stays, with its
    evaluations, site threshold and files, and no work folder with the first fine-tune's
    checkpoint."""
    import shutil

    from diagnosis.models import Evaluation, ValidationSplit
    from diagnosis.services import adaptation, gate, sites

    labeled_studies(site_b, rita, n_per_class=8)
    made = make_checkpoint(tmp_path / "adapted.pt", fc_scale=3.0)
    copies = iter(range(10))

    def fine_tune(version, train_items, val_items, workdir, params):
        n = next(copies)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "train.csv").write_text("path,label\n")
        (workdir / "tune.csv").write_text("path,label\n")
        if where == "second fine-tune" and n == 1:
            raise RuntimeError("it broke")
        path = workdir / f"adapted-{n}.pt"
        shutil.copy(made, path)  # a real checkpoint, not trained: this test is about cleanup
        return path, "log"

    def broken(*args, **kwargs):
        raise RuntimeError("it broke")

    monkeypatch.setattr(adaptation, "_fine_tune", fine_tune)
    if where == "gate":
        monkeypatch.setattr(gate, "gate_decide", broken)
    if where == "storing the audit":
        monkeypatch.setattr(sites, "_store_audit", broken)
    media = Path(settings.MEDIA_ROOT)
    files_before = {p for p in media.rglob("*") if p.is_file()}
    versions = set(ModelVersion.objects.values_list("name", flat=True))

    with pytest.raises(RuntimeError, match="it broke"):
        services.site_audit_run(site=site_b, user=ada, adapt=True, adapt_params={"seed": 0})

    assert next(copies) == 2  # both fine-tunes were asked for
    assert set(ModelVersion.objects.values_list("name", flat=True)) == versions
    assert not SiteAudit.objects.exists() and not SiteThreshold.objects.exists()
    assert list(Path(settings.SCRATCH_DIR).iterdir()) == []  # the work folder is gone
    # What may remain is what belongs to the audited model: its evaluation on the gate part
    # of the frozen validation split the gate asked for, and that split with its parts.
    kept = {media / name for e in Evaluation.objects.all() for name in e.plots.values()}
    kept |= {
        media / name
        for s in ValidationSplit.objects.all()
        for name in (s.manifest, s.selection_manifest, s.gate_manifest)
    }
    assert {p for p in media.rglob("*") if p.is_file()} - files_before <= kept


@pytest.mark.parametrize("threshold_from", ["mapped", "pooled", "first"])
def test_the_adapted_threshold_is_chosen_on_out_of_fold_scores_as_asked(
    threshold_from, base, random_active, rita, ada, site_b, tmp_path, monkeypatch
):
    """Two fine-tunes whose scores are on different scales (real checkpoints, heads scaled
    0.02 and 0.2): the threshold is the rule's on the first's scores of the half it did not
    see plus the second's of the other half, mapped onto the first's scale through both
    models' scores of the frozen validation split's selection part (or as they are, or the
    first's half alone), hand-computed here; each way's figures on the evaluation part are
    reported beside it."""
    from diagnosis import files
    from diagnosis.models import ValidationSplit
    from diagnosis.services import adaptation
    from diagnosis.services.gate import validation_split_parts
    from ml.calibration import map_scores
    from ml.data import read_manifest
    from ml.evaluate import evaluate_checkpoint

    labeled_studies(site_b, rita, n_per_class=8)
    made = [
        make_checkpoint(tmp_path / "a.pt", seed=3, input_size=64, fc_scale=0.02),
        make_checkpoint(tmp_path / "b.pt", seed=4, input_size=64, fc_scale=0.2),
    ]
    asked = []  # (items it did not train on) per fine-tune

    def fine_tune(version, train_items, val_items, workdir, params):
        import shutil

        workdir.mkdir(parents=True, exist_ok=True)
        for name in ("train.csv", "tune.csv"):
            (workdir / name).write_text("path,label\n")
        path = workdir / "adapted.pt"
        shutil.copy(made[len(asked)], path)  # real weights: this test is about the scores
        asked.append([(Path(i.path).read_bytes(), i.label) for i in val_items])
        return path, "log"

    monkeypatch.setattr(adaptation, "_fine_tune", fine_tune)
    params = {"seed": 0, "threshold_from": threshold_from}
    audit = services.site_audit_run(site=site_b, user=ada, adapt=True, adapt_params=params)

    def scored(checkpoint, images):
        folder = tmp_path / f"held-{len(list(tmp_path.glob('held-*')))}"
        folder.mkdir()
        items = []
        for n, (data, label) in enumerate(images):
            (folder / f"{n}.jpg").write_bytes(data)
            items.append((folder / f"{n}.jpg", label))
        return evaluate_checkpoint(checkpoint, items)

    tune, fit = scored(made[0], asked[0]), scored(made[1], asked[1])
    with files.scratch_folder("reference"):
        selection, _ = validation_split_parts(ValidationSplit.objects.get(), base_data=base)
        reference = read_manifest(selection)
        ref_a = evaluate_checkpoint(made[0], reference).scores
        ref_b = evaluate_checkpoint(made[1], reference).scores
    y = list(tune.y_true) + list(fit.y_true)
    expected = {
        "first": metrics.choose_threshold_by_rule(tune.y_true, tune.scores, target=0.95),
        "pooled": metrics.choose_threshold_by_rule(y, tune.scores + fit.scores, target=0.95),
        "mapped": metrics.choose_threshold_by_rule(
            y, list(tune.scores) + list(map_scores(fit.scores, ref_b, ref_a)), target=0.95
        ),
    }
    adapted = audit.metrics["adapted"]
    assert expected["mapped"] != expected["pooled"]  # the scales differ, so the choice does
    assert adapted["threshold_from"] == threshold_from
    assert adapted["threshold"] == pytest.approx(expected[threshold_from])
    assert adapted["n_threshold"] == (len(tune.y_true) if threshold_from == "first" else len(y))
    reported = {k: v["threshold"] for k, v in adapted["thresholds"].items()}
    assert reported == pytest.approx(expected)
    row = SiteThreshold.objects.get(site=site_b, model_version=audit.candidate)
    assert row.threshold == pytest.approx(expected[threshold_from])
    client = Client()
    client.force_login(ada)
    html = client.get(reverse("site-detail", args=[site_b.name])).content.decode()
    assert f"threshold on {adapted['n_threshold']} calibration cases, each scored" in html
    assert ("mapped onto this model" in html) is (threshold_from == "mapped")


def site_of_base_copies(base: Path, site, reviewer, n_per_class: int = 8) -> list[Path]:
    """Labeled studies at `site` whose images are copies of base images, names kept (as
    ml.shift builds a site); returns the originals."""
    originals = []
    for label in ("NORMAL", "PNEUMONIA"):
        originals += sorted((base / label).glob("*.jpeg"))[:n_per_class]
    for path in originals:
        with open(path, "rb") as fh:
            upload = SimpleUploadedFile(path.name, fh.read())
        study = services.study_create(uploaded_by=reviewer, image=upload, site=site)
        services.review_create(study=study, reviewer=reviewer, label=path.parent.name)
    return originals


def test_the_training_pool_holds_no_image_of_a_patient_an_audit_evaluated_on(
    base, random_active, rita, ada, site_b
):
    """Retraining after an audit: the evaluation part's patients stay out of the pool, their
    base images (the originals of the site's cases) too; the calibration part's do not."""
    from diagnosis.services.cleaning import training_pool
    from ml.data import kermany_patient

    site_of_base_copies(base, site_b, rita)
    calibrated = services.site_audit_run(site=site_b, user=ada).metrics["calibrated"]
    names = dict(Study.objects.values_list("pk", "original_filename"))
    evaluated = {kermany_patient(names[pk]) for pk in calibrated["eval_studies"]}
    calibration = {kermany_patient(names[pk]) for pk in calibrated["cal_studies"]}
    assert evaluated and calibration and not evaluated & calibration

    pool = training_pool(base_data=base)
    patients = {kermany_patient(item.path) for item in pool if item.source.startswith("base:")}
    assert not patients & evaluated
    assert calibration <= patients  # only the evaluated patients are held out
    studies = {item.source for item in pool if item.source.startswith("study:")}
    assert studies == {f"study:{pk}" for pk in calibrated["cal_studies"]}


def test_adaptation_rehearses_no_image_of_the_sites_patients(
    base, random_active, rita, ada, site_b, tmp_path, monkeypatch
):
    """A site made of base images (as ml.shift makes one): its patients' base images, the
    originals of its own cases, are left out of the pool the fine-tunes rehearse."""
    import shutil

    from diagnosis.models import ValidationSplit
    from diagnosis.services import adaptation
    from diagnosis.services.cleaning import training_pool
    from ml.data import kermany_patient

    originals = site_of_base_copies(base, site_b, rita)
    site_patients = {kermany_patient(p) for p in originals}
    made = make_checkpoint(tmp_path / "a.pt", seed=3, input_size=64, fc_scale=0.02)
    rehearsed, site_rows = [], []

    def fine_tune(version, train_items, val_items, workdir, params):
        workdir.mkdir(parents=True, exist_ok=True)
        for name in ("train.csv", "tune.csv"):
            (workdir / name).write_text("path,label\n")
        rehearsed.append([i for i in train_items if i.source.startswith("base:")])
        site_rows.append(len(train_items) - len(rehearsed[-1]))
        shutil.copy(made, workdir / "adapted.pt")
        return workdir / "adapted.pt", "log"

    monkeypatch.setattr(adaptation, "_fine_tune", fine_tune)
    params = {"seed": 0, "limit_per_class": 1000}
    audit = services.site_audit_run(site=site_b, user=ada, adapt=True, adapt_params=params)
    adapted = audit.metrics["adapted"]

    pool = [i for i in training_pool(base_data=base) if i.source.startswith("base:")]
    kept = {i.source for i in pool if kermany_patient(i.path) not in site_patients}
    assert len(rehearsed) == 2 and 0 < len(kept) < len(pool)  # some were left out, not all
    for items in rehearsed:  # both fine-tunes: every base image but the site's patients'
        assert {i.source for i in items} == kept
    # Each half of the calibration part is repeated to carry half the base pool's share of
    # the loss by default.
    n = (adapted["n_fit"], adapted["n_tune"])
    assert site_rows == [k * round(0.5 * len(kept) / k) for k in n] and site_rows[0] > n[0]
    # The frozen validation split, created by this adaptation, was left out too: the gate
    # judges the candidate on images it never rehearsed.
    (split,) = ValidationSplit.objects.all()
    assert split.item_keys and not set(split.item_keys) & {i.source for i in rehearsed[0]}


def test_an_adapted_threshold_from_both_halves_needs_both_fine_tunes(
    base, random_active, rita, ada, site_b
):
    labeled_studies(site_b, rita, n_per_class=8)
    params = {"seed": 0, "crossfit": False, "threshold_from": "mapped"}
    with pytest.raises(ValueError, match="first without cross-fitting, not 'mapped'"):
        services.site_audit_run(site=site_b, user=ada, adapt=True, adapt_params=params)
    assert not SiteAudit.objects.exists()
    assert set(ModelVersion.objects.values_list("name", flat=True)) == {random_active.name}


def test_an_admin_restores_the_versions_own_threshold_from_the_site_page(audit, ada, alice):
    client = Client()
    client.force_login(ada)
    url = reverse("site-threshold-activate", args=[audit.site.name])
    client.post(url, {"audit": audit.pk})
    client.post(url, {"audit": audit.pk, "restore": "1", "reason": "back to the validation one"})

    rows = list(SiteThreshold.objects.order_by("created_at", "id"))
    assert [r.threshold for r in rows] == [0.42, None]
    assert rows[1].reason == "back to the validation one" and rows[1].created_by == ada
    later = services.study_create(uploaded_by=alice, image=_jpeg("NORMAL", 7), site=audit.site)
    services.prediction_run(later.predictions.get().pk)
    assert later.predictions.get().threshold_source == "model version"
