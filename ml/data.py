"""Finding labelled images on disk and splitting them by patient.

The data set's file names carry the patient: `person123_bacteria_456.jpeg` is patient
`person123`, `IM-0115-0001.jpeg` is `IM-0115` and `NORMAL2-IM-1427-0001.jpeg` is
`NORMAL2-IM-1427`. Several images can belong to one child, so validation patients must never
appear in training or the validation figures leak.

    from ml.data import scan_folder, split_by_patient
    items = scan_folder("../shared/data/chest_xray")        # [(path, "NORMAL"), ...]
    train, val = split_by_patient(items, val_fraction=0.15, seed=0)
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ml.preprocessing import open_image

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
POSITIVE_CLASS = "PNEUMONIA"
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})

Item = tuple[Path, str]  # (image path, class name)

_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),  # person123_bacteria_456
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE),  # IM-0115-0001, NORMAL2-IM-1427-0001
)


def patient_id(filename: str) -> str:
    """The patient an image belongs to; a name that fits no pattern is its own patient."""
    name = Path(filename).name
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(name)
        if match:
            return match.group(1)
    return Path(name).stem


def scan_folder(root: str | os.PathLike, class_names: Sequence[str] = CLASS_NAMES) -> list[Item]:
    """All images under ROOT/{NORMAL,PNEUMONIA}/ (or ROOT/train/{...}), sorted by class, name."""
    root = Path(root)
    base = root / "train" if not (root / class_names[0]).is_dir() else root
    missing = [c for c in class_names if not (base / c).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"expected class folders {list(class_names)} in {root} or {root / 'train'}; "
            f"missing {missing}"
        )
    items = [
        (path, label)
        for label in class_names
        for path in sorted((base / label).iterdir())
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {base}")
    return items


def _patients_by_label(items: Sequence[Item]) -> dict[str, dict[str, list[Item]]]:
    """label -> patient -> items, with a patient filed under the label of its first image."""
    by_patient: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_patient[patient_id(item[0].name)].append(item)
    grouped: dict[str, dict[str, list[Item]]] = defaultdict(dict)
    for patient in sorted(by_patient):
        group = by_patient[patient]
        grouped[group[0][1]][patient] = group
    return grouped


def limit_per_class(items: Sequence[Item], n: int, *, seed: int = 0) -> list[Item]:
    """At most `n` images per class: whole patients in a seeded random order, then truncated.

    Taking patients (not the first names in sorted order) keeps the subset spread over the
    whole data set, and the same seed always gives the same subset.
    """
    keep: set[Item] = set()
    for label, patients in sorted(_patients_by_label(items).items()):
        order = sorted(patients)
        random.Random(f"{seed}-{label}").shuffle(order)
        taken: list[Item] = []
        for patient in order:
            taken.extend(patients[patient])
            if len(taken) >= n:
                break
        keep.update(taken[:n])
    return [item for item in items if item in keep]


def split_by_patient(
    items: Sequence[Item], *, val_fraction: float = 0.15, seed: int = 0
) -> tuple[list[Item], list[Item]]:
    """(train, val): about `val_fraction` of each class's images go to validation, whole
    patients at a time, so no patient is in both. Deterministic for a given seed."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be within (0, 1), got {val_fraction}")
    val: set[Item] = set()
    for label, patients in sorted(_patients_by_label(items).items()):
        order = sorted(patients)
        random.Random(f"{seed}-{label}").shuffle(order)
        n_images = sum(len(group) for group in patients.values())
        # Each class gets at least one validation image and keeps at least one patient (the
        # last in the order) for training.
        target = max(1, round(val_fraction * n_images))
        taken = 0
        for patient in order[:-1]:
            if taken >= target:
                break
            val.update(patients[patient])
            taken += len(patients[patient])
    return [it for it in items if it not in val], [it for it in items if it in val]


def manifest_hash(items: Sequence[Item]) -> str:
    """sha256 over the sorted 'LABEL/filename' lines: the same image list gives the same hash
    wherever the folder lives. File contents are not read, so this is cheap but trusts names."""
    lines = sorted(f"{label}/{Path(path).name}" for path, label in items)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


class ImageDataset(Dataset):
    """(path, label) items -> (transform(image), class index). Images decode as 8-bit gray."""

    def __init__(
        self,
        items: Sequence[Item],
        transform: Callable,
        *,
        class_names: Sequence[str] = CLASS_NAMES,
        decode_size: int | None = None,
    ) -> None:
        self.items = list(items)
        self.transform = transform
        self.class_to_index = {name: i for i, name in enumerate(class_names)}
        self.decode_size = decode_size  # lets large JPEGs decode at a reduced scale
        self.targets = [self.class_to_index[label] for _, label in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, _ = self.items[index]
        image = open_image(path, size=self.decode_size)
        return self.transform(image), self.targets[index]  # (3, S, S), class index
