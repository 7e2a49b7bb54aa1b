from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from ml.data import (
    Item,
    acquisition_key,
    limit_per_class,
    manifest_hash,
    patient_id,
    read_manifest,
    scan_folder,
    split_by_acquisition,
    split_by_patient,
    split_train_val_test,
    write_manifest,
)
from ml.dataset import ImageDataset
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
    x, y, subtype = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert (y, ds[len(ds) - 1][1]) == (0, 1)
    assert subtype == -1  # normal
    assert ds.targets.count(1) == 30


def test_it_unpacks_items_as_path_label_pairs(dataset_root: Path):
    item = scan_folder(dataset_root)[0]
    path, label = item
    assert (path, label) == (item.path, item.label) == (item[0], item[1])
    assert (label, item.weight, item.source) == ("NORMAL", 1.0, "")
    assert isinstance(path, Path) and path.is_file()


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_it_reads_a_manifest_with_relative_paths_weights_and_exclusions(
    dataset_root: Path, tmp_path: Path
):
    normal = sorted((dataset_root / "NORMAL").iterdir())
    pneumonia = sorted((dataset_root / "PNEUMONIA").iterdir())
    export = tmp_path / "export"
    export.mkdir()
    (export / "imgs").symlink_to(dataset_root, target_is_directory=True)
    csv = _write_csv(
        export / "manifest.csv",
        "path,label,weight,exclude,source,comment\n"
        f"imgs/NORMAL/{normal[0].name},NORMAL,,,siteA,ok\n"
        f"imgs/NORMAL/{normal[1].name},NORMAL,2.5,no,siteA,\n"
        f"imgs/NORMAL/{normal[2].name},NORMAL,1,yes,siteB,blurred\n"
        f"{pneumonia[0]},PNEUMONIA,0.5,0,siteB,absolute path\n"
        f"imgs/PNEUMONIA/{pneumonia[1].name},PNEUMONIA,1,TRUE,,\n",
    )
    items = read_manifest(csv)
    assert [(it.path.name, it.label, it.weight, it.source) for it in items] == [
        (normal[0].name, "NORMAL", 1.0, "siteA"),
        (normal[1].name, "NORMAL", 2.5, "siteA"),
        (pneumonia[0].name, "PNEUMONIA", 0.5, "siteB"),
    ]
    assert items[0].path == export / "imgs" / "NORMAL" / normal[0].name  # relative to the CSV
    assert items[2].path == pneumonia[0]  # an absolute path stays as it is

    ds = ImageDataset(items, eval_transform(Preprocessing(input_size=32)), return_weight=True)
    assert ds.weights == [1.0, 2.5, 0.5]
    assert ds[1][1:] == (0, 2.5, -1)


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ("NORMAL/{n},NORMAL,1,maybe", "exclude must be one of"),
        ("NORMAL/{n},NORMAL,-1,0", "weight must be finite and >= 0"),
        ("NORMAL/{n},NORMAL,heavy,0", "weight must be a number"),
        ("NORMAL/{n},COVID,1,0", "label 'COVID' is not one of"),
        ("NORMAL/nope.jpeg,NORMAL,1,0", "1 image.s. listed in .* do not exist"),
        ("NORMAL/{n},NORMAL,1,1", "lists no images"),
    ],
)
def test_it_refuses_a_manifest_with_a_bad_row(dataset_root: Path, row: str, error: str):
    name = sorted((dataset_root / "NORMAL").iterdir())[0].name
    csv = _write_csv(dataset_root / "bad.csv", "path,label,weight,exclude\n" + row.format(n=name))
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        read_manifest(csv)


def test_it_needs_path_and_label_columns(tmp_path: Path):
    csv = _write_csv(tmp_path / "m.csv", "filename,label\nx.jpeg,NORMAL\n")
    with pytest.raises(ValueError, match="needs columns path and label"):
        read_manifest(csv)


def test_it_writes_a_manifest_that_reads_back_the_same(dataset_root: Path, tmp_path: Path):
    items = scan_folder(dataset_root)[::7]
    items[1] = Item(items[1].path, items[1].label, 0.25, "relabelled")
    csv = write_manifest(tmp_path / "deep" / "val.csv", items)
    back = read_manifest(csv)
    assert back == [Item(it.path.resolve(), it.label, it.weight, it.source) for it in items]
    assert manifest_hash(back) == manifest_hash(items)
    assert manifest_hash(back) != manifest_hash([*items[:1], Item(*items[1]), *items[2:]])


