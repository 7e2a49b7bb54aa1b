"""Load benchmark: N real chest X-rays uploaded through the API by C concurrent clients
against the running platform (`make up`: gunicorn + one worker), then every prediction
awaited. Prints one table.

    .venv/bin/python bench/load.py [--url http://127.0.0.1:8000] [-n 500] [-c 20] \
        [--images ../shared/data/chest_xray/train] [--timeout 1800]

Each client is its own new uploader account (bench-<time>-K, created with an API token in the
platform's database, so run it with the platform's settings: same DATABASE_URL / VAR_DIR).
Images are distinct files (the platform links exact duplicates instead of predicting them).
Standard library only on the client side: threads and urllib.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_tokens(n: int) -> list[str]:
    """n new uploader accounts with API tokens, made in the platform's database. New ones each
    run: an account's earlier uploads of the same files would be linked, not predicted."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pneumo_site.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from rest_framework.authtoken.models import Token

    from diagnosis import roles

    group, _ = Group.objects.get_or_create(name=roles.UPLOADER)
    tokens = []
    for k in range(n):
        name = f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{k}"
        user, created = get_user_model().objects.get_or_create(username=name)
        if created:
            user.set_unusable_password()
            user.save()
        user.groups.add(group)
        tokens.append(Token.objects.get_or_create(user=user)[0].key)
    return tokens


