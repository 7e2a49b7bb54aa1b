"""What a file costs through each storage the platform can use: the local disk (MEDIA_ROOT)
and S3 (a SeaweedFS server started here, scripts/seaweed.py), one table.

    .venv/bin/python -m bench.storage --images ../shared/data/chest_xray/train -n 200

Rows: saving an upload, reading an image back one by one and a batch of 16 at a time (as a
prediction worker does, diagnosis.files.read_many: 8 threads on S3), and a model-sized file
read whole (what a worker's model cache does once per version). One process; medians and
rates.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path


def storages(folder: Path, server) -> dict:
    """name -> a Django storage: the local disk and the S3 server."""
    from django.core.files.storage import FileSystemStorage
    from storages.backends.s3 import S3Storage

    from pneumo_site.storages import s3_storage

    options = s3_storage(
        f"s3://{server.bucket}/bench-{uuid.uuid4().hex[:8]}", endpoint_url=server.endpoint_url,
        access_key=server.access_key, secret_key=server.secret_key,
    )["OPTIONS"]  # fmt: skip
    return {
        "local disk": FileSystemStorage(location=folder),
        "S3 (SeaweedFS)": S3Storage(**options),
    }


def timed(calls) -> list[float]:
    seconds = []
    for call in calls:
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(storage, images: list[bytes], model: bytes) -> dict[str, str]:
    from django.core.files.base import ContentFile

    from diagnosis.files import read_many

    names: list[str] = []
    saved = timed(
        lambda i=i: names.append(storage.save(f"studies/{i}.jpg", ContentFile(images[i])))
        for i in range(len(images))
    )

    def read(name: str) -> None:
        with storage.open(name, "rb") as fh:
            fh.read()

    read(names[0])  # a first connection, not measured
    reads = timed(lambda name=name: read(name) for name in names)
    batches = [names[i : i + 16] for i in range(0, len(names) - 15, 16)]
    batched = timed(lambda b=b: read_many(b, storage=storage) for b in batches)
    model_name = storage.save("models/bench.pt", ContentFile(model))
    whole = timed([lambda: read(model_name)] * 3)
    for name in [*names, model_name]:
        storage.delete(name)
    mb = len(model) / 1e6
    return {
        "save an upload, p50 (ms)": f"{1000 * statistics.median(saved):.1f}",
        "read an image, p50 (ms)": f"{1000 * statistics.median(reads):.1f}",
        "images read per second, one by one": f"{len(reads) / sum(reads):.0f}",
        "a batch of 16 read as a worker does, p50 (ms)": f"{1000 * statistics.median(batched):.1f}",
        "images read per second, in batches of 16": f"{16 * len(batched) / sum(batched):.0f}",
        f"read a {mb:.0f} MB model file (s)": f"{statistics.median(whole):.2f}",
    }


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pneumo_site.settings")
    import django

    django.setup()
    from scripts.seaweed import SeaweedProcess

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="a folder of JPEGs")
    parser.add_argument("-n", type=int, default=200, help="images saved and read")
    parser.add_argument("--model-mb", type=int, default=85, help="size of the model-like file")
    args = parser.parse_args(argv)
    paths = sorted(args.images.rglob("*.jpeg"))[: args.n] or sorted(args.images.rglob("*.jpg"))
    if not paths:
        parser.error(f"no JPEG under {args.images}")
    images = [p.read_bytes() for p in paths[: args.n]]
    model = os.urandom(args.model_mb * 1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        server = SeaweedProcess(
            Path(tmp) / "s3", bucket="pneumo-bench", access_key="bench", secret_key="bench-secret"
        )
        with server:
            results = {
                name: measure(storage, images, model)
                for name, storage in storages(Path(tmp) / "local", server).items()
            }
    columns = list(results)
    mean_kb = sum(map(len, images)) / len(images) / 1000
    print(f"{len(images)} JPEGs of {mean_kb:.0f} kB on average, one process, sequential calls\n")
    print("| | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for row in results[columns[0]]:
        print(f"| {row} | " + " | ".join(results[c][row] for c in columns) + " |")


if __name__ == "__main__":
    main()
