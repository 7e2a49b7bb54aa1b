"""The README's walkthrough, done in a real browser against a running platform (`make up`).

    .venv/bin/python scripts/walkthrough.py [--url http://127.0.0.1:8000] \
        [--images ../shared/data/full_resolution] [--base-data ../shared/data/chest_xray/train] \
        [--limit-per-class 300] [--out var/walkthrough]

An uploader uploads all but one of the labeled images in --images (NORMAL/, PNEUMONIA/); a
radiologist works through the worklist in uncertainty order, confirming or correcting each
label from the folder it came from, until two predictions were corrected; `manage.py
clean_data --data BASE` ranks the pool; the radiologist relabels the first flagged image on
/cleaning/; the admin starts retraining on /models/ and follows the job's page until the gate
decides; the uploader uploads the last image and the study page names the version that
predicted it.
Accounts come from var/demo-credentials.txt. Screenshots go to --out. Needs the dev
requirements (Playwright) and Debian's chromium.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import CHROMIUM, CHROMIUM_ARGS  # scripts/browser.py, beside this file

ROOT = Path(__file__).resolve().parents[1]


def credentials(path: Path) -> dict[str, str]:
    found = re.findall(r"^\s+(\S+)\s+password: (\S+)$", path.read_text(), flags=re.M)
    return dict(found)


def truth(path: Path) -> str:
    return path.parent.name


def step(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Walkthrough:
    def __init__(self, page: Page, url: str, accounts: dict[str, str], out: Path) -> None:
        self.page, self.url, self.accounts, self.out = page, url.rstrip("/"), accounts, out

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.out / f"{name}.png"), full_page=True)

    def log_in(self, username: str) -> None:
        page = self.page
        # Leave the page first: a thumbnail still loading would come back through the login
        # page with a CSRF cookie of its own, and the form's token would no longer match it.
        page.goto("about:blank")
        page.context.clear_cookies()
        page.goto(self.url + "/")
        page.fill("#id_username", username)
        page.fill("#id_password", self.accounts[username])
        page.click("button[type=submit]")
        page.wait_for_url(self.url + "/")

    def upload(self, images: list[Path]) -> None:
        self.page.goto(self.url + "/")
        self.page.set_input_files("#id_images", [str(p) for p in images])
        self.page.click("#upload-form button[type=submit]")
        self.page.wait_for_selector(f"text=Last upload: {len(images)} accepted")

    def wait_all_done(self, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.page.goto(self.url + "/?status=pending")
            pending = self.page.locator("tr[data-study-id]").count()
            self.page.goto(self.url + "/?status=running")
            running = self.page.locator("tr[data-study-id]").count()
            if pending + running == 0:
                return
            time.sleep(3)
        raise TimeoutError("uploads still waiting for a prediction")

    def review(self, names: dict[str, Path], fixes_wanted: int = 2, at_least: int = 5) -> None:
        page = self.page
        page.goto(self.url + "/worklist/?order=uncertainty")
        page.click("#start")
        reviewed = fixed = 0
        while reviewed < at_least or fixed < fixes_wanted:
            page.wait_for_selector("#review-form")
            original = page.inner_text("figure.xray figcaption").split(" · ")[0].strip()
            predicted = page.text_content('#technical [data-field="label"]').strip()
            label = truth(names[original])
            page.check(f"#review-form input[value={label}]")
            if label != predicted:
                page.fill("#id_note", f"corrected in the walkthrough: {label}")
                fixed += 1
                self.shot(f"review-fix-{fixed}")
            step(f"  {original}: model {predicted}, radiologist {label}")
            reviewed += 1
            page.click("#review-form button[type=submit]")
            page.wait_for_load_state()
            if "/studies/" not in page.url:
                break  # the worklist is empty
        step(f"reviewed {reviewed} studies, corrected {fixed} predictions")

    def relabel_first_flagged(self) -> str:
        page = self.page
        page.goto(self.url + "/cleaning/")
        card = page.locator(".card.candidate").first
        key = card.get_attribute("data-item")
        card.locator("button[value=relabel]").click()
        page.wait_for_load_state()
        decided = page.locator(f'.card.candidate[data-item="{key}"] .decision').inner_text()
        assert "Relabel" in decided, decided
        self.shot("cleaning")
        return f"{key}: {decided}"

    def retrain(self, limit_per_class: int, timeout: float = 3600) -> str:
        page = self.page
        page.goto(self.url + "/models/")
        page.select_option("#id_init", "active")
        page.fill("#id_limit_per_class", str(limit_per_class))
        page.uncheck("#id_clean")  # clean_data has just ranked the pool
        page.click("#retrain-form button[type=submit]")
        page.wait_for_url("**/models/jobs/*/")
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            status = page.inner_text("#job-status")
            lines = page.inner_text("#job-log").strip().splitlines()
            if lines and lines[-1] != last and lines[-1].startswith(("==", "epoch", "lr_find:")):
                last = lines[-1]
                step(f"  job: {last}")
            if status.startswith(("Succeeded", "Failed")):
                break
            time.sleep(5)
            page.reload()
        self.shot("training-job")
        status = page.inner_text("#job-status")
        gate = [line for line in page.inner_text("#job-log").splitlines() if "Gate:" in line]
        page.goto(self.url + "/models/")
        self.shot("models")
        return status + " | " + (gate[-1] if gate else "no gate line")

    def predicted_by(self, image: Path) -> str:
        self.upload([image])
        self.wait_all_done()
        self.page.goto(self.url + "/")
        self.page.locator("tr[data-study-id] a").first.click()
        self.shot("last-upload")
        return self.page.inner_text("#prediction")


def open_walk(playwright, args, accounts: dict[str, str], viewport: dict[str, int]):
    """(browser, Walkthrough) on a fresh headless Chromium page, for args.url."""
    browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
    page = browser.new_context(viewport=viewport).new_page()
    page.set_default_timeout(60_000)
    return browser, Walkthrough(page, args.url, accounts, args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared/data/full_resolution")
    parser.add_argument("--credentials", type=Path, default=ROOT / "var/demo-credentials.txt")
    parser.add_argument(
        "--base-data", type=Path, default=ROOT.parent / "shared/data/chest_xray/train"
    )
    parser.add_argument("--limit-per-class", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "var/walkthrough")
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    images = sorted(args.images.glob("*/*.jpeg"))
    names = {p.name: p for p in images}
    accounts = credentials(args.credentials)

    with sync_playwright() as playwright:
        browser, walk = open_walk(playwright, args, accounts, {"width": 1280, "height": 900})

        step(f"uploader uploads {len(images) - 1} studies")
        walk.log_in("uploader")
        walk.upload(images[:-1])
        walk.wait_all_done()
        step("radiologist reviews from the worklist (uncertainty order)")
        walk.log_in("radiologist")
        walk.review(names)
        step("clean_data ranks the training pool")
        python = ROOT / ".venv/bin/python"
        command = [str(python if python.exists() else sys.executable), "manage.py", "clean_data"]
        subprocess.run([*command, "--data", str(args.base_data)], cwd=ROOT, check=True)
        step("radiologist relabels the first flagged image: " + walk.relabel_first_flagged())
        step(f"admin starts retraining (--limit-per-class {args.limit_per_class})")
        walk.log_in("admin")
        step("gate: " + walk.retrain(args.limit_per_class))
        walk.log_in("uploader")
        step("last upload: " + walk.predicted_by(images[-1]).replace("\n", " "))
        browser.close()


if __name__ == "__main__":
    main()
