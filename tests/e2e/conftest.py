"""Real processes for the end-to-end tests: a `celery worker` on the real broker, sharing
the test database and media folder with the test process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from bench import launch

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    """The URL of the test database this process uses, for a child process."""
    return launch.database_url(connection.settings_dict)


class Process:
    """A child process whose output is collected, to wait on and to show when a test fails."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.lines: list[str] = []
        # A session of its own, so that a test can kill the process and its children at once.
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_output(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[:4]} exited:\n{self.output}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no {text!r} from {self.args[:4]} in {timeout}s:\n{self.output}"
                )
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the process and everything it started (a crash, not a shutdown)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "DATABASE_URL": database_url(), **extra}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    return env


@pytest.fixture
def start_worker(transactional_db, broker, tmp_path) -> Iterator[Callable[..., Process]]:
    """Start `celery -A pneumo_site worker` (prefork, one child) on the test run's prediction
    queue, or on the queues that `-Q` names."""
    started: list[Process] = []

    def start(*extra_args: str, **env: str) -> Process:
        args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "pneumo_site",
            "worker",
            "--loglevel=INFO",
            "--concurrency=1",
            "--without-gossip",
            "--without-mingle",
            f"--hostname=test-{len(started)}@%h",
            *extra_args,
        ]
        if "-Q" not in extra_args:  # the prediction queue, as scripts/up.sh starts it
            args += ["-Q", settings.CELERY_TASK_DEFAULT_QUEUE]
        worker = Process(args, child_env(**{"VAR_DIR": str(tmp_path), **env}))
        started.append(worker)
        worker.wait_for_output("ready.", timeout=60)
        return worker

    yield start
    for worker in started:
        worker.stop()


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str, process=None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            detail = f"\n--- worker output ---\n{process.output}" if process else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(0.2)


# ---------------------------------------------------------------------------- the browser


class BrowserProblems:
    """What a page must never do: log a console error, throw, fail a request or get an error
    status. A test that provokes one on purpose names its URL in `allowed`."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.allowed: set[str] = set()

    def watch(self, page) -> None:
        page.on("console", lambda m: m.type == "error" and self.seen.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.seen.append(f"page error: {e}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _failed(self, request) -> None:
        # ERR_ABORTED: the page navigated away before a load finished (a lazy thumbnail).
        if request.url not in self.allowed and request.failure != "net::ERR_ABORTED":
            self.seen.append(f"request failed: {request.url} ({request.failure})")

    def _response(self, response) -> None:
        if response.status >= 400 and response.url not in self.allowed:
            self.seen.append(f"HTTP {response.status}: {response.url}")


@pytest.fixture
def page(monkeypatch):
    """A headless Chromium page (Debian's chromium); the test fails if the page logged a
    console error, threw, or saw a failed request or an error status (BrowserProblems)."""
    from scripts.browser import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        if os.getenv("REQUIRE_BROWSER"):
            pytest.fail(f"Chromium not found at {CHROMIUM} (CI installs Debian's chromium)")
        pytest.skip(f"Chromium not found at {CHROMIUM}: apt-get install chromium to run it")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread, which makes Django refuse
    # ORM calls from the test body; the calls are still synchronous, so this is safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    problems = BrowserProblems()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(30_000)
        page = context.new_page()
        problems.watch(page)
        page.problems = problems
        yield page
        browser.close()
    assert not problems.seen, "the browser saw:\n" + "\n".join(problems.seen)


def log_in(page, base_url: str, username: str) -> None:
    page.goto(base_url + "/")
    assert "/accounts/login/" in page.url  # anonymous users see only the login page
    page.fill("#id_username", username)
    page.fill("#id_password", "pw-" + username)
    page.click("button[type=submit]")
    page.wait_for_url(base_url + "/")


def log_out(page) -> None:
    page.click("text=Log out")
    page.wait_for_url("**/accounts/login/")