def test_it_splits_train_val_test_without_sharing_a_patient(dataset_root: Path):
    items = scan_folder(dataset_root)
    train, val, test = split_train_val_test(items, val_fraction=0.2, test_fraction=0.2, seed=4)
    assert sorted(train + val + test) == sorted(items)
    patients = [{patient_id(p) for p, _ in split} for split in (train, val, test)]
    assert patients[0].isdisjoint(patients[1])
    assert patients[0].isdisjoint(patients[2])
    assert patients[1].isdisjoint(patients[2])
    for split in (val, test):  # about 20% of each class's 30 images, whole patients
        counts = Counter(label for _, label in split)
        assert 5 <= counts["NORMAL"] <= 8 and 5 <= counts["PNEUMONIA"] <= 8

    # The test split depends on the seed only, not on the validation share.
    _, _, same_test = split_train_val_test(items, val_fraction=0.3, test_fraction=0.2, seed=4)
    assert same_test == test
    _, _, other_test = split_train_val_test(items, val_fraction=0.2, test_fraction=0.2, seed=5)
    assert other_test != test
    # No test split: exactly the old train/val split.
    assert split_train_val_test(items, val_fraction=0.2, test_fraction=0.0, seed=1) == (
        *split_by_patient(items, val_fraction=0.2, seed=1),
        [],
    )
    with pytest.raises(ValueError, match="val_fraction < 1 - test_fraction"):
        split_train_val_test(items, val_fraction=0.5, test_fraction=0.5)


@pytest.mark.parametrize(
    ("filename", "key"),
    [
        ("person1000_bacteria_2931.jpeg", ("person", 1000)),
        ("person447_virus_921_1.jpeg", ("person", 447)),
        ("IM-0115-0001.jpeg", ("IM", 115)),
        ("NORMAL2-IM-1427-0001.jpeg", ("NORMAL2-IM", 1427)),
        ("upload_7.png", None),
    ],
)
def test_it_reads_the_numbering_family_and_number(filename: str, key):
    assert acquisition_key(filename) == key


@pytest.mark.parametrize("end", ["last", "first"])
def test_it_holds_out_one_acquisition_period_per_family_by_whole_patients(
    dataset_root: Path, end: str
):
    items = [*scan_folder(dataset_root), Item(Path("upload_1.png"), "NORMAL")]
    kept, held = split_by_acquisition(items, 0.25, end=end)

    assert sorted(kept + held) == sorted(items) and not set(kept) & set(held)
    assert Item(Path("upload_1.png"), "NORMAL") in kept  # no family: never held out
    assert {patient_id(p) for p, _ in kept}.isdisjoint(patient_id(p) for p, _ in held)
    families = {acquisition_key(p)[0] for p, _ in held}
    assert families == {"IM", "NORMAL2-IM", "person"}
    for family in families:
        held_numbers = [acquisition_key(p)[1] for p, _ in held if acquisition_key(p)[0] == family]
        kept_numbers = [
            n for p, _ in kept if (k := acquisition_key(p)) and k[0] == family for n in [k[1]]
        ]
        # One contiguous period at the chosen end: no kept patient lies inside it.
        if end == "last":
            assert min(held_numbers) > max(kept_numbers)
        else:
            assert max(held_numbers) < min(kept_numbers)
        n_family = len(held_numbers) + len(kept_numbers)
        assert 0.25 * n_family <= len(held_numbers) <= 0.25 * n_family + 2  # whole patients


def test_it_carves_the_test_split_by_acquisition_when_asked(dataset_root: Path):
    items = scan_folder(dataset_root)
    train, val, test = split_train_val_test(
        items, val_fraction=0.2, test_fraction=0.2, test_split="acquisition"
    )
    _, held = split_by_acquisition(items, 0.2)
    assert test == held
    assert {patient_id(p) for p, _ in train}.isdisjoint(patient_id(p) for p, _ in val + test)
    with pytest.raises(ValueError, match="test_split"):
        split_train_val_test(items, val_fraction=0.2, test_fraction=0.2, test_split="site")
    with pytest.raises(ValueError, match="end"):
        split_by_acquisition(items, 0.2, end="middle")
