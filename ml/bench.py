"""CPU speed of the models and of preprocessing, as one table (no pass/fail, just figures).

    python -m ml.bench --archs resnet34,efficientnet_lite0 --threads 2

Model rows: forward passes only, eager fp32, channels_last, under inference_mode, seeded random
weights (nothing is downloaded; speed does not depend on the weights), a few warm-up passes,
then the median of timed passes, as images per second at batch 1 (one upload) and batch 16
(an evaluation run). Preprocessing rows: decode + resize + normalise of the full-resolution
JPEGs in --images (the official 16-image "val" split, ~1000-2000 px), with PIL's draft()
(decode at a reduced JPEG scale, what ml.preprocessing.open_image does) and without it.
About a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ml.data import IMAGE_SUFFIXES
from ml.models import ARCHITECTURES, build_model
from ml.preprocessing import Preprocessing, image_to_tensor, open_image

Row = tuple[str, str, str]  # (what, setting, figure)


def median_seconds(fn: Callable[[], object], *, warmup: int, repeats: int) -> float:
    """Median wall time of `repeats` calls after `warmup` untimed ones (the median shrugs off
    the odd slow call from another process on a shared 2-core machine)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(arch: str, *, img_size: int, batch_sizes: tuple[int, ...]) -> list[Row]:
    if arch not in ARCHITECTURES:
        return [(arch, "-", f"skipped: not in ml.models ({', '.join(ARCHITECTURES)})")]
    torch.manual_seed(0)
    model = build_model(arch, pretrained="none").eval().to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, 3, img_size, img_size).contiguous(
            memory_format=torch.channels_last
        )  # (B, 3, S, S)

        @torch.inference_mode()
        def forward(x: torch.Tensor = x) -> torch.Tensor:
            return model(x)

        # Fewer timed passes for big batches keeps the whole run well under two minutes.
        repeats = 30 if batch == 1 else 8
        seconds = median_seconds(forward, warmup=5 if batch == 1 else 2, repeats=repeats)
        rows.append(
            (
                f"{arch} ({n_params:.1f}M params)",
                f"model, batch {batch}",
                f"{batch / seconds:7.1f} img/s  ({seconds * 1000 / batch:.1f} ms/img)",
            )
        )
    return rows


def bench_preprocessing(folder: Path, *, img_size: int, repeats: int) -> list[Row]:
    if not folder.is_dir():
        return [("preprocessing", "-", f"skipped: {folder} not found (pass --images DIR)")]
    paths = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    jpegs = [p for p in paths if p.suffix.lower() in (".jpeg", ".jpg")]
    if not jpegs:
        return [("preprocessing", "-", f"skipped: no JPEGs under {folder}")]
    pre = Preprocessing(input_size=img_size)
    sizes = [open_image(p).size for p in jpegs]
    mean_side = sum(w + h for w, h in sizes) / (2 * len(sizes))
    what = f"preprocessing ({len(jpegs)} JPEGs, ~{mean_side:.0f} px)"
    rows = []
    for name, decode_size in (("with draft()", img_size), ("without draft()", None)):

        def run_all(decode_size: int | None = decode_size) -> None:
            for path in jpegs:
                image_to_tensor(open_image(path, size=decode_size), pre)  # (3, S, S)

        seconds = median_seconds(run_all, warmup=1, repeats=repeats)
        rows.append((what, name, f"{seconds * 1000 / len(jpegs):7.1f} ms/img"))
    return rows


def format_rows(rows: list[Row]) -> str:
    header = ("what", "setting", "figure")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(2)]
    lines = [f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]}"]
    lines.append("-" * (widths[0] + widths[1] + 30))
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> list[Row]:
    torch.set_num_threads(args.threads)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    # The load average says whether other processes shared the cores during the run.
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, input "
        f"{args.img_size}x{args.img_size}, eager fp32, channels_last, inference_mode; "
        f"load average {os.getloadavg()[0]:.1f} before",
        flush=True,
    )
    rows: list[Row] = []
    for arch in archs:
        rows += bench_model(arch, img_size=args.img_size, batch_sizes=(1, 16))
    rows += bench_preprocessing(args.images, img_size=args.img_size, repeats=args.repeats)
    print(format_rows(rows), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} after", flush=True)
    return rows


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="CPU speed of models and preprocessing")
    add = parser.add_argument
    add(
        "--archs",
        default="resnet34,efficientnet_lite0",
        help="comma-separated architectures from ml.models to time",
    )
    add("--threads", default=2, type=int, help="torch CPU threads")
    add("--img-size", default=224, type=int, help="square model input size S")
    add(
        "--images",
        default=Path("../shared/data/full_resolution"),
        type=Path,
        help="folder of full-resolution JPEGs for the preprocessing rows (skipped if absent)",
    )
    add("--repeats", default=5, type=int, help="timed passes over all images for preprocessing")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
