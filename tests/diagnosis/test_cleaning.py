from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from diagnosis import services
from diagnosis.models import CleaningCandidate, CleaningDecision, CleaningRun
from tests.synthetic import write_dataset


@pytest.fixture
def base(tmp_path) -> Path:
    """A small base training folder with two labels deliberately flipped."""
    root = tmp_path / "train"
    items = write_dataset(root, 16, size=96, seed=11)
    flipped = [p for p, label in items if label == "NORMAL"][:2]
    for path in flipped:
        shutil.move(path, root / "PNEUMONIA" / path.name)
    return root


def pool_of(base: Path) -> dict[str, str]:
    return {item.source: item.label for item in services.training_pool(base_data=base)}


def test_it_builds_the_pool_from_the_base_folder_and_reviewed_studies(
    base, alice, rita, xray_upload
):
    reviewed = services.study_create(uploaded_by=alice, image=xray_upload("r.jpg"))
    unusable = services.study_create(uploaded_by=alice, image=xray_upload("u.jpg", seed=1))
    services.study_create(uploaded_by=alice, image=xray_upload("not-reviewed.jpg", seed=2))
    services.review_create(study=reviewed, reviewer=rita, label="PNEUMONIA")
    services.review_create(study=unusable, reviewer=rita, label="NORMAL", unusable_reason="other")

    pool = pool_of(base)
    assert len([k for k in pool if k.startswith("base:")]) == 32
    assert {k: v for k, v in pool.items() if k.startswith("study:")} == {
        f"study:{reviewed.pk}": "PNEUMONIA"
    }


def test_it_honours_the_latest_cleaning_decision(base, rita, alice):
    key = sorted(k for k in pool_of(base) if k.startswith("base:NORMAL/"))[0]

    services.cleaning_decide(item_key=key, decision="exclude", user=rita)
    assert key not in pool_of(base)
    services.cleaning_decide(item_key=key, decision="relabel", label="PNEUMONIA", user=rita)
    assert pool_of(base)[key] == "PNEUMONIA"
    services.cleaning_decide(item_key=key, decision="keep", user=rita)  # reversed
    assert pool_of(base)[key] == "NORMAL"
    with pytest.raises(ValueError):
        services.cleaning_decide(item_key=key, decision="relabel", user=rita)
    with pytest.raises(PermissionDenied):
        services.cleaning_decide(item_key=key, decision="exclude", user=alice)


def test_it_ranks_and_stores_the_pool_then_reviewers_decide_on_the_page(
    base, rita, alice, settings
):
    settings.TRAINING_BASE_DATA = str(base)  # what --data defaults to
    call_command("clean_data", "--folds", "4")

    run = CleaningRun.objects.get()
    assert run.n_items == 32 == run.candidates.count()
    assert sorted(run.candidates.values_list("rank", flat=True)) == list(range(1, 33))
    flipped = {f"base:PNEUMONIA/{p.name}" for p in (base / "PNEUMONIA").glob("*IM-*")}
    assert len(flipped) == 2  # normal-style names now under PNEUMONIA/
    flipped_ranks = run.candidates.filter(item_key__in=flipped).values_list("rank", flat=True)
    assert max(flipped_ranks) <= 8  # the deliberately wrong labels come out on top

    client = Client()
    client.force_login(rita)
    page = client.get(reverse("cleaning"), {"label": "PNEUMONIA", "show": "all"})
    assert page.status_code == 200
    first = run.candidates.filter(given_label="PNEUMONIA").order_by("rank").first()
    assert f'data-item="{first.item_key}"' in page.content.decode()
    # Kermany names, no patient key: the folds' summary says so
    assert f"folds are whole patients: {run.n_items} images of " in page.content.decode()
    assert "; 0 images (0 patients) known by a patient key" in page.content.decode()
    image = client.get(reverse("cleaning-image", args=[first.pk]))
    assert image.status_code == 200
    last = run.candidates.order_by("rank").last()
    Path(last.path).unlink()  # moved away since the run: a clear 404, not a server error
    assert client.get(reverse("cleaning-image", args=[last.pk])).status_code == 404

    back = "/cleaning/?label=PNEUMONIA&show=all&page=1"
    response = client.post(
        reverse("cleaning-decide"),
        {"item_key": first.item_key, "decision": "relabel", "label": "NORMAL", "back": back},
    )
    assert response["Location"] == back
    # The decision is in the database: it survives switching class and coming back.
    client.get(reverse("cleaning"), {"label": "NORMAL"})
    again = client.get(reverse("cleaning"), {"label": "PNEUMONIA", "show": "all"}).content
    assert "Relabel as NORMAL</strong> by rita" in again.decode()
    decision = CleaningDecision.objects.get()
    assert (decision.item_key, decision.label, decision.user) == (first.item_key, "NORMAL", rita)
    assert pool_of(base)[first.item_key] == "NORMAL"

    uploader = Client()
    uploader.force_login(alice)
    assert uploader.get(reverse("cleaning")).status_code == 403
    assert uploader.get(reverse("cleaning-image", args=[first.pk])).status_code == 403
    assert uploader.post(reverse("cleaning-decide"), {}).status_code == 403
    assert CleaningCandidate.objects.count() == 32
