from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import pytest
import torch

from ml.checkpoint import load_checkpoint, read_meta
from ml.data import manifest_hash, patient_id, read_manifest, scan_folder
from ml.inference import Predictor
from ml.metrics import choose_threshold, roc_auc
from ml.train import get_args_parser, main, parse_config
from tests.synthetic import make_xray, write_dataset

pytestmark = pytest.mark.slow  # trains, or starts a process (not in make test-unit)


def _args(data: Path, out: Path, *extra: str):
    return parse_config(["--data", str(data), "--out", str(out), "--print-freq", "0", *extra])


def _png(label: str, *, seed: int) -> bytes:
    buf = io.BytesIO()
    make_xray(label, seed=seed, size=64).save(buf, format="PNG")
    return buf.getvalue()


def test_it_learns_to_separate_synthetic_xrays(tmp_path: Path):
    write_dataset(tmp_path / "data", 40, size=64, seed=0)
    # From scratch at a fixed rate: the old recipe, whose figures this test was tuned on.
    args = _args(
        tmp_path / "data", tmp_path / "m.pt", "--img-size", "64", "--epochs", "8", "--lr", "1e-3",
        "--recipe", "fastai",
    )  # fmt: skip
    out = main(args)

    meta = read_meta(out)
    assert out == tmp_path / "m.pt"
    assert meta.metrics["val_auc"] >= 0.8
    assert meta.metrics["val_sensitivity"] >= 0.95  # the threshold rule on validation
    m = meta.metrics
    assert m["n_train"] + m["n_val"] + m["n_test"] == 80
    assert 8 <= m["n_val"] <= 16 and 8 <= m["n_test"] <= 16
    assert [h["phase"] for h in m["history"]] == ["unfrozen"] * 8  # from scratch: no frozen phase
    # The best pneumonia AUC picks the epoch; among epochs equal on it, the subtype AUC
    # (ml.engine.better), the first of equals on both.
    top = max(h["val_auc"] for h in m["history"])
    tied = [h for h in m["history"] if h["val_auc"] == top]
    assert m["best_epoch"] == max(tied, key=lambda h: h["val_subtype_auc"] or 0.0)["epoch"]
    assert meta.preprocessing.input_size == 64
    assert meta.train_args["epochs"] == 8 and meta.train_args["pretrained"] == "none"
    assert meta.train_args["freeze_epochs"] == 0 and meta.train_args["lr_mult"] == 1.0
    assert meta.data_hash == manifest_hash(scan_folder(tmp_path / "data"))
    assert datetime.fromisoformat(meta.created_at).utcoffset().total_seconds() == 0

    # The threshold rule saw only the images the checkpoint names: rerun on them, it gives
    # back the stored threshold.
    rule = meta.metrics["threshold_rule"]
    val = read_manifest(rule["images"])
    assert rule["manifest_hash"] == manifest_hash(val) == meta.train_args["val_manifest_hash"]
    assert (rule["rule"], rule["target"], rule["n"]) == ("sensitivity", 0.95, len(val))
    predictor = Predictor.from_checkpoint(out)
    scores = [p.probability for p in predictor.predict_batch([path for path, _ in val])]
    y_val = [int(label == "PNEUMONIA") for _, label in val]
    assert choose_threshold(y_val, scores, min_sensitivity=0.95) == pytest.approx(
        meta.threshold, abs=1e-5
    )

    # Unseen images (other seeds) are ranked as well as the validation ones.
    labels = [label for label in ("NORMAL", "PNEUMONIA") for _ in range(8)]
    predictions = predictor.predict_batch([_png(c, seed=1000 + i) for i, c in enumerate(labels)])
    y = [int(c == "PNEUMONIA") for c in labels]
    assert roc_auc(y, [p.probability for p in predictions]) >= 0.8


def test_it_writes_patient_disjoint_val_and_test_manifests_next_to_the_checkpoint(
    tmp_path: Path,
):
    write_dataset(tmp_path / "data", 20, size=32, seed=2)
    common = ["--img-size", "32", "--epochs", "1", "--batch-size", "8", "--lr", "1e-3"]
    out = main(_args(tmp_path / "data", tmp_path / "run" / "model.pt", *common))

    meta = read_meta(out)
    train = read_manifest(tmp_path / "run" / "model.train.csv")
    val = read_manifest(tmp_path / "run" / "model.val.csv")
    test = read_manifest(tmp_path / "run" / "model.test.csv")
    assert meta.train_args["train_manifest"] == str(tmp_path / "run" / "model.train.csv")
    assert meta.train_args["val_manifest"] == str(tmp_path / "run" / "model.val.csv")
    assert meta.train_args["test_manifest"] == str(tmp_path / "run" / "model.test.csv")
    assert meta.train_args["train_manifest_hash"] == manifest_hash(train)
    assert meta.train_args["val_manifest_hash"] == manifest_hash(val)
    assert meta.train_args["test_manifest_hash"] == manifest_hash(test)
    assert (len(train), len(val), len(test)) == (
        meta.metrics["n_train"],
        meta.metrics["n_val"],
        meta.metrics["n_test"],
    )
    train_patients = {patient_id(p) for p, _ in train}
    val_patients = {patient_id(p) for p, _ in val}
    test_patients = {patient_id(p) for p, _ in test}
    all_patients = {patient_id(p) for p, _ in scan_folder(tmp_path / "data")}
    assert val_patients.isdisjoint(test_patients)
    assert train_patients.isdisjoint(val_patients | test_patients)
    assert train_patients == all_patients - val_patients - test_patients  # the rest trained
    assert meta.train_args["lr_used"] == 1e-3 and meta.metrics["lr_find"] is None
    assert not (tmp_path / "run" / "model.lr_find.png").exists()  # --lr given: no finder


