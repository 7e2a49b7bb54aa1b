"""Synthetic grayscale chest "X-rays" for tests that must run without the real data.

A bright body with two dark lung fields, a bright spine and faint ribs; PNEUMONIA adds bright,
blurry opacities inside the lung fields. Every image differs (seeded jitter of pose, size,
exposure and noise) but the classes stay easy to learn, even for a small model at 64 px.

    from tests.synthetic import make_xray, write_dataset
    make_xray("PNEUMONIA", seed=3)                       # PIL 'L' image, 224 x 224
    write_dataset(tmp_path, 40, size=64, seed=0)         # tmp_path/{NORMAL,PNEUMONIA}/*.jpeg
    write_dataset(tmp_path, 40, size=64, subtypes=True)  # bacteria: lobar, virus: diffuse

With `subtype`, pneumonia takes the look its name says (a caricature of the radiology, enough
to make the second question learnable): "bacterial" one dense lobar consolidation in one lung,
"viral" a fainter hazy, patchy pattern over both lungs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

LABELS = ("NORMAL", "PNEUMONIA")


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def make_xray(
    label: str, *, seed: int, size: int = 224, opacity: float = 1.0, subtype: str | None = None
) -> Image.Image:
    """One synthetic radiograph of class `label` ('NORMAL' or 'PNEUMONIA'); `opacity` scales
    the consolidations' brightness (below 1: subtler pneumonia, same random draws); `subtype`
    ("bacterial" / "viral", PNEUMONIA only) gives the pneumonia that subtype's pattern."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    rng = np.random.default_rng([seed, LABELS.index(label)])
    yy, xx = np.mgrid[0:size, 0:size] / size  # (S, S) coordinates in [0, 1)
    shift = rng.uniform(-0.04, 0.04, size=2)
    yy, xx = yy - shift[0], xx - shift[1]

    img = np.full((size, size), rng.uniform(0.02, 0.08))  # air around the body
    body = _ellipse(yy, xx, 0.55, 0.5, 0.5, rng.uniform(0.40, 0.46))
    img[body] = rng.uniform(0.55, 0.7)
    lungs = []
    for side in (-1, 1):
        lung = _ellipse(
            yy, xx, 0.5, 0.5 + side * 0.19, rng.uniform(0.26, 0.32), rng.uniform(0.12, 0.15)
        )
        img[lung] = rng.uniform(0.15, 0.25)
        lungs.append((side, lung))
    img[body & (np.abs(xx - 0.5) < 0.035)] = 0.8  # spine and mediastinum
    ribs = 0.05 * (np.sin(yy * rng.uniform(55, 65)) > 0.6)
    img += ribs * np.any([lung for _, lung in lungs], axis=0)

    if label == "PNEUMONIA" and subtype is not None:
        img += opacity * _subtype_pattern(subtype, yy, xx, lungs, np.random.default_rng([seed, 9]))
    elif label == "PNEUMONIA":
        # 1-3 consolidations: bright Gaussian blobs centred inside a lung field.
        for _ in range(rng.integers(1, 4)):
            side = rng.choice([-1, 1])
            cy, cx = 0.5 + rng.uniform(-0.15, 0.2), 0.5 + side * 0.19 + rng.uniform(-0.05, 0.05)
            sigma = rng.uniform(0.05, 0.09)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
            img += opacity * rng.uniform(0.35, 0.5) * blob

    img = img * rng.uniform(0.85, 1.15) + rng.normal(0.0, 0.03, size=img.shape)
    pixels = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    blur = max(0.5, size / 224.0)  # soft edges at every size
    return Image.fromarray(pixels, mode="L").filter(ImageFilter.GaussianBlur(blur))


def _subtype_pattern(
    subtype: str, yy: np.ndarray, xx: np.ndarray, lungs: list, rng: np.random.Generator
) -> np.ndarray:
    """What pneumonia of `subtype` adds to the image, (S, S)."""
    if subtype == "bacterial":  # one dense, sharply bounded lobar consolidation
        side = rng.choice([-1, 1])
        cy, cx = 0.5 + rng.uniform(-0.1, 0.15), 0.5 + side * 0.19
        r = rng.uniform(0.09, 0.12)
        lobe = np.clip(1.5 - np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / r, 0.0, 1.0)
        return rng.uniform(0.45, 0.55) * lobe
    if subtype == "viral":  # fainter patches spread over both lungs, on a haze
        patches = np.zeros_like(yy)
        for side in (-1, 1):
            for _ in range(rng.integers(3, 6)):
                cy = 0.5 + rng.uniform(-0.22, 0.22)
                cx = 0.5 + side * 0.19 + rng.uniform(-0.07, 0.07)
                sigma = rng.uniform(0.03, 0.045)
                patches += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        both_lungs = np.any([lung for _, lung in lungs], axis=0)
        return (0.28 * np.clip(patches, 0.0, 1.2) + 0.1) * both_lungs
    raise ValueError(f"subtype must be bacterial or viral, got {subtype!r}")


def _file_names(label: str, n: int, rng: np.random.Generator) -> list[str]:
    """n names in the data set's patterns, with some patients owning two images."""
    names: list[str] = []
    patient = int(rng.integers(100, 500))
    image_no = int(rng.integers(1000, 2000))
    while len(names) < n:
        patient += int(rng.integers(1, 4))
        for _ in range(min(n - len(names), int(rng.integers(1, 3)))):
            image_no += 1
            if label == "NORMAL":
                prefix = "NORMAL2-" if patient % 3 == 0 else ""
                names.append(f"{prefix}IM-{patient:04d}-{image_no % 10000:04d}.jpeg")
            else:
                kind = "bacteria" if rng.random() < 0.65 else "virus"
                names.append(f"person{patient}_{kind}_{image_no}.jpeg")
    return names


def write_dataset(
    root: str | os.PathLike,
    n_per_class: int,
    *,
    size: int = 224,
    seed: int = 0,
    opacity: float = 1.0,
    transform: Callable[[Image.Image, str], Image.Image] | None = None,
    subtypes: bool = False,
) -> list[tuple[Path, str]]:
    """Write ROOT/{NORMAL,PNEUMONIA}/<patient-style names>.jpeg; return [(path, label)].
    `transform(image, label)`, if given, changes each image before it is saved. With
    `subtypes`, each pneumonia image looks like the subtype its name says (bacteria/virus)."""
    root = Path(root)
    items = []
    for label in LABELS:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, LABELS.index(label), 7])
        for i, name in enumerate(_file_names(label, n_per_class, rng)):
            path = folder / name
            subtype = None
            if subtypes and label == "PNEUMONIA":
                subtype = "bacterial" if "_bacteria_" in name else "viral"
            image = make_xray(
                label, seed=seed * 100_003 + i, size=size, opacity=opacity, subtype=subtype
            )
            (transform(image, label) if transform else image).save(path, quality=92)
            items.append((path, label))
    return items
