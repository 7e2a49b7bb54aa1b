"""The platform as child processes of the benchmark: the gunicorn web server and one Celery
prediction worker, started as scripts/up.sh starts them (without the beat and the training
worker, which a benchmark does not need), on a free port and a queue of their own.

    with platform(env, queue="pneumo-bench-123", log_dir=Path("var/log")) as running:
        burst(running.url, tokens, paths)
        web_mb, worker_mb = running.peak_rss_mb()

`env` is the children's whole environment: the caller (manage.py bench) puts in it the
settings that must match its own (DATABASE_URL, VAR_DIR, MEDIA_ROOT, the broker). Each child
is the leader of a process group of its own, so that stopping it, on success, on an error or
on Ctrl-C, also stops the processes it forked (gunicorn's and Celery's pool workers).
Standard library only, like bench/load.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 180  # seconds; importing torch in the worker is slow on two busy cores
STOP_TIMEOUT = 15  # seconds for a graceful shutdown before the group is killed
MARK = "BENCH_PLATFORM_OF"  # the environment variable that marks the platform's processes


class PlatformError(RuntimeError):
    """A child did not start, or exited early; the message ends with the tail of its log."""


def database_url(db: dict) -> str:
    """The URL (dj-database-url form) of the database that Django's `db` settings dict
    names, for a child process. Under pytest it is the test database."""
    engine = db["ENGINE"].rsplit(".", 1)[-1]
    if engine == "sqlite3":
        return f"sqlite:///{db['NAME']}"
    if engine != "postgresql":
        raise ValueError(f"no database URL for the {db['ENGINE']} engine")
    quote = lambda value: urllib.parse.quote(str(value), safe="")  # noqa: E731
    user, password = db.get("USER") or "", db.get("PASSWORD") or ""
    auth = f"{quote(user)}:{quote(password)}@" if password else (f"{quote(user)}@" if user else "")
    host = quote(db.get("HOST") or "localhost")
    return f"postgres://{auth}{host}:{db.get('PORT') or 5432}/{db['NAME']}"


def processes_of(pid: int) -> list[int]:
    """The live processes of the platforms that process `pid` started (they carry its mark)."""
    mark = f"{MARK}={pid}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mark in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue  # gone, or another user's
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path

    @property
    def group(self) -> int:
        return self.proc.pid  # started with start_new_session: its pid is its group's id

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise PlatformError(
                f"the {self.name} exited with status {self.proc.returncode}; "
                f"the end of {self.log}:\n{self.tail()}"
            )

    def kill(self) -> None:
        """SIGKILL to whatever is left in the child's group (the leader's workers too)."""
        with suppress(ProcessLookupError):  # the group is already empty
            os.killpg(self.group, signal.SIGKILL)


@dataclass
class Platform:
    env: dict[str, str]
    queue: str
    log_dir: Path
    worker_env: dict[str, str] = field(default_factory=dict)
    beat: bool = False  # the worker runs the beat schedule too (the sweeper), as make up's does
    worker_python: str = ""  # the worker's interpreter (a role's own venv); else this one's
    web_workers: int = 2
    web_threads: int = 4
    url: str = ""
    children: list[Child] = field(default_factory=list)
    child_env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        # Both children enqueue to and consume from `queue` alone, so that another worker on
        # the same broker (make up, a test run) cannot take the benchmark's tasks.
        env = {**self.env, "CELERY_TASK_DEFAULT_QUEUE": self.queue}
        # Inherited by every process of the platform, however deep: what to look for in
        # /proc/*/environ to show that none is left behind.
        env[MARK] = str(os.getpid())
        self.child_env = env  # what a further child (the PACS listener) runs with
        py = sys.executable
        self.worker = self._spawn(
            "worker",
            [self.worker_python or py, "-m", "celery", "-A", "pneumo_site", "worker",
             "--concurrency", "1",
             "--loglevel", "INFO", "-Q", self.queue, "-n", self.worker_name,
             *(["--beat", "--schedule", str(self.log_dir / f"beat-{self.queue}")]
               if self.beat else [])],
            {**env, **self.worker_env},
        )  # fmt: skip
        # Without a control socket: its default path is one per user, which the gunicorn of
        # make up (or of another benchmark) may hold.
        self.web = self._spawn(
            "web",
            [py, "-m", "gunicorn", "pneumo_site.wsgi", "--bind", f"127.0.0.1:{port}",
             "--workers", str(self.web_workers), "--threads", str(self.web_threads),
             "--access-logfile", "-", "--no-control-socket"],
            env,
        )  # fmt: skip
        self._wait_until(lambda: _answers(self.url), "the web server to answer")
        self._wait_until(lambda: " ready." in self.worker.output(), "the worker to be ready")

    @property
    def worker_name(self) -> str:
        """The worker's node name, for Celery's remote control (%h: this host's name)."""
        return f"bench-{os.getpid()}@{socket.gethostname()}"

    def stop(self) -> None:
        """SIGTERM to each child (gunicorn and Celery then stop their own workers), at most
        STOP_TIMEOUT seconds to exit, then SIGKILL to whatever is left in their groups. The
        kill happens even when a second Ctrl-C (or SIGTERM) cuts the wait short."""
        try:
            for child in self.children:
                if child.proc.poll() is None:
                    child.proc.terminate()
            deadline = time.monotonic() + STOP_TIMEOUT
            for child in self.children:
                with suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            for child in self.children:
                child.kill()
            for child in self.children:
                child.proc.wait()

    def peak_rss_mb(self) -> tuple[float, float]:
        """(web, worker): the largest peak RSS among each child's processes."""
        return peak_rss_mb(group=self.web.group)[0], peak_rss_mb(group=self.worker.group)[0]

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        """Start one more child, stopped with the others (the PACS listener)."""
        return self._spawn(name, args, self.child_env if env is None else env)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"bench-{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def _wait_until(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            for child in self.children:
                child.check_alive()
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {c.log}:\n{c.tail()}" for c in self.children)
                raise PlatformError(f"timed out after {START_TIMEOUT}s waiting for {what}\n{logs}")
            time.sleep(0.2)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/", timeout=2).close()
    except urllib.error.HTTPError:
        return True  # an answer all the same
    except OSError:
        return False
    return True


@contextmanager
def platform(
    env: dict[str, str], *, queue: str, log_dir: Path, worker_env: dict[str, str] | None = None,
    beat: bool = False, worker_python: str = "",
) -> Iterator[Platform]:  # fmt: skip
    """The platform started, and stopped however the block ends (SIGTERM included)."""
    running = Platform(
        env=env, queue=queue, log_dir=log_dir, worker_env=worker_env or {}, beat=beat,
        worker_python=worker_python,
    )  # fmt: skip
    with _sigterm_raises():
        try:
            running.start()
            yield running
        finally:
            running.stop()


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while the block runs, so that `finally` clauses stop the
    children (by default SIGTERM ends Python at once). Signals only reach the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
