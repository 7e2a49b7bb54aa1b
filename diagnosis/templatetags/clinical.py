"""The clinical wording of a call (diagnosis.wording) in templates:

{% load clinical %}
{% pneumonia_call p.probability p.threshold p.label as call %}  {{ call.headline }}
{% probability_bar p.probability p.threshold %}
{{ version|model_warning }}   {% borderline_rule %}
"""

from __future__ import annotations

from django import template

from diagnosis import wording

register = template.Library()


@register.simple_tag(name="pneumonia_call")
def pneumonia_call_tag(probability, threshold, label):
    if probability is None or threshold is None:
        return None
    return wording.pneumonia_call(probability, threshold, label)


@register.simple_tag(name="subtype_call")
def subtype_call_tag(p_bacterial, threshold, subtype):
    if p_bacterial is None or threshold is None:
        return None
    return wording.subtype_call(p_bacterial, threshold, subtype)


@register.simple_tag(name="borderline_rule")
def borderline_rule_tag():
    return wording.borderline_rule()


register.filter("model_warning", wording.model_warning)


@register.inclusion_tag("diagnosis/parts/probability_bar.html")
def probability_bar(probability, threshold, label=""):
    """A bar as long as the probability with a tick at the threshold, read out as text."""
    if probability is None or threshold is None:
        return {"shown": False}
    call = wording.pneumonia_call(probability, threshold, label or "")
    return {
        "shown": True,
        "percent": max(0.0, min(100.0, 100 * probability)),
        "threshold": max(0.0, min(100.0, 100 * threshold)),
        "call": call,
    }


@register.simple_tag(name="model_card")
def model_card_tag(version):
    return wording.model_card(version)


@register.simple_tag(name="evaluation_split")
def evaluation_split_tag(evaluation):
    return wording.evaluation_split(evaluation)
