"""Headless Chromium as the walkthrough (scripts/walkthrough.py) and the browser tests
(tests/e2e/test_browser.py) launch it: Debian's build, with flags for a closed network."""

from __future__ import annotations

import os
import shutil

CHROMIUM = os.getenv("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
# Without these Chromium keeps calling home on a machine with no internet and logs errors.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
