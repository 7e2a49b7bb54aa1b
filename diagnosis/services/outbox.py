"""The PACS outbox: the result objects owed to the PACS, written in the same transaction as
the result itself (a prediction recorded, a review given), so that no result is produced
without its delivery owed, nor owed without its result. diagnosis.services.pacs sends them.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings

from diagnosis.models import PacsDelivery, PacsInstance, Prediction, Review


def delivery_uid(instance: PacsInstance, kind: str, prediction_id: int, review_id=None) -> str:
    """The SOPInstanceUID of one result object, fixed before the first send: derived from the
    source instance, the kind and the rows it reports, plus this installation's pseudonym key,
    so two installations reading one PACS never make the same UID."""
    from pydicom.uid import generate_uid

    parts = [settings.PSEUDONYM_KEY, instance.sop_instance_uid, kind, prediction_id, review_id]
    return generate_uid(entropy_srcs=["pneumo outbox", *map(str, parts)])


def deliveries_for_predictions(predictions: Iterable[Prediction]) -> int:
    """Owe the report and the heatmap overlay of each finished prediction of a study that
    came from the PACS. Run inside the transaction that records the predictions."""
    done = {p.study_id: p for p in predictions if p.status == Prediction.Status.DONE}
    if not done:
        return 0
    rows = []
    for instance in PacsInstance.objects.filter(
        study_id__in=list(done), status=PacsInstance.Status.INGESTED
    ):
        prediction = done[instance.study_id]
        for kind in (PacsDelivery.Kind.REPORT, PacsDelivery.Kind.OVERLAY):
            rows.append(
                PacsDelivery(
                    instance=instance,
                    prediction=prediction,
                    kind=kind,
                    sop_instance_uid=delivery_uid(instance, kind, prediction.pk),
                )
            )
        # Reviewed before the model answered: the radiologist's verdict is owed as well.
        review = (
            Review.objects.filter(study_id=instance.study_id)
            .exclude(label="")
            .order_by("-id")
            .first()
        )
        if review is not None:
            kind = PacsDelivery.Kind.VERIFIED
            rows.append(
                PacsDelivery(
                    instance=instance,
                    prediction=prediction,
                    review=review,
                    kind=kind,
                    sop_instance_uid=delivery_uid(instance, kind, prediction.pk, review.pk),
                )
            )
    # A prediction recorded twice (never: only its claim holder records it) would owe nothing
    # new: the UIDs are the same and unique.
    PacsDelivery.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


def delivery_for_review(review: Review) -> PacsDelivery | None:
    """Owe the verified report of a review with a label, on a study from the PACS whose
    latest prediction is done. Run inside the review's transaction."""
    if not review.label:
        return None
    instance = PacsInstance.objects.filter(
        study_id=review.study_id, status=PacsInstance.Status.INGESTED
    ).first()
    if instance is None:
        return None
    prediction = (
        Prediction.objects.filter(study_id=review.study_id, status=Prediction.Status.DONE)
        .order_by("-finished_at", "-id")
        .first()
    )
    if prediction is None:
        return None
    kind = PacsDelivery.Kind.VERIFIED
    return PacsDelivery.objects.create(
        instance=instance, prediction=prediction, review=review, kind=kind,
        sop_instance_uid=delivery_uid(instance, kind, prediction.pk, review.pk),
    )  # fmt: skip
