from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from django.conf import settings

from diagnosis import roles, selectors

# Written by scripts/up.sh while it trains the demo model: {"started_at": epoch seconds,
# "expected_seconds": ...}; removed once the model is registered or has failed.
DEMO_TRAINING_FILE = "demo-training.json"


def demo_training() -> dict | None:
    """What the pages say while make up trains its demo model: since when, roughly how long
    it takes, and whether that is already over (None when no demo is being trained)."""
    try:
        facts = json.loads((settings.VAR_DIR / DEMO_TRAINING_FILE).read_text())
        started, expected = float(facts["started_at"]), float(facts["expected_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    elapsed = max(0.0, time.time() - started)
    return {
        "started_at": datetime.fromtimestamp(started, tz=UTC),
        "elapsed_minutes": int(elapsed // 60),
        "expected_minutes": max(1, round(expected / 60)),
        "remaining_minutes": max(0, round((expected - elapsed) / 60)),
        "overdue": elapsed > 2 * expected,
    }


def platform(request) -> dict:
    user = request.user
    if not roles.has_any_role(user):
        return {}
    active = selectors.model_version_active()
    return {
        "active_model": active,
        "demo_training": None if active else demo_training(),
        "can_upload": roles.can_upload(user),
        "can_review": roles.can_review(user),
        "is_admin": roles.is_admin(user),
    }
