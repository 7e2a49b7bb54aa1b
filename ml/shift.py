"""Build a "new site" whose images differ from the training data: another collimation, tone
curve, resolution, harder JPEG compression. Site calibration (ml.calibration) is then tried on
images whose labels we know, from patients the model never saw:

    python -m ml.shift --data ../shared/data/chest_xray/train --out var/sites/shifted \
        --exclude-manifest var/models/effl0-full.train.csv \
        --exclude-manifest var/models/effl0-full.val.csv --limit-per-class 200

writes var/sites/shifted/{NORMAL,PNEUMONIA}/<original file name> (the Kaggle layout that
`ml.evaluate --data` and `ml.data.scan_folder` read; patient ids stay parseable) and
var/sites/shifted/shift.json with the settings. Every image goes through, in this order:

0. the framing: keep the central --crop share of each side (0.8: a tighter collimation, the
   black borders around the film cut away), then add a black frame --frame of each side wide
   (0.1: a wider collimation, more border); both keep the image's size;
1. grayscale in [0, 1], then the tone curve x ** --gamma (1.6 darkens the mid-tones, as a
   different detector or processing LUT would), then (x - 0.5) * --contrast + 0.5 + --brightness;
2. a resolution change: down to --downscale times its size (1: none; 0.5 loses the fine
   detail), then bicubic up to --size x --size (512: the resampling artefacts of an upscale);
3. Gaussian noise of --noise grey levels, seeded by --seed and the file name, so the output
   does not depend on the order or number of images;
4. JPEG at --jpeg-quality (35: visible block artefacts).
The same arguments always give the same bytes. A source file that is not a JPEG keeps its
name's stem and gets a .jpeg suffix.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ml.core import open_image
from ml.data import (
    CLASS_NAMES,
    Item,
    add_source_arguments,
    items_from_args,
    limit_per_class,
    patient_id,
    read_manifest,
)


@dataclass(frozen=True)
class Shift:
    """How a site's images differ from the training images (see the module docstring)."""

    gamma: float = 1.6
    contrast: float = 1.0
    brightness: float = 0.0  # added after the contrast change, in [0, 1] units
    size: int | None = 512  # output side in pixels; None keeps the source size
    downscale: float = 1.0  # 0 < d <= 1: first shrink to d times the size (blur)
    noise: float = 0.0  # standard deviation of Gaussian noise, in grey levels (0-255)
    jpeg_quality: int = 35
    crop: float = 1.0  # 0 < c <= 1: keep the central c of each side (tighter collimation)
    frame: float = 0.0  # 0 <= f < 0.5: a black frame f of each side wide (wider collimation)

    def __post_init__(self) -> None:
        if self.gamma <= 0 or self.contrast <= 0:
            raise ValueError(f"gamma and contrast must be > 0, got {self.gamma}, {self.contrast}")
        if self.size is not None and self.size < 16:
            raise ValueError(f"size must be >= 16, got {self.size}")
        if not 0.0 < self.downscale <= 1.0:
            raise ValueError(f"downscale must be within (0, 1], got {self.downscale}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if not 0.0 < self.crop <= 1.0:
            raise ValueError(f"crop must be within (0, 1], got {self.crop}")
        if not 0.0 <= self.frame < 0.5:
            raise ValueError(f"frame must be within [0, 0.5), got {self.frame}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be within 1..95, got {self.jpeg_quality}")


def _noise_rng(seed: int, name: str) -> np.random.Generator:
    """A stream per (seed, file name): stable across runs, orders and subsets."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def shift_image(image: Image.Image, shift: Shift, *, seed: int = 0, name: str = "") -> Image.Image:
    """One image through the tone curve, the resolution change and the noise: an 8-bit 'L'
    image, ready to be saved at shift.jpeg_quality. `name` seeds the noise with `seed`."""
    image = reframe(image.convert("L"), crop=shift.crop, frame=shift.frame)
    x = np.asarray(image, dtype=np.float32) / 255.0  # (H, W) in [0, 1]
    x = x**shift.gamma
    x = np.clip((x - 0.5) * shift.contrast + 0.5 + shift.brightness, 0.0, 1.0)
    img = Image.fromarray(x.astype(np.float32))  # float resizes: no 8-bit banding
    width, height = img.size
    if shift.downscale < 1.0:
        small = (max(1, round(width * shift.downscale)), max(1, round(height * shift.downscale)))
        img = img.resize(small, Image.Resampling.BOX)
    out_size = (shift.size, shift.size) if shift.size else (width, height)
    if img.size != out_size:
        img = img.resize(out_size, Image.Resampling.BICUBIC)
    y = np.asarray(img, dtype=np.float32) * 255.0  # (S, S)
    if shift.noise:
        y = y + _noise_rng(seed, name).normal(0.0, shift.noise, size=y.shape)
    return Image.fromarray(np.clip(np.rint(y), 0, 255).astype(np.uint8))


def reframe(image: Image.Image, *, crop: float = 1.0, frame: float = 0.0) -> Image.Image:
    """Another collimation of the same film, at the same size: the central `crop` of each side
    scaled back up, then shrunk into a black frame `frame` of each side wide."""
    width, height = image.size
    if crop < 1.0:
        w, h = max(1, round(width * crop)), max(1, round(height * crop))
        left, top = (width - w) // 2, (height - h) // 2
        image = image.resize(
            (width, height), Image.Resampling.BICUBIC, (left, top, left + w, top + h)
        )
    if frame > 0.0:
        dx, dy = round(width * frame), round(height * frame)
        inner = image.resize(
            (max(1, width - 2 * dx), max(1, height - 2 * dy)), Image.Resampling.BOX
        )
        image = Image.new(image.mode, (width, height), 0)
        image.paste(inner, (dx, dy))
    return image


def output_name(path: str | Path) -> str:
    """The file name in the site folder: the source's, with .jpeg unless it already is one."""
    path = Path(path)
    return path.name if path.suffix.lower() in (".jpeg", ".jpg") else f"{path.stem}.jpeg"


def select_items(
    items: Sequence[Item],
    *,
    exclude_manifests: Sequence[str | Path] = (),
    limit: int | None = None,
    seed: int = 0,
) -> tuple[list[Item], int]:
    """(the items to shift, how many were excluded): items of patients listed in any of
    `exclude_manifests` are dropped, then at most `limit` per class (whole patients)."""
    excluded = {patient_id(p) for m in exclude_manifests for p, _ in read_manifest(m)}
    kept = [item for item in items if patient_id(item[0]) not in excluded]
    n_excluded = len(items) - len(kept)
    if limit:
        kept = limit_per_class(kept, limit, seed=seed)
    return kept, n_excluded


def write_site(
    items: Sequence[Item], out: str | Path, shift: Shift, *, seed: int = 0
) -> list[Item]:
    """Shift every item into OUT/<label>/<output_name>; returns the written Items.

    Refuses a class folder that already holds files, so a site never mixes two runs, and two
    sources that would land on the same output name."""
    out = Path(out)
    targets = [out / label / output_name(path) for path, label in items]
    duplicates = sorted(str(t) for t, n in Counter(targets).items() if n > 1)
    if duplicates:
        raise ValueError(
            f"{len(duplicates)} output name(s) would be written twice, e.g. {duplicates[:3]}"
        )
    for label in sorted({label for _, label in items}):
        folder = out / label
        if folder.is_dir() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} is not empty; choose a new --out or empty it first")
        folder.mkdir(parents=True, exist_ok=True)
    written = []
    for (path, label), target in zip(items, targets, strict=True):
        shifted = shift_image(open_image(path), shift, seed=seed, name=target.name)
        shifted.save(target, format="JPEG", quality=shift.jpeg_quality)
        written.append(Item(target, label))
    return written


