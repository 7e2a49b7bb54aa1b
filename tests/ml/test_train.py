from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import pytest
import torch

from ml.checkpoint import load_checkpoint, read_meta
from ml.data import manifest_hash, scan_folder
from ml.inference import Predictor
from ml.metrics import roc_auc
from ml.train import get_args_parser, main
from tests.synthetic import make_xray, write_dataset


def _args(data: Path, out: Path, *extra: str):
    return get_args_parser().parse_args(
        ["--data", str(data), "--out", str(out), "--print-freq", "0", *extra]
    )


def _png(label: str, *, seed: int) -> bytes:
    buf = io.BytesIO()
    make_xray(label, seed=seed, size=64).save(buf, format="PNG")
    return buf.getvalue()


def test_it_learns_to_separate_synthetic_xrays(tmp_path: Path):
    write_dataset(tmp_path / "data", 40, size=64, seed=0)
    args = _args(tmp_path / "data", tmp_path / "m.pt", "--img-size", "64", "--epochs", "8")
    out = main(args)

    meta = read_meta(out)
    assert out == tmp_path / "m.pt"
    assert meta.metrics["val_auc"] >= 0.8
    assert meta.metrics["val_sensitivity"] >= 0.95  # the threshold rule on validation
    assert meta.metrics["n_train"] + meta.metrics["n_val"] == 80
    assert 8 <= meta.metrics["n_val"] <= 16
    assert meta.preprocessing.input_size == 64
    assert meta.train_args["epochs"] == 8 and meta.train_args["pretrained"] == "none"
    assert meta.data_hash == manifest_hash(scan_folder(tmp_path / "data"))
    assert datetime.fromisoformat(meta.created_at).utcoffset().total_seconds() == 0

    # Unseen images (other seeds) are ranked as well as the validation ones.
    predictor = Predictor.from_checkpoint(out)
    labels = [label for label in ("NORMAL", "PNEUMONIA") for _ in range(8)]
    predictions = predictor.predict_batch([_png(c, seed=1000 + i) for i, c in enumerate(labels)])
    y = [int(c == "PNEUMONIA") for c in labels]
    assert roc_auc(y, [p.probability for p in predictions]) >= 0.8


def test_it_gives_identical_weights_for_the_same_seed(tmp_path: Path):
    write_dataset(tmp_path / "data", 8, size=32, seed=1)
    common = ["--img-size", "32", "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25"]
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
