from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from ml.data import (
    ImageDataset,
    limit_per_class,
    manifest_hash,
    patient_id,
    scan_folder,
    split_by_patient,
)
from ml.preprocessing import Preprocessing, eval_transform
from tests.synthetic import write_dataset


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, 30, size=32, seed=3)
    return root


@pytest.mark.parametrize(
    ("filename", "patient"),
    [
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0429-0001-0002.jpeg", "IM-0429"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("/some/dir/NORMAL2-IM-1345-0001-0002.jpeg", "NORMAL2-IM-1345"),
        ("upload_7.png", "upload_7"),
    ],
)
def test_it_reads_the_patient_from_the_file_name(filename: str, patient: str):
    assert patient_id(filename) == patient


def test_it_scans_class_folders_directly_or_under_train(dataset_root: Path, tmp_path: Path):
    items = scan_folder(dataset_root)
    assert Counter(label for _, label in items) == {"NORMAL": 30, "PNEUMONIA": 30}
    assert items == sorted(items, key=lambda it: (it[1], it[0].name))
    (tmp_path / "train").symlink_to(dataset_root, target_is_directory=True)
    assert [p.name for p, _ in scan_folder(tmp_path)] == [p.name for p, _ in items]
    with pytest.raises(FileNotFoundError, match="NORMAL"):
        scan_folder(tmp_path / "train" / "NORMAL")


def test_it_splits_by_patient_without_leaks_and_keeps_both_classes(dataset_root: Path):
    items = scan_folder(dataset_root)
    train, val = split_by_patient(items, val_fraction=0.2, seed=1)
    assert sorted(train + val) == sorted(items)
    train_patients = {patient_id(p.name) for p, _ in train}
    val_patients = {patient_id(p.name) for p, _ in val}
    assert train_patients.isdisjoint(val_patients)
    counts = Counter(label for _, label in val)
    assert 5 <= counts["NORMAL"] <= 8
    assert 5 <= counts["PNEUMONIA"] <= 8
    assert split_by_patient(items, val_fraction=0.2, seed=1) == (train, val)
    assert split_by_patient(items, val_fraction=0.2, seed=2) != (train, val)


def test_it_limits_each_class_deterministically(dataset_root: Path):
    items = scan_folder(dataset_root)
    subset = limit_per_class(items, 11, seed=0)
    assert Counter(label for _, label in subset) == {"NORMAL": 11, "PNEUMONIA": 11}
    assert limit_per_class(items, 11, seed=0) == subset
    assert limit_per_class(items, 11, seed=1) != subset
    assert limit_per_class(items, 1000, seed=0) == items


def test_it_hashes_the_manifest_independently_of_location_and_order(dataset_root: Path):
    items = scan_folder(dataset_root)
    moved = [(Path("/elsewhere") / p.parent.name / p.name, label) for p, label in reversed(items)]
    assert manifest_hash(items) == manifest_hash(moved)
    assert len(manifest_hash(items)) == 64
    assert manifest_hash(items[1:]) != manifest_hash(items)
    relabelled = [(p, "NORMAL") for p, _ in items]
    assert manifest_hash(relabelled) != manifest_hash(items)


def test_it_yields_tensors_and_class_indices(dataset_root: Path):
    items = scan_folder(dataset_root)
    ds = ImageDataset(items, eval_transform(Preprocessing(input_size=32)), decode_size=32)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert (y, ds[len(ds) - 1][1]) == (0, 1)
    assert ds.targets.count(1) == 30
