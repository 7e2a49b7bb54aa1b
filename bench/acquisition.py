"""How the training images change along the patient numbering: one table, per numbering
family (ml.data.acquisition_key) and fifth of its patient numbers.

    .venv/bin/python -m bench.acquisition --data ../shared/data/chest_xray

Columns: images, mean and standard deviation of the grey levels, mean JPEG size, and the share
of near-black pixels (< 10 of 255: borders and collimation). A drift along the numbering is
what makes `ml.train --test-split acquisition` (the last block of each family held out) a
proxy for images acquired at another time or place.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from ml.data import acquisition_key, scan_folder


def block_table(data: Path, blocks: int = 5) -> str:
    rows: dict[str, list[tuple[int, float, float, int, float]]] = {}
    for item in scan_folder(data):
        key = acquisition_key(item.path)
        if key is None:
            continue
        with Image.open(item.path) as img:
            a = np.asarray(img.convert("L"), dtype=np.float32)  # (H, W)
        stats = (
            key[1],
            float(a.mean()),
            float(a.std()),
            item.path.stat().st_size,
            float((a < 10).mean()),
        )
        rows.setdefault(key[0], []).append(stats)
    lines = [
        "| family | patient numbers | images | mean grey | sd grey | JPEG bytes | near-black |",
        "|---|---|---|---|---|---|---|",
    ]
    for family, stats in sorted(rows.items()):
        stats.sort()
        for chunk in np.array_split(np.array(stats), blocks):
            first, last = int(chunk[0, 0]), int(chunk[-1, 0])
            lines.append(
                f"| {family} | {first}-{last} | {len(chunk)} | {chunk[:, 1].mean():.1f} | "
                f"{chunk[:, 2].mean():.1f} | {chunk[:, 3].mean():.0f} | {chunk[:, 4].mean():.3f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="Kaggle-layout folder")
    parser.add_argument("--blocks", type=int, default=5, help="blocks per family")
    args = parser.parse_args()
    print(block_table(args.data, args.blocks))
