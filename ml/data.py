"""Finding labelled images (class folders or a CSV manifest) and splitting them by patient.

The data set's file names carry the patient: `person123_bacteria_456.jpeg` is patient
`person123`, `IM-0115-0001.jpeg` is `IM-0115` and `NORMAL2-IM-1427-0001.jpeg` is
`NORMAL2-IM-1427`. Several images can belong to one child, so validation and test patients
must never appear in training or the figures leak. Elsewhere (a hospital's DICOM, uploads
under any name) the platform gives each Item a `patient` key (a keyed hash of the DICOM
PatientID, or of an identifier given with the upload); splits group by it, and fall back to
the file-name patterns only where an item has none (`patient_of`).

    from ml.data import read_manifest, scan_folder, split_train_val_test
    items = scan_folder("../shared/data/chest_xray")        # [Item(path, "NORMAL"), ...]
    items = read_manifest("export/manifest.csv")            # path,label[,weight][,exclude][,source]
    train, val, test = split_train_val_test(items, val_fraction=0.15, test_fraction=0.15, seed=0)
    path, label = items[0]                                  # an Item unpacks as a pair

No torch here (a test checks): the platform reads and writes manifests and splits by patient
without loading it; the torch Dataset over Items is ml.dataset.ImageDataset.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import os
import random
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ml.core import SUBTYPES  # noqa: F401 - re-exported: "bacterial", "viral"

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
POSITIVE_CLASS = "PNEUMONIA"
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})
TEST_SPLITS = ("random", "acquisition")


@dataclass(frozen=True, order=True)
class Item:
    """One labelled image. It unpacks and indexes like the (path, label) pair it used to be,
    so `for path, label in items` keeps working; weight and source ride along."""

    path: Path
    label: str
    weight: float = 1.0  # multiplies this image's training loss (manifest column `weight`)
    source: str = ""  # free text from the manifest, e.g. which export or site the row came from
    patient: str = ""  # a pseudonymous patient key (manifest column `patient`); "" for none
    subtype: str = (
        ""  # "bacterial" / "viral" for PNEUMONIA (manifest column `subtype`); "": unknown
    )

    def __iter__(self) -> Iterator:
        return iter((self.path, self.label))

    def __getitem__(self, index: int) -> Path | str:
        return (self.path, self.label)[index]

    def __len__(self) -> int:
        return 2


_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),  # person123_bacteria_456
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE),  # IM-0115-0001, NORMAL2-IM-1427-0001
)


def patient_id(filename: str | os.PathLike) -> str:
    """The patient an image belongs to; a name that fits no pattern is its own patient."""
    return kermany_patient(filename) or Path(Path(filename).name).stem


def kermany_patient(filename: str | os.PathLike) -> str | None:
    """The patient a Kermany-style file name names, or None when it fits no known pattern."""
    name = Path(filename).name
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(name)
        if match:
            return match.group(1)
    return None


_SUBTYPE_IN_NAME = re.compile(r"^person\d+_(bacteria|virus)_", re.IGNORECASE)


def kermany_subtype(filename: str | os.PathLike) -> str:
    """ "bacterial" or "viral" as a Kermany pneumonia file name says (`person1_bacteria_1`,
    `person1_virus_6`), "" for any other name."""
    match = _SUBTYPE_IN_NAME.match(Path(filename).name)
    if match is None:
        return ""
    return "bacterial" if match.group(1).lower() == "bacteria" else "viral"


def subtype_of(item: Item | tuple) -> str:
    """The subtype training learns for an item: "" for NORMAL; for PNEUMONIA its own
    `subtype` (a manifest's column, a radiologist's review), else what a Kermany file name
    says, else "" (unknown: the item then teaches the pneumonia question only)."""
    if item[1] != POSITIVE_CLASS:
        return ""
    return getattr(item, "subtype", "") or kermany_subtype(item[0])


def patient_of(item: Item | tuple) -> str:
    """The patient an item is grouped by in every split: its pseudonymous key when it has one,
    else what its file name says (patient_id). A plain (path, label) pair has no key."""
    return getattr(item, "patient", "") or patient_id(item[0])


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
        Item(path, label)
        for label in class_names
        for path in sorted((base / label).iterdir())
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {base}")
    return items


# ---------------------------------------------------------------------------------------------
# CSV manifests: how exported data reaches training

_TRUE = frozenset({"1", "true", "yes", "y", "t"})
_FALSE = frozenset({"", "0", "false", "no", "n", "f"})


def _flag(value: str, where: str) -> bool:
    v = value.strip().lower()
    if v not in _TRUE | _FALSE:
        # A typo such as "ture" must not silently train on an image someone meant to drop.
        raise ValueError(f"{where}: exclude must be one of 1/0, true/false, yes/no, got {value!r}")
    return v in _TRUE


def _weight(value: str, where: str) -> float:
    try:
        w = float(value) if value.strip() else 1.0
    except ValueError:
        raise ValueError(f"{where}: weight must be a number, got {value!r}") from None
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"{where}: weight must be finite and >= 0, got {value!r}")
    return w


_SUBTYPE_SPELLINGS = {
    "bacterial": "bacterial", "bacteria": "bacterial", "viral": "viral", "virus": "viral",
    "": "", "undetermined": "", "normal": "",
}  # fmt: skip


def _subtype(value: str, label: str, where: str) -> str:
    v = value.strip().lower()
    if v not in _SUBTYPE_SPELLINGS:
        raise ValueError(
            f"{where}: subtype must be bacterial, viral, undetermined or empty, got {value!r}"
        )
    subtype = _SUBTYPE_SPELLINGS[v]
    if subtype and label != POSITIVE_CLASS:
        raise ValueError(f"{where}: a {label} image cannot have subtype {value!r}")
    return subtype


def read_manifest(
    csv_path: str | os.PathLike, class_names: Sequence[str] = CLASS_NAMES
) -> list[Item]:
    """The images a CSV manifest lists, in file order.

    Columns: path and label (required), weight (default 1), exclude (1/true/yes drops the row),
    source (free text), patient (a pseudonymous key) and subtype (bacterial / viral for a
    PNEUMONIA row, or bacteria / virus as Kermany's names spell them; empty, "undetermined" or
    "normal" for none); other columns are ignored. A relative
    path is relative to the CSV's folder, so an export folder can be moved whole. Bad values
    raise ValueError naming the line; missing image files raise FileNotFoundError before any
    training starts.
    """
    csv_path = Path(csv_path)
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        items = manifest_rows(
            csv.DictReader(f), where=str(csv_path), folder=csv_path.parent,
            class_names=class_names,
        )  # fmt: skip
    absent = [str(it.path) for it in items if not it.path.is_file()]
    if absent:
        raise FileNotFoundError(
            f"{len(absent)} image(s) listed in {csv_path} do not exist, e.g. {absent[:3]}"
        )
    return items


def manifest_rows(
    reader: csv.DictReader,
    *,
    where: str,
    folder: Path = Path("."),
    class_names: Sequence[str] = CLASS_NAMES,
) -> list[Item]:
    """The items of a manifest's rows (read_manifest's columns and checks, relative paths
    under `folder`), without looking for the images: a manifest read from object storage
    names files of another machine until its sources are resolved."""
    missing_columns = {"path", "label"} - set(reader.fieldnames or ())
    if missing_columns:
        raise ValueError(f"{where} needs columns path and label; has {reader.fieldnames or []}")
    items = []
    for line, row in enumerate(reader, start=2):  # line 1 is the header
        at = f"{where}:{line}"
        if _flag(row.get("exclude") or "", at):
            continue
        path, label = (row["path"] or "").strip(), (row["label"] or "").strip()
        if not path:
            raise ValueError(f"{at}: empty path")
        if label not in class_names:
            raise ValueError(f"{at}: label {label!r} is not one of {list(class_names)}")
        weight = _weight(row.get("weight") or "", at)
        source = (row.get("source") or "").strip()
        patient = (row.get("patient") or "").strip()
        subtype = _subtype(row.get("subtype") or "", label, at)
        items.append(Item(folder / path, label, weight, source, patient, subtype))
    if not items:
        raise ValueError(f"{where} lists no images (after exclusions)")
    return items


def write_manifest(csv_path: str | os.PathLike, items: Sequence[Item]) -> Path:
    """Write `items` as a manifest read_manifest reads back: absolute paths, so the CSV can
    sit anywhere (next to a checkpoint) and still point at the images."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "weight", "source", "patient", "subtype"])
        for item in items:
            path, label = item
            weight = getattr(item, "weight", 1.0)
            writer.writerow(
                [Path(path).resolve(), label, f"{weight:g}", getattr(item, "source", ""),
                 getattr(item, "patient", ""), getattr(item, "subtype", "")]
            )  # fmt: skip
    return csv_path


