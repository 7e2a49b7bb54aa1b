"""`{{ counts|key_summary }}`: a split summary's patient-key line (diagnosis.pseudonyms)."""

from __future__ import annotations

from django import template

from diagnosis.pseudonyms import key_counts_text

register = template.Library()
register.filter("key_summary", key_counts_text)
