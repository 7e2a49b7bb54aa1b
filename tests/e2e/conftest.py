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
        worker = Process(args, child_env(VAR_DIR=str(tmp_path), **env))
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
