"""Run Orthanc (Debian's `orthanc` and `orthanc-dicomweb` packages) as an ordinary local
process from a configuration of the project's: storage in a folder of ours, HTTP and DICOM
on ports we choose, authentication on, a short StableAge. The tests start and stop one per
session; `make up` starts one when the packages are present.

    python scripts/orthanc.py --dir var/orthanc --http-port 8042 --dicom-port 4242 \\
        --username pneumo --password secret      # runs until stopped

    with OrthancProcess(folder, username="u", password="p") as pacs:   # free ports
        pacs.url, pacs.dicom_port

Orthanc 1.10 cannot bind to one address: its HTTP server refuses other hosts
(RemoteAccessAllowed false) and its DICOM server accepts stores only from the modalities
listed in the configuration (DicomAlwaysAllowStore false, host checked), each of which must
be 127.0.0.1 here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BINARY = "Orthanc"
PLUGINS = "/usr/share/orthanc/plugins"


def available() -> bool:
    return shutil.which(BINARY) is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config(
    folder: Path, *, http_port: int, dicom_port: int, username: str, password: str,
    aet: str = "PNEUMO-PACS", stable_age: int = 1, modalities: dict | None = None,
) -> dict:  # fmt: skip
    """The configuration: `modalities` maps a name to [AE title, host, port] of the DICOM
    peers that may store into it and that results may be forwarded to."""
    plugins = [
        str(Path(PLUGINS) / name)
        for name in ("libOrthancDicomWeb.so",)
        if (Path(PLUGINS) / name).exists()
    ]
    return {
        "Name": "pneumo-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {username: password},
        "StableAge": stable_age,
        "OverwriteInstances": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomCheckCalledAet": False,
        "DicomModalities": modalities or {},
        "SaveJobs": False,
        "Plugins": plugins,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpVerbose": False,
    }


class OrthancProcess:
    """One Orthanc process for as long as the `with` block (or start() ... stop())."""

    def __init__(
        self, folder: Path, *, username: str, password: str, http_port: int | None = None,
        dicom_port: int | None = None, modalities: dict | None = None, stable_age: int = 1,
    ) -> None:  # fmt: skip
        self.folder = Path(folder)
        self.username, self.password = username, password
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.modalities, self.stable_age = modalities or {}, stable_age
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30) -> OrthancProcess:
        import requests

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config(
            self.folder, http_port=self.http_port, dicom_port=self.dicom_port,
            username=self.username, password=self.password, modalities=self.modalities,
            stable_age=self.stable_age,
        ), indent=2))  # fmt: skip
        with open(self.folder / "orthanc.log", "ab") as log:
            self.process = subprocess.Popen(
                [BINARY, str(path)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start; see {self.folder / 'orthanc.log'}")
            try:
                answer = requests.get(
                    f"{self.url}/system", auth=(self.username, self.password), timeout=1
                )
                if answer.ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> OrthancProcess:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="storage and configuration")
    parser.add_argument("--http-port", type=int, default=8042)
    parser.add_argument("--dicom-port", type=int, default=4242)
    parser.add_argument("--username", default=os.getenv("ORTHANC_USERNAME", "pneumo"))
    parser.add_argument("--password", default=os.getenv("ORTHANC_PASSWORD", ""))
    parser.add_argument(
        "--modality", action="append", default=[], metavar="NAME=AET@PORT",
        help="a DICOM peer on 127.0.0.1 that may store here (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not args.password:
        parser.error("--password (or ORTHANC_PASSWORD) is required: authentication is on")
    modalities = {}
    for item in args.modality:
        name, _, rest = item.partition("=")
        aet, _, port = rest.partition("@")
        modalities[name] = [aet, "127.0.0.1", int(port)]
    pacs = OrthancProcess(
        args.dir, username=args.username, password=args.password, http_port=args.http_port,
        dicom_port=args.dicom_port, modalities=modalities,
    )  # fmt: skip
    pacs.start()
    print(f"Orthanc at {pacs.url}, DICOM port {pacs.dicom_port}", flush=True)
    # Stopped (Ctrl-C, or make up's TERM): Orthanc stops with us, never left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        code = pacs.process.wait()
    except (KeyboardInterrupt, SystemExit):
        code = 0
    finally:
        pacs.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
