from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from ml.checkpoint import read_meta
from ml.data import manifest_hash, scan_folder, subtype_of
from ml.evaluate import evaluate_checkpoint, evaluate_scores, get_args_parser, main
from ml.inference import Predictor
from ml.metrics import roc_auc
from tests.conftest import make_checkpoint
from tests.synthetic import write_dataset

ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "auc",
    "auc_ci",
    "accuracy",
    "sensitivity",
    "specificity",
    "threshold",
    "confusion",
    "brier",
    "ece",
    "n",
    "sensitivity_at_90_specificity",
    "specificity_at_95_sensitivity",
    "model",
    "data",
    "subtype",
}


@pytest.fixture(scope="module")
def kaggle_root(tmp_path_factory) -> Path:
    """A data set root with train/ and test/: evaluation must pick test/."""
    root = tmp_path_factory.mktemp("chest_xray")
    write_dataset(root / "test", 6, size=64, seed=11)
    write_dataset(root / "train", 3, size=64, seed=12)
    return root


def _run(*argv: str):
    return main(get_args_parser().parse_args(list(argv)))


def test_it_writes_the_json_and_plots_for_a_kaggle_folder(
    kaggle_root: Path, checkpoint_path: Path, tmp_path: Path, capsys
):
    out = tmp_path / "eval" / "metrics.json"
    _run(
        "--checkpoint", str(checkpoint_path), "--data", str(kaggle_root),
        "--json", str(out), "--plots", str(tmp_path / "plots"), "--batch-size", "5",
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert set(result) == KEYS and result["subtype"] is None  # a binary model
    assert result["n"] == {"NORMAL": 6, "PNEUMONIA": 6, "total": 12}  # test/, not train/
    assert sum(result["confusion"].values()) == 12
    assert result["threshold"] == 0.5  # the checkpoint's
    test_items = scan_folder(kaggle_root / "test")
    assert result["data"] == {
        "source": str(kaggle_root),
        "manifest_hash": manifest_hash(test_items),
    }
    meta = read_meta(checkpoint_path)
    assert result["model"]["arch"] == "resnet34"
    assert (result["model"]["created_at"], result["model"]["data_hash"]) == (
        meta.created_at,
        meta.data_hash,
    )

    # The figures are those of the model's own probabilities, scored one image at a time.
    predictor = Predictor.from_checkpoint(checkpoint_path)
    probabilities = [predictor.predict(path).probability for path, _ in test_items]
    y = [int(label == "PNEUMONIA") for _, label in test_items]
    assert result["auc"] == pytest.approx(roc_auc(y, probabilities), abs=1e-9)
    low, high = result["auc_ci"]
    assert low <= result["auc"] <= high

    for name in ("roc.png", "confusion.png", "reliability.png"):
        with Image.open(tmp_path / "plots" / name) as image:
            assert image.format == "PNG"
            assert min(image.size) > 200
    table = capsys.readouterr().out
    assert "ROC AUC" in table and "predicted PNEUMONIA" in table


def test_it_reads_a_csv_manifest_and_overrides_the_threshold(
    kaggle_root: Path, checkpoint_path: Path, tmp_path: Path
):
    items = scan_folder(kaggle_root / "test")
    csv = tmp_path / "manifest.csv"
    lines = ["path,label"] + [f"{path},{label}" for path, label in items[::2]]
    csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "m.json"
    _run("--checkpoint", str(checkpoint_path), "--data-manifest", str(csv), "--json", str(out),
         "--threshold", "0.0")  # fmt: skip
    result = json.loads(out.read_text())
    assert result["n"]["total"] == 6
    assert result["threshold"] == 0.0
    assert result["sensitivity"] == 1.0 and result["specificity"] == 0.0  # all called positive
    assert result["data"]["source"] == str(csv)


def test_it_evaluates_stored_scores_without_a_model():
    e = evaluate_scores([0, 0, 1, 1, 1], [0.1, 0.6, 0.4, 0.7, 0.9], 0.5, n_bootstrap=200)
    assert e.auc == pytest.approx(5 / 6)
    assert e.confusion == {"tn": 1, "fp": 1, "fn": 1, "tp": 2}
    assert (e.sensitivity, e.specificity, e.accuracy) == (pytest.approx(2 / 3), 0.5, 0.6)
    assert e.n == {"NORMAL": 2, "PNEUMONIA": 3, "total": 5}
    d = e.to_dict()
    assert set(d) == KEYS and d["model"] is None and d["data"] is None
    json.dumps(d, allow_nan=False)


def test_it_writes_null_for_figures_one_class_cannot_give():
    d = evaluate_scores([1, 1, 1], [0.2, 0.7, 0.9], 0.5).to_dict()
    assert d["auc"] is None and d["auc_ci"] == [None, None] and d["specificity"] is None
    assert d["sensitivity"] == pytest.approx(2 / 3)
    assert not math.isnan(d["brier"])
    json.dumps(d, allow_nan=False)


def test_it_refuses_labels_the_model_does_not_know(checkpoint_path: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="COVID"):
        evaluate_checkpoint(checkpoint_path, [(tmp_path / "x.jpeg", "COVID")])


def test_it_documents_every_flag():
    assert [a.dest for a in get_args_parser()._actions if not a.help] == []


def test_it_reports_the_subtype_read_from_file_names_as_training_does(
    kaggle_root: Path, tmp_path: Path, capsys
):
    checkpoint = make_checkpoint(
        tmp_path / "two.pt", input_size=64, subtype={"head": "two_heads", "threshold": 0.5}
    )
    out = tmp_path / "metrics.json"
    _run(
        "--checkpoint", str(checkpoint), "--data", str(kaggle_root), "--json", str(out),
        "--plots", str(tmp_path / "plots"),
    )  # fmt: skip
    subtype = json.loads(out.read_text())["subtype"]
    items = scan_folder(kaggle_root / "test")
    named = [subtype_of(item) for item in items if item.label == "PNEUMONIA"]
    assert subtype["n"] == {
        "bacterial": named.count("bacterial"),
        "viral": named.count("viral"),
        "unknown": 0,
    }
    assert subtype["n"]["bacterial"] > 0 and subtype["n"]["viral"] > 0
    assert set(subtype) == {
        "auc", "auc_ci", "sensitivity", "specificity", "accuracy", "threshold", "n", "confusion",
    }  # fmt: skip
    assert subtype["threshold"] == 0.5
    rows = subtype["confusion"]
    assert sum(rows["normal"].values()) == 6
    assert sum(rows["bacterial"].values()) + sum(rows["viral"].values()) == 6
    assert (tmp_path / "plots" / "subtype_roc.png").is_file()
    assert (tmp_path / "plots" / "subtype_confusion.png").is_file()
    assert "subtype ROC AUC" in capsys.readouterr().out