def test_it_trains_from_a_manifest_honouring_exclusions_and_weights(tmp_path: Path):
    items = write_dataset(tmp_path / "imgs", 16, size=32, seed=3)
    rows = ["path,label,weight,exclude"]
    for i, (path, label) in enumerate(items):
        # Every 8th image is excluded; every 5th counts double.
        rows.append(f"imgs/{label}/{path.name},{label},{2 if i % 5 == 0 else 1},{int(i % 8 == 0)}")
    csv = tmp_path / "manifest.csv"
    csv.write_text("\n".join(rows) + "\n")
    args = parse_config(
        ["--manifest", str(csv), "--out", str(tmp_path / "m.pt"), "--print-freq", "0",
         "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--lr", "1e-3",
         "--test-fraction", "0.2"]
    )  # fmt: skip
    meta = read_meta(main(args))

    kept = read_manifest(csv)
    assert len(kept) == 32 - 4
    m = meta.metrics
    assert m["n_train"] + m["n_val"] + m["n_test"] == 28
    assert meta.data_hash == manifest_hash(kept)  # the weights are part of the hash
    assert meta.train_args["manifest"] == str(csv) and meta.train_args["data"] is None


def test_it_gives_identical_weights_for_the_same_seed(tmp_path: Path):
    write_dataset(tmp_path / "data", 8, size=32, seed=1)
    common = [
        "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25",
        "--test-fraction", "0", "--lr-find-iters", "10",
    ]  # fmt: skip
    first, _ = load_checkpoint(main(_args(tmp_path / "data", tmp_path / "a.pt", *common)))
    second, _ = load_checkpoint(main(_args(tmp_path / "data", tmp_path / "b.pt", *common)))
    a, b = first.state_dict(), second.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_it_documents_every_flag():
    parser = get_args_parser()
    undocumented = [a.dest for a in parser._actions if not a.help]
    assert undocumented == []
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "x", "--pretrained", "maybe"])
    with pytest.raises(SystemExit):  # one data source, not none and not both
        parser.parse_args([])
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "x", "--manifest", "y.csv"])


def test_it_keeps_a_fixed_validation_manifest_out_of_training(tmp_path: Path):
    items = write_dataset(tmp_path / "data", 12, size=32, seed=4)
    held = [it for i, it in enumerate(items) if i % 4 == 0]
    val_csv = tmp_path / "val.csv"
    val_csv.write_text(
        "path,label\n" + "".join(f"{p},{label}\n" for p, label in held), encoding="utf-8"
    )
    common = ["--img-size", "32", "--epochs", "1", "--batch-size", "8", "--lr", "1e-3"]
    out = main(_args(tmp_path / "data", tmp_path / "m.pt", "--val-manifest", str(val_csv), *common))

    meta = read_meta(out)
    assert meta.metrics["n_val"] == len(held) and meta.metrics["n_test"] == 0
    assert meta.metrics["n_train"] == len(items) - len(held)
    assert meta.train_args["val_manifest_hash"] == manifest_hash(read_manifest(val_csv))
    assert not Path(out).with_suffix(".test.csv").exists()


def test_it_continues_from_a_checkpoint_with_its_arch_and_preprocessing(tmp_path: Path):
    write_dataset(tmp_path / "data", 10, size=32, seed=6)
    common = ["--batch-size", "8", "--test-fraction", "0", "--threads", "2"]
    first = main(_args(tmp_path / "data", tmp_path / "a.pt", "--img-size", "48", "--epochs", "1",
                       "--lr", "1e-3", *common))  # fmt: skip
    # A rate that cannot move the weights: the result must be the checkpoint it started from.
    second = main(_args(tmp_path / "data", tmp_path / "b.pt", "--init-checkpoint", str(first),
                        "--arch", "efficientnet_lite0", "--img-size", "96", "--epochs", "1",
                        "--freeze-epochs", "0", "--lr", "1e-30", *common))  # fmt: skip

    (a, meta_a), (b, meta_b) = load_checkpoint(first), load_checkpoint(second)
    assert meta_b.arch == "resnet34" and meta_b.preprocessing == meta_a.preprocessing
    assert meta_b.train_args["init_checkpoint"] == str(first)
    sa, sb = a.state_dict(), b.state_dict()
    weights = [k for k in sa if sa[k].is_floating_point() and "running" not in k]
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in weights)