def _mean_grey(paths: Sequence[Path], n: int = 50) -> float:
    """Mean grey level (0-255) of the first n images: a quick look at what changed."""
    return float(np.mean([np.asarray(open_image(p), dtype=np.float32).mean() for p in paths[:n]]))


def main(args: argparse.Namespace) -> list[Item]:
    shift = Shift(
        gamma=args.gamma,
        contrast=args.contrast,
        brightness=args.brightness,
        size=args.size or None,
        downscale=args.downscale,
        noise=args.noise,
        jpeg_quality=args.jpeg_quality,
        crop=args.crop,
        frame=args.frame,
    )
    items, n_excluded = select_items(
        items_from_args(args),
        exclude_manifests=args.exclude_manifest or (),
        limit=args.limit_per_class,
        seed=args.seed,
    )
    if not items:
        raise SystemExit("error: no images left to write (all excluded?)")
    counts = Counter(label for _, label in items)
    if n_excluded:
        print(f"excluded {n_excluded} images of patients listed in {args.exclude_manifest}")
    written = write_site(items, args.out, shift, seed=args.seed)
    settings = {
        "source": str(args.data or args.manifest),
        "exclude_manifests": [str(m) for m in args.exclude_manifest or ()],
        "limit_per_class": args.limit_per_class,
        "seed": args.seed,
        "shift": asdict(shift),
        "counts": {c: counts[c] for c in CLASS_NAMES},
    }
    (Path(args.out) / "shift.json").write_text(json.dumps(settings, indent=2) + "\n")
    before = _mean_grey([path for path, _ in items])
    after = _mean_grey([path for path, _ in written])
    print(
        f"wrote {len(written)} images to {args.out} "
        f"({', '.join(f'{c} {counts[c]}' for c in CLASS_NAMES)}) and shift.json; "
        f"{shift}; mean grey level {before:.1f} -> {after:.1f}",
        flush=True,
    )
    return written


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write a shifted copy of labelled images (a new site)", add_help=add_help
    )
    add = parser.add_argument
    add_source_arguments(parser)
    add("--out", required=True, type=Path, help="folder to write OUT/{NORMAL,PNEUMONIA}/ into")
    add("--gamma", default=1.6, type=float, help="tone curve x ** GAMMA on [0, 1] grey levels")
    add("--contrast", default=1.0, type=float, help="contrast factor around mid-grey after gamma")
    add("--brightness", default=0.0, type=float, help="added to [0, 1] grey levels after that")
    add("--size", default=512, type=int, help="output side in pixels, bicubic (0: source size)")
    add(
        "--downscale",
        default=1.0,
        type=float,
        help="first shrink to this share of the size, losing detail (1: no shrink)",
    )
    add("--noise", default=0.0, type=float, help="sd of Gaussian noise in grey levels (0-255)")
    add("--crop", default=1.0, type=float, help="keep the central share of each side (1: all)")
    add("--frame", default=0.0, type=float, help="add a black frame this share of each side")
    add("--jpeg-quality", default=35, type=int, help="JPEG quality of the written files (1-95)")
    add(
        "--exclude-manifest",
        action="append",
        type=Path,
        help="leave out every patient of this CSV manifest (e.g. <checkpoint>.train.csv); "
        "repeatable",
    )
    add("--limit-per-class", type=int, help="at most N images per class (seeded, whole patients)")
    add("--seed", default=0, type=int, help="seed of --limit-per-class and of the noise")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
