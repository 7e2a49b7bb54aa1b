"""What the pages say about a model's call, the clinical way: a clear call first, how sure
the model is, and "borderline" when its probability is near the operating point; the
technical figures stay one click away (the templates' "Details").

The rules, stated on every page that shows a call:

- **Borderline**: the probability lies within `settings.BORDERLINE_MARGIN` (0.10 by default)
  of the threshold the call was made at, on either side. Such a call could flip with a small
  change of the image or of the threshold: read it with extra care.
- Otherwise **very sure** when the probability has gone at least half of the way from the
  threshold to the end of its side (towards 1 for pneumonia, 0 for normal), **fairly sure**
  below that.

Nothing here decides a label: the label is the one the prediction recorded
(probability >= threshold); this module only words it.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

SURE_SHARE = 0.5  # of the way from the threshold to 0 or 1: "very sure" from here on


@dataclass(frozen=True)
class Call:
    headline: str  # "Pneumonia likely", "No pneumonia found", "Borderline: leans pneumonia"
    tone: str  # "positive", "negative", "borderline" or "neutral" (the page's colour)
    sureness: str  # "very sure", "fairly sure" or "borderline"
    borderline: bool
    percent: int  # the probability in whole percent
    threshold_percent: int


def borderline_rule(margin: float | None = None) -> str:
    margin = settings.BORDERLINE_MARGIN if margin is None else margin
    return (
        f"Borderline: the probability is within {margin:.2f} of the operating point, so a "
        "small change could flip the call; read it with extra care."
    )


def _sureness(probability: float, threshold: float, margin: float) -> str:
    # Rounded so that 0.30 - 0.20 (0.0999...98 in floating point) is 0.10: not borderline.
    if round(abs(probability - threshold), 9) < margin:
        return "borderline"
    above = probability >= threshold
    room = (1.0 - threshold) if above else threshold
    gone = (probability - threshold) if above else (threshold - probability)
    return "very sure" if room <= 0 or gone / room >= SURE_SHARE else "fairly sure"


def pneumonia_call(
    probability: float, threshold: float, label: str, margin: float | None = None
) -> Call:
    """The first question's call (label as the prediction recorded it)."""
    margin = settings.BORDERLINE_MARGIN if margin is None else margin
    sureness = _sureness(probability, threshold, margin)
    positive = label == "PNEUMONIA"
    if sureness == "borderline":
        headline = "Borderline: leans pneumonia" if positive else "Borderline: leans normal"
        tone = "borderline"
    else:
        headline = "Pneumonia likely" if positive else "No pneumonia found"
        tone = "positive" if positive else "negative"
    return Call(
        headline=headline, tone=tone, sureness=sureness, borderline=sureness == "borderline",
        percent=round(100 * probability), threshold_percent=round(100 * threshold),
    )  # fmt: skip


def subtype_call(
    p_bacterial: float, threshold: float, subtype: str, margin: float | None = None
) -> Call:
    """The second question's call: bacterial or viral, if this is pneumonia."""
    margin = settings.BORDERLINE_MARGIN if margin is None else margin
    sureness = _sureness(p_bacterial, threshold, margin)
    if sureness == "borderline":
        headline = f"Borderline: leans {subtype}"
    else:
        headline = f"More likely {subtype}"
    return Call(
        headline=headline, tone="borderline" if sureness == "borderline" else "neutral",
        sureness=sureness, borderline=sureness == "borderline",
        percent=round(100 * p_bacterial), threshold_percent=round(100 * threshold),
    )  # fmt: skip


def prediction_call(prediction) -> Call | None:
    """pneumonia_call() of a finished Prediction, or None when it has no result."""
    if prediction is None or prediction.probability is None or prediction.threshold is None:
        return None
    return pneumonia_call(prediction.probability, prediction.threshold, prediction.label)


def prediction_subtype_call(prediction) -> Call | None:
    if prediction is None or prediction.p_bacterial is None:
        return None
    return subtype_call(prediction.p_bacterial, prediction.subtype_threshold, prediction.subtype)


def model_warning(version) -> str:
    """The loud line a page shows beside predictions of `version`: "" for the active,
    non-demo model."""
    if version is None:
        return ""
    parts = []
    if version.is_demo:
        parts.append(
            f"Model {version.name} is a DEMO: trained in minutes on public data and not "
            "validated at any site. Do not use its calls for patient care."
        )
    if version.standing != "active":
        parts.append(f"Made by the {version.standing} model {version.name}, not the active one.")
    return " ".join(parts)


LIMITS = (
    "Trained on one hospital's pediatric films (Kermany et al., 2018). On another population "
    "its stored threshold tends to over-call pneumonia until site_audit has calibrated it on "
    "that site's labeled cases; Grad-CAM can weigh side markers and film borders "
    "(ml/README.md, model cards)."
)


def model_card(version) -> list[tuple[str, str]]:
    """The model card of a version in a few lines, from what its checkpoint recorded."""
    args, metrics = version.train_args or {}, version.metrics or {}
    rows = [("Intended use", version.intended_use)]
    kind = "a DEMO, not for patient care" if version.is_demo else "a trained model"
    rows.append(("What it is", f"{kind}; {version.standing}"))
    weights = args.get("pretrained") or "?"
    rows.append(("Network", f"{version.architecture}, from {weights} weights"))
    if args:
        schedule = (
            f"recipe {args.get('recipe', '?')}; {args.get('freeze_epochs', '?')} frozen + "
            f"{args.get('epochs', '?')} unfrozen epochs at {args.get('img_size', '?')} px"
        )
        if args.get("lr_used"):
            schedule += f", one-cycle from the LR finder's {args['lr_used']:.2g}"
        rows.append(("Training", schedule))
    if "n_train" in metrics:
        test_how = (
            "most recent acquisitions" if args.get("test_split") == "acquisition" else "random"
        )
        rows.append((
            "Data",
            f"{metrics['n_train']} training, {metrics.get('n_val', '?')} validation and "
            f"{metrics.get('n_test', 0)} held-out test images, split by patient (test: "
            f"{test_how}, chose nothing)",
        ))  # fmt: skip
    rule = metrics.get("threshold_rule") or {}
    if rule:
        rows.append((
            "Threshold",
            f"{version.threshold:.3f}: {rule.get('rule')} >= {rule.get('target')} on "
            f"{rule.get('n', '?')} validation images",
        ))  # fmt: skip
    rows.append(("Subtype", version.subtype_summary))
    rows.append(("Known limits", LIMITS))
    return rows


def evaluation_split(evaluation) -> str:
    """Which images an evaluation was measured on, and whether they chose anything."""
    source = evaluation.data_source
    if source.endswith(".test.csv"):
        return "held-out test split (by patient): nothing was chosen on it"
    if source.endswith(".val.csv"):
        return "validation split (by patient): it chose the epoch and the threshold, so it flatters"
    if source.startswith("gate part of validation split"):
        return f"{source}: no training choice saw it"
    return f"labeled data set {source}"