def multipart(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
        f'filename="{path.name}"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), boundary


def request(url: str, token: str, *, body: bytes | None = None, boundary: str = ""):
    req = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    req.add_header("Authorization", f"Token {token}")
    if boundary:
        req.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    with urllib.request.urlopen(req, timeout=120) as response:
        return response.status, json.loads(response.read() or b"{}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def peak_rss_mb(pattern: str = "", *, group: int | None = None) -> tuple[float, int]:
    """(largest VmHWM in MB, number of processes) of the processes whose command line
    contains `pattern`, or of those in process group `group` (their high-water mark since
    they started)."""
    peaks = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if group is not None and os.getpgid(int(proc.name)) != group:
                continue
            if group is None:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if pattern not in cmdline or "bench/load.py" in cmdline:
                    continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1000)
        except OSError:
            continue
    return (max(peaks) if peaks else float("nan")), len(peaks)


def upload_all(api: str, tokens: list[str], paths: list[Path]) -> dict:
    """Upload `paths` from len(tokens) concurrent clients, without awaiting predictions."""
    accepted: dict[int, str] = {}  # study id -> token of its uploader
    latencies, errors, lock = [], [], threading.Lock()

    def client(k: int) -> None:
        for path in paths[k :: len(tokens)]:
            body, boundary = multipart(path)
            start = time.perf_counter()
            try:
                status, answer = request(api, tokens[k], body=body, boundary=boundary)
            except (urllib.error.URLError, OSError) as exc:
                with lock:
                    errors.append(f"{path.name}: {exc}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                if status in (200, 202):
                    accepted[answer["id"]] = tokens[k]
                else:
                    errors.append(f"{path.name}: HTTP {status}")

    started = time.perf_counter()
    with ThreadPoolExecutor(len(tokens)) as pool:
        list(pool.map(client, range(len(tokens))))
    seconds = time.perf_counter() - started
    return {"accepted": accepted, "latencies": latencies, "errors": errors, "seconds": seconds}


def burst(url: str, tokens: list[str], paths: list[Path], *, timeout: float = 1800) -> dict:
    """Upload `paths` from len(tokens) concurrent clients, then await every prediction."""
    api = url.rstrip("/") + "/api/studies/"
    sent = upload_all(api, tokens, paths)
    accepted = sent["accepted"]
    results = await_results(api, accepted, timeout=timeout)
    done = [r for r in results.values() if r["status"] == "done"]
    created = [datetime.fromisoformat(r["created_at"]) for r in done]
    finished = [datetime.fromisoformat(r["prediction"]["finished_at"]) for r in done]
    # The worker's own pace: predictions finished after the last upload was accepted, over
    # the time they took (no uploads competing for the cores then). None without a backlog.
    uploads_over = max(created) if created else None
    after = sorted(f for f in finished if uploads_over and f > uploads_over)
    backlog_rate = None
    if len(after) >= 20:
        backlog_rate = (len(after) - 1) / (after[-1] - after[0]).total_seconds()
    return {
        "sent": len(paths),
        "accepted": len(accepted),
        "studies": sorted(accepted),
        "uploads_per_s": len(accepted) / sent["seconds"],
        "upload_latency": sent["latencies"],
        "to_prediction": [(f - c).total_seconds() for c, f in zip(created, finished, strict=True)],
        "drain_per_s": len(done) / (max(finished) - min(created)).total_seconds() if done else 0.0,
        "backlog_per_s": backlog_rate,
        "done": len(done),
        "failed": len(results) - len(done),
        "errors": sent["errors"],
        "lost": len(accepted) - len(results),
        "runtimes": sorted({r["prediction"].get("runtime", "") for r in done}),
    }


def backlog(url: str, tokens: list[str], paths: list[Path], *, held, timeout: float = 1800) -> dict:
    """The worker's own drain rate: `paths` uploaded while `held()` (a context manager) keeps
    the worker from taking tasks, so that they all wait; then the worker is released and
    predicts them with the cores to itself. Predictions per second from the release to the
    last result."""
    api = url.rstrip("/") + "/api/studies/"
    with held():
        sent = upload_all(api, tokens, paths)
    released = datetime.now().astimezone()
    results = await_results(api, sent["accepted"], timeout=timeout)
    done = [r for r in results.values() if r["status"] == "done"]
    last = max((datetime.fromisoformat(r["prediction"]["finished_at"]) for r in done), default=None)
    return {
        "accepted": len(sent["accepted"]),
        "released": released,
        "drain_per_s": len(done) / (last - released).total_seconds() if done else 0.0,
        "errors": sent["errors"],
        "lost": len(sent["accepted"]) - len(results),
        "runtimes": sorted({r["prediction"].get("runtime", "") for r in done}),
    }


def await_results(api: str, accepted: dict[int, str], *, timeout: float, poll: float = 1.0):
    """study id -> its detail once predicted (done or failed). While waiting it asks one
    uploader at a time how many of their studies are still pending or running (one or two
    small list requests a round), so that polling does not load the web server and steal
    the cores from the worker being measured: an uploader with none left is not asked again
    (done and failed are final), and while one still waits nobody else is asked. Details
    are read once at the end."""
    waiting = sorted(set(accepted.values()))
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        if any(
            request(f"{api}?status={status}&page_size=1", waiting[0])[1].get("count", 0)
            for status in ("pending", "running")
        ):
            time.sleep(poll)
        else:
            waiting.pop(0)
    results: dict[int, dict] = {}
    for study_id, token in accepted.items():
        _, body = request(f"{api}{study_id}/", token)
        if body.get("status") in ("done", "failed"):
            results[study_id] = body
    return results


def idle(url: str, token: str, paths: list[Path], *, timeout: float = 60) -> list[float]:
    """One upload at a time, each awaited: seconds from sending it to its prediction being
    written (the server's finished_at; the client polls every 10 ms)."""
    api = url.rstrip("/") + "/api/studies/"
    seconds = []
    for path in paths:
        body, boundary = multipart(path)
        sent = datetime.now().astimezone()
        _, answer = request(api, token, body=body, boundary=boundary)
        result = await_results(api, {answer["id"]: token}, timeout=timeout, poll=0.01)
        if answer["id"] in result and result[answer["id"]]["status"] == "done":
            finished = datetime.fromisoformat(result[answer["id"]]["prediction"]["finished_at"])
            seconds.append((finished - sent).total_seconds())
    return seconds


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'measure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    return "\n".join(lines + [f"| {name.ljust(width)} | {value} |" for name, value in rows])


def ps(values, qs, fmt) -> str:
    return " / ".join(format(percentile(values, q), fmt) for q in qs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("-n", type=int, default=500, help="uploads")
    parser.add_argument("-c", type=int, default=20, help="concurrent clients")
    default_images = ROOT.parent / "shared/data/chest_xray/train"
    parser.add_argument("--images", type=Path, default=default_images)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for results")
    args = parser.parse_args()
    paths = sorted(args.images.rglob("*.jpeg"))[: args.n]
    if len(paths) < args.n:
        raise SystemExit(f"only {len(paths)} images under {args.images}")
    r = burst(args.url, bench_tokens(args.c), paths, timeout=args.timeout)
    web, n_web = peak_rss_mb("gunicorn")
    worker, n_worker = peak_rss_mb("predict@")  # the prediction worker, as up.sh names it
    rate = r["backlog_per_s"]
    backlog = "no backlog" if rate is None else f"{rate:.2f}"
    print(
        table(
            [
                ("uploads sent / accepted", f"{r['sent']} / {r['accepted']}"),
                ("clients", str(args.c)),
                ("uploads/s accepted", f"{r['uploads_per_s']:.1f}"),
                (
                    "upload latency p50 / p95 / p99 (s)",
                    ps(r["upload_latency"], (50, 95, 99), ".3f"),
                ),
                ("upload -> prediction p50 / p95 (s)", ps(r["to_prediction"], (50, 95), ".1f")),
                ("predictions/s drained", f"{r['drain_per_s']:.2f}"),
                ("predictions/s drained after the last upload", backlog),
                ("predictions done / failed", f"{r['done']} / {r['failed']}"),
                ("errors", str(len(r["errors"]))),
                ("lost studies", str(r["lost"])),
                (f"peak RSS web (largest of {n_web} gunicorn processes)", f"{web:.0f} MB"),
                (f"peak RSS worker (largest of {n_worker} processes)", f"{worker:.0f} MB"),
            ]
        )
    )
    for line in r["errors"][:10]:
        print("error:", line, file=sys.stderr)
    if r["lost"] or r["errors"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()


# The worker's line for each batch it records (diagnosis.services.predictions).
BATCH_LINE = re.compile(
    r"^\[(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [^\]]*\] Batch of (?P<n>\d+) "
    r"\([^)]*\): claim (?P<claim>\d+) ms, load (?P<load>\d+) ms, read (?P<read>\d+) ms, "
    r"predict (?P<predict>\d+) ms, record (?P<record>\d+) ms",
    re.MULTILINE,
)


def drain_breakdown(log: str, since: datetime) -> dict | None:
    """Where a drain's time went, from the worker's log (its local time): the batches it
    recorded from `since` on: how many, their mean size, each step's mean milliseconds, and
    the share of the time from `since` to the last batch's line spent predicting (decoding
    and the forward pass); the rest is claims, records, reads and the broker. None when no
    batch was logged since."""
    batches = [
        m for m in BATCH_LINE.finditer(log)
        if datetime.strptime(m["at"], "%Y-%m-%d %H:%M:%S,%f").astimezone() >= since
    ]  # fmt: skip
    if not batches:
        return None
    last = datetime.strptime(batches[-1]["at"], "%Y-%m-%d %H:%M:%S,%f").astimezone()
    steps = {k: sum(int(m[k]) for m in batches) for k in ("claim", "read", "predict", "record")}
    span = max((last - since).total_seconds(), 1e-3)
    return {
        "batches": len(batches),
        "mean_size": sum(int(m["n"]) for m in batches) / len(batches),
        "ms": {k: total / len(batches) for k, total in steps.items()},
        "predict_share": steps["predict"] / 1000 / span,
    }