def manifest_hash(items: Sequence[Item]) -> str:
    """sha256 over the sorted 'LABEL/filename' lines (plus the weight where it is not 1, and
    the subtype where an item carries one of its own, e.g. from a review): the
    same image list gives the same hash wherever the folder lives. File contents are not read,
    so this is cheap but trusts names."""
    lines = []
    for item in items:
        path, label = item
        weight, subtype = getattr(item, "weight", 1.0), getattr(item, "subtype", "")
        lines.append(
            f"{label}/{Path(path).name}"
            + (f"\t{weight:g}" if weight != 1.0 else "")
            + (f"\t{subtype}" if subtype else "")
        )
    return hashlib.sha256("\n".join(sorted(lines)).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# Subsets and splits, always whole patients at a time


def _patients_by_label(items: Sequence[Item]) -> dict[str, dict[str, list[Item]]]:
    """label -> patient -> items, with a patient filed under the label of its first image."""
    by_patient: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_patient[patient_of(item)].append(item)
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


def _hold_out(
    items: Sequence[Item], fraction: float, rng_key: str
) -> tuple[list[Item], list[Item]]:
    """(kept, held out): about `fraction` of each class's images, whole patients at a time."""
    held: set[Item] = set()
    for label, patients in sorted(_patients_by_label(items).items()):
        order = sorted(patients)
        random.Random(f"{rng_key}-{label}").shuffle(order)
        n_images = sum(len(group) for group in patients.values())
        # Each class gets at least one held-out image and keeps at least one patient (the
        # last in the order) for training.
        target = max(1, round(fraction * n_images))
        taken = 0
        for patient in order[:-1]:
            if taken >= target:
                break
            held.update(patients[patient])
            taken += len(patients[patient])
    return [it for it in items if it not in held], [it for it in items if it in held]


def split_by_patient(
    items: Sequence[Item], *, val_fraction: float = 0.15, seed: int = 0
) -> tuple[list[Item], list[Item]]:
    """(train, val): about `val_fraction` of each class's images go to validation, whole
    patients at a time, so no patient is in both. Deterministic for a given seed."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be within (0, 1), got {val_fraction}")
    return _hold_out(items, val_fraction, str(seed))


def split_train_val_test(
    items: Sequence[Item],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int = 0,
    test_split: str = "random",
) -> tuple[list[Item], list[Item], list[Item]]:
    """(train, val, test), patient-disjoint, each fraction a share of all of `items`.

    The test split is carved first, with its own random stream, so changing --val-fraction
    never moves a patient into or out of it. test_fraction=0 gives an empty test split and
    the same (train, val) as split_by_patient. test_split="acquisition" carves it as the most
    recent acquisitions of each numbering family instead (split_by_acquisition).
    """
    if test_split not in TEST_SPLITS:
        raise ValueError(f"test_split must be one of {', '.join(TEST_SPLITS)}, got {test_split!r}")
    if not 0.0 <= test_fraction < 1.0 or not 0.0 < val_fraction < 1.0 - test_fraction:
        raise ValueError(
            "need 0 <= test_fraction < 1 and 0 < val_fraction < 1 - test_fraction, got "
            f"val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    rest, test = list(items), []
    if test_fraction > 0 and test_split == "acquisition":
        rest, test = split_by_acquisition(items, test_fraction, end="last")
    elif test_fraction > 0:
        rest, test = _hold_out(items, test_fraction, f"{seed}-test")
    # val_fraction is a share of all images; the rest is only (1 - test_fraction) of them.
    train, val = _hold_out(rest, val_fraction / (1.0 - test_fraction), str(seed))
    return train, val, test


# ---------------------------------------------------------------------------------------------
# Acquisition groups: the proxy for "another hospital"

_ACQUISITION_PATTERNS = (
    re.compile(r"^(person)(\d+)_", re.IGNORECASE),  # person123_bacteria_456
    re.compile(r"^(NORMAL2-IM)-(\d+)-", re.IGNORECASE),  # NORMAL2-IM-1427-0001
    re.compile(r"^(IM)-(\d+)-", re.IGNORECASE),  # IM-0115-0001
)


def acquisition_key(filename: str | os.PathLike) -> tuple[str, int] | None:
    """(family, patient number) of a Kermany file name, or None for any other name.

    The data set numbers its patients in three families (`IM`, `NORMAL2-IM`, `person`), and
    the numbering follows acquisition: the official "val" images continue it
    (NORMAL2-IM-1427 onwards, person1946 onwards), and the training images' statistics drift
    along it (the share of near-black pixels in pneumonia films rises from 4.4% in the first
    fifth of person numbers to 7.3% in the last; ml/README.md "The proxy")."""
    name = Path(filename).name
    for pattern in _ACQUISITION_PATTERNS:
        match = pattern.match(name)
        if match:
            return match.group(1).upper().replace("PERSON", "person"), int(match.group(2))
    return None


def split_by_acquisition(
    items: Sequence[Item], fraction: float, *, end: str = "last"
) -> tuple[list[Item], list[Item]]:
    """(kept, held out): in each numbering family, the patients at the `end` ("last": the
    most recent acquisitions, "first": the oldest) until `fraction` of the family's images,
    whole patients at a time. Images whose names carry no family stay in `kept`.

    A held-out block is one acquisition period no training image comes from: a harder, and
    more honest, stand-in for another hospital than a random patient split."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be within (0, 1), got {fraction}")
    if end not in ("first", "last"):
        raise ValueError(f"end must be 'first' or 'last', got {end!r}")
    families: dict[str, dict[int, list[Item]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        key = acquisition_key(item.path)
        if key is not None:
            families[key[0]][key[1]].append(item)
    held: set[Item] = set()
    for patients in families.values():
        order = sorted(patients, reverse=end == "last")
        target = fraction * sum(len(group) for group in patients.values())
        taken = 0
        for number in order[:-1]:  # the family keeps at least one patient
            if taken >= target:
                break
            held.update(patients[number])
            taken += len(patients[number])
    return [it for it in items if it not in held], [it for it in items if it in held]


# ---------------------------------------------------------------------------------------------
# Command-line sources


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """--data DIR or --manifest CSV, one of them required: the images a command reads."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="folder with NORMAL/, PNEUMONIA/ (or train/...)")
    source.add_argument(
        "--manifest",
        type=Path,
        help="CSV with columns path,label[,weight][,exclude][,source]; paths relative to it",
    )


def items_from_args(args: argparse.Namespace) -> list[Item]:
    return read_manifest(args.manifest) if args.manifest else scan_folder(args.data)
