"""The README's screenshots, taken in a real browser from a running platform (`make up`):

    .venv/bin/python scripts/screenshots.py [--url http://127.0.0.1:8000] \
        [--images ../shared/data/full_resolution] [--out docs]

If no study is there yet, the uploader uploads the labeled images in --images and the script
waits for their predictions and heatmaps (the demo model must be active: the banner says
when it is). Then: the study page of the study the model is surest has pneumonia, with its
heatmap over the image (docs/study.png), the radiologist's worklist (docs/worklist.png) and
the admin's models page (docs/models.png). Accounts come from var/demo-credentials.txt.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import CHROMIUM  # scripts/browser.py, beside this file
from walkthrough import Walkthrough, credentials, open_walk, step

ROOT = Path(__file__).resolve().parents[1]


def wait_for_model(walk: Walkthrough, timeout: float = 1200) -> None:
    deadline = time.monotonic() + timeout
    while walk.page.locator("#model-line").count() == 0:
        if time.monotonic() > deadline:
            raise TimeoutError("no model became active")
        step("waiting for the demo model to be active")
        time.sleep(15)
        walk.page.goto(walk.url + "/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared/data/full_resolution")
    parser.add_argument("--credentials", type=Path, default=ROOT / "var/demo-credentials.txt")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    accounts = credentials(args.credentials)

    with sync_playwright() as playwright:
        browser, walk = open_walk(playwright, args, accounts, {"width": 1440, "height": 960})
        page = walk.page

        walk.log_in("uploader")
        wait_for_model(walk)
        if page.locator("tr[data-study-id]").count() == 0:
            images = sorted(args.images.glob("*/*.jpeg"))
            step(f"uploader uploads {len(images)} studies")
            walk.upload(images)
            walk.wait_all_done()

        walk.log_in("radiologist")
        page.goto(walk.url + "/worklist/?order=triage")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(args.out / "worklist.png"), full_page=True)
        step(f"wrote {args.out / 'worklist.png'}")
        page.click("#worklist tbody tr:first-child a")
        # The heatmap is drawn once no prediction waits; the page reloads when it is.
        page.wait_for_selector('#viewer-layer option[value="pneumonia"]', state="attached",
                               timeout=600_000)  # fmt: skip
        page.wait_for_selector("#viewer.ready")
        page.screenshot(path=str(args.out / "study.png"))
        step(f"wrote {args.out / 'study.png'}")

        walk.log_in("admin")
        page.goto(walk.url + "/models/")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(args.out / "models.png"), full_page=True)
        step(f"wrote {args.out / 'models.png'}")
        browser.close()


if __name__ == "__main__":
    main()
