"""Intended-use guardrails: warnings shown with a study (page and API), never a refusal.

The models were trained on pediatric (one to five years old) frontal chest radiographs
(Kermany et al. 2018). A study is flagged when its DICOM header says otherwise, or when its
pixels look unlike a chest radiograph. The pixel rule, on the 8-bit grayscale image (the
colour check on the decoded colour image), each part a warning of its own:

- colour: the mean absolute difference between colour channels is above 6 grey levels
  (radiographs are grayscale; a photo or a screenshot is not);
- shape: width / height outside 0.5 .. 2.0;
- contrast: the standard deviation of the grey levels is below 12;
- blank: more than 60% of the pixels lie within 4 grey levels of one value.

On the 5,216 training images and the 16 full-resolution ones the rule flags none (measured
with `python -m diagnosis.guardrails DIR`; see README, "Intended use").
"""

from __future__ import annotations

import numpy as np
from PIL import Image

ADULT_AGE = 18
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})
CHEST_PARTS = frozenset({"", "CHEST", "THORAX", "LUNG", "LUNGS"})


def header_warnings(facts: dict) -> list[str]:
    warnings = []
    view = facts.get("view_position") or ""
    if view in LATERAL_VIEWS:
        warnings.append(f"Lateral view ({view}): the model was trained on frontal films only.")
    part = facts.get("body_part") or ""
    if part not in CHEST_PARTS:
        warnings.append(f"Body part {part}: the model reads chest radiographs only.")
    age = facts.get("age_years")
    if age is not None and age >= ADULT_AGE:
        warnings.append(
            f"Adult patient ({age} years): the model was trained on children aged 1 to 5."
        )
    return warnings


def pixel_warnings(image: Image.Image) -> list[str]:
    """`image` as decoded (any mode), preferably reduced to about 512 px for speed."""
    warnings = []
    if image.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)  # (H, W, 3)
        spread = np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])
        if float(spread.mean()) / 2 > 6:
            warnings.append("Colour image: chest radiographs are grayscale.")
    width, height = image.size
    if not 0.5 <= width / height <= 2.0:
        warnings.append(f"Unusual shape ({width}x{height}) for a chest radiograph.")
    gray = np.asarray(image.convert("L"), dtype=np.uint8)  # (H, W)
    if float(gray.std()) < 12:
        warnings.append("Very low contrast: this does not look like a radiograph.")
    counts = np.bincount(gray.ravel(), minlength=256)
    window = np.convolve(counts, np.ones(9, dtype=np.int64), mode="same")  # +-4 grey levels
    if window.max() > 0.6 * gray.size:
        warnings.append("Mostly blank image: this does not look like a radiograph.")
    return warnings


def _main() -> None:  # pragma: no cover - a measuring tool, run by hand
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Count images the pixel rule flags.")
    parser.add_argument("folder", type=Path)
    folder = parser.parse_args().folder
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    flagged = 0
    for path in paths:
        with Image.open(path) as image:
            image.draft("L" if image.mode == "L" else image.mode, (512, 512))
            found = pixel_warnings(image)
        if found:
            flagged += 1
            print(f"{path}: {' '.join(found)}")
    print(f"{flagged} of {len(paths)} images flagged")


if __name__ == "__main__":
    _main()
