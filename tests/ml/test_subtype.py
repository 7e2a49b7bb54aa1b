"""The second question, bacterial or viral: where the subtype comes from, how one network
answers both questions (ml.heads, and its numpy twin in ml.core), what checkpoints, the
Predictor, Grad-CAM, ml.evaluate and the ONNX runtime make of it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.checkpoint import CheckpointMeta, load_checkpoint, read_meta
from ml.core import SubtypeQuestion, answer_probabilities
from ml.data import Item, kermany_subtype, manifest_hash, read_manifest, subtype_of, write_manifest
from ml.gradcam import grad_cams_many
from ml.heads import NO_SUBTYPE, QuestionsLoss, answers, cam_score, n_outputs
from ml.inference import Predictor
from ml.models import target_layer
from ml.runtimes import SubtypeScores, accuracy_gate
from ml.scores import evaluate_subtype, format_table
from tests.conftest import assert_outputs_vary, make_checkpoint
from tests.synthetic import make_xray


def _png(label: str, *, seed: int, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    make_xray(label, seed=seed, size=64, subtype=subtype).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Where the subtype comes from


@pytest.mark.parametrize(
    ("name", "subtype"),
    [
        ("person1_bacteria_1.jpeg", "bacterial"),
        ("PERSON12_VIRUS_33.JPEG", "viral"),
        ("IM-0115-0001.jpeg", ""),
        ("upload-3.png", ""),
        ("person1_bacteria.jpeg", ""),  # not the data set's pattern
    ],
)
def test_it_reads_the_subtype_from_kermany_file_names(name, subtype):
    assert kermany_subtype(name) == subtype


def test_an_items_own_subtype_wins_and_normal_images_have_none():
    named = Path("PNEUMONIA/person1_bacteria_1.jpeg")
    assert subtype_of(Item(named, "PNEUMONIA")) == "bacterial"
    assert subtype_of(Item(named, "PNEUMONIA", subtype="viral")) == "viral"  # a review says so
    assert subtype_of(Item(Path("x/person2_virus_2.jpeg"), "NORMAL")) == ""  # relabelled normal
    assert subtype_of((named, "PNEUMONIA")) == "bacterial"  # a plain pair


def test_manifests_carry_the_subtype_both_ways(tmp_path: Path):
    for name in ("a.png", "b.png", "c.png", "d.png", "e.png"):
        (tmp_path / name).write_bytes(_png("PNEUMONIA", seed=1))
    (tmp_path / "m.csv").write_text(
        "path,label,subtype\na.png,PNEUMONIA,bacteria\nb.png,PNEUMONIA,Viral\n"
        "c.png,PNEUMONIA,undetermined\nd.png,NORMAL,normal\ne.png,PNEUMONIA,\n"
    )
    items = read_manifest(tmp_path / "m.csv")
    assert [item.subtype for item in items] == ["bacterial", "viral", "", "", ""]
    again = read_manifest(write_manifest(tmp_path / "again.csv", items))
    assert [item.subtype for item in again] == [item.subtype for item in items]
    # A reviewed subtype is part of what was trained on: it changes the manifest's hash.
    changed = [items[0].__class__(items[0].path, items[0].label, subtype="viral"), *items[1:]]
    assert manifest_hash(changed) != manifest_hash(items)


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ("a.png,PNEUMONIA,fungal", "subtype must be bacterial, viral, undetermined or empty"),
        ("a.png,NORMAL,bacterial", "a NORMAL image cannot have subtype 'bacterial'"),
    ],
)
def test_a_bad_subtype_in_a_manifest_names_the_line(tmp_path: Path, row, error):
    (tmp_path / "a.png").write_bytes(_png("NORMAL", seed=1))
    (tmp_path / "m.csv").write_text(f"path,label,subtype\n{row}\n")
    with pytest.raises(ValueError, match=rf"m.csv:2: {error}"):
        read_manifest(tmp_path / "m.csv")


# ---------------------------------------------------------------------------------------------
# The heads


@pytest.mark.parametrize("head", [None, "two_heads", "three_class"])
def test_numpy_and_torch_read_the_same_answers_out_of_the_outputs(head):
    logits = torch.randn(64, n_outputs(head), generator=torch.Generator().manual_seed(1)) * 3
    subtype = None if head is None else SubtypeQuestion(head, 0.5)
    p, b = answers(logits, subtype=subtype)
    p_np, b_np = answer_probabilities(logits.numpy(), 1, subtype)
    assert_outputs_vary(p.tolist(), min_spread=0.5)
    np.testing.assert_allclose(p.numpy(), p_np, atol=1e-6)
    if head is None:
        assert b is None and b_np is None
        return
    assert_outputs_vary(b.tolist(), min_spread=0.5)
    np.testing.assert_allclose(b.numpy(), b_np, atol=1e-6)
    if head == "three_class":  # P(pneumonia) = p_bacterial + p_viral; P(b | pneumonia)
        soft = logits.softmax(dim=1)
        torch.testing.assert_close(p, soft[:, 1] + soft[:, 2])
        torch.testing.assert_close(b, soft[:, 1] / (soft[:, 1] + soft[:, 2]))
    else:  # the pneumonia answer is a binary model's, whatever the third output says
        torch.testing.assert_close(p, logits[:, :2].softmax(dim=1)[:, 1])


def test_the_three_class_loss_is_the_softmax_cross_entropy_and_unknowns_teach_pneumonia_only():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 3, generator=g)
    targets = torch.tensor([0, 1, 1, 1, 0, 1])  # normal / pneumonia
    subtypes = torch.tensor([NO_SUBTYPE, 1, 0, 1, NO_SUBTYPE, 0])  # bacterial 1, viral 0
    loss = QuestionsLoss(torch.ones(2), head="three_class", subtype_weights=torch.ones(2))
    three = torch.tensor([0, 1, 2, 1, 0, 2])  # normal, bacterial, viral
    expected = torch.nn.functional.cross_entropy(logits, three)
    torch.testing.assert_close(loss(logits, targets, None, subtypes), expected)

    # A pneumonia of unknown subtype adds only -log P(pneumonia).
    unknown = torch.tensor([NO_SUBTYPE, NO_SUBTYPE, 0, 1, NO_SUBTYPE, 0])
    p_pneumonia = logits.softmax(dim=1)[1, 1:].sum()
    p_bacterial = logits.softmax(dim=1)[1, 1]
    gap = loss(logits, targets, None, subtypes) - loss(logits, targets, None, unknown)
    torch.testing.assert_close(gap, -torch.log(p_bacterial / p_pneumonia) / 6)


def test_the_subtype_loss_weight_scales_the_subtype_term_only():
    from ml.config import TrainConfig, get_args_parser
    from ml.train import subtype_loss_weights

    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 3, generator=g)
    targets = torch.tensor([0, 1, 1, 1, 0, 1])
    subtypes = torch.tensor([NO_SUBTYPE, 1, 0, 1, NO_SUBTYPE, 0])
    unknown = torch.full_like(subtypes, NO_SUBTYPE)  # the pneumonia question alone
    known = [1, 0, 1, 0, 1, 1, 1]  # 5 bacterial, 2 viral: the rarer subtype weighs more
    one, three = subtype_loss_weights(known, 1.0), subtype_loss_weights(known, 3.0)
    assert one[0] > one[1]
    torch.testing.assert_close(three, 3 * one)

    def loss(weights, s):
        return QuestionsLoss(torch.ones(2), head="two_heads", subtype_weights=weights)(
            logits, targets, None, s
        )

    pneumonia = loss(one, unknown)
    torch.testing.assert_close(loss(three, unknown), pneumonia)
    torch.testing.assert_close(
        loss(three, subtypes) - pneumonia, 3 * (loss(one, subtypes) - pneumonia)
    )

    args = get_args_parser().parse_args(["--data", "d", "--subtype-loss-weight", "3"])
    assert TrainConfig.from_args(args).subtype_loss_weight == 3.0
    assert TrainConfig(data="d").subtype_loss_weight == 1.0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="subtype_loss_weight must be positive"):
            TrainConfig(data="d", subtype_loss_weight=bad)


def test_a_binary_head_ignores_subtype_targets():
    logits = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([0, 1, 1, 0])
    loss = QuestionsLoss(torch.tensor([1.0, 2.0]))
    with_subtypes = loss(logits, targets, None, torch.tensor([NO_SUBTYPE, 1, 0, NO_SUBTYPE]))
    torch.testing.assert_close(with_subtypes, loss(logits, targets))
    weighted = torch.nn.functional.cross_entropy(logits, targets, weight=torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(loss(logits, targets), weighted)


# ---------------------------------------------------------------------------------------------
# Checkpoints and predictions


@pytest.fixture(scope="module")
def subtype_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("subtype") / "two.pt"
    return make_checkpoint(path, input_size=64, subtype={"head": "two_heads", "threshold": 0.5})


def test_a_binary_checkpoint_and_one_written_before_subtypes_predict_without_one(
    checkpoint_path: Path, meta: CheckpointMeta
):
    assert read_meta(checkpoint_path).questions == ("pneumonia",)
    prediction = Predictor.from_checkpoint(checkpoint_path).predict(_png("PNEUMONIA", seed=4))
    assert (prediction.p_bacterial, prediction.subtype, prediction.subtype_threshold) == (
        None,
        None,
        None,
    )
    older = meta.to_dict()
    del older["subtype"]  # what checkpoints of earlier releases hold
    assert CheckpointMeta.from_dict(older) == meta


def test_a_subtype_checkpoint_answers_both_questions(subtype_checkpoint: Path):
    model, meta = load_checkpoint(subtype_checkpoint)
    assert meta.questions == ("pneumonia", "subtype") and meta.subtype.head == "two_heads"
    assert model.fc.out_features == 3
    predictor = Predictor.from_checkpoint(subtype_checkpoint)
    images = [_png(label, seed=s) for label in ("NORMAL", "PNEUMONIA") for s in range(6)]
    predictions = predictor.predict_batch(images, threshold=0.5)
    bacterial = [p.p_bacterial for p in predictions]
    assert_outputs_vary(bacterial)
    # The threshold decides the call: lower it under every score and all are "bacterial".
    assert all(p.subtype == ("bacterial" if p.p_bacterial >= 0.5 else "viral") for p in predictions)
    assert {p.subtype_threshold for p in predictions} == {0.5}
    low = min(bacterial) - 1e-9
    lowered = SubtypeQuestion("two_heads", low)
    assert {lowered.label(b) for b in bacterial} == {"bacterial"}
    # A site's own subtype threshold decides instead of the checkpoint's, on request only.
    at_site = predictor.predict_batch(images, threshold=0.5, subtype_threshold=low)
    assert {(p.subtype, p.subtype_threshold) for p in at_site} == {("bacterial", low)}
    assert [p.p_bacterial for p in at_site] == pytest.approx(bacterial)
    assert meta.subtype.at(None) is meta.subtype and meta.subtype.at(low) == lowered
    # One image alone gets the probabilities it gets in a batch.
    alone = predictor.predict(images[3])
    assert alone.p_bacterial == pytest.approx(predictions[3].p_bacterial, abs=1e-5)


def test_grad_cam_explains_either_question(subtype_checkpoint: Path, checkpoint_path: Path):
    predictor = Predictor.from_checkpoint(subtype_checkpoint)
    x = predictor.inputs([_png("PNEUMONIA", seed=5), _png("PNEUMONIA", seed=6)])
    pneumonia, subtype = predictor.cams(x, "pneumonia"), predictor.cams(x, "subtype")
    assert pneumonia.shape == subtype.shape == (2, 64, 64)
    assert pneumonia.max() == pytest.approx(1.0) and subtype.max() == pytest.approx(1.0)
    assert np.abs(pneumonia - subtype).mean() > 0.01  # two questions, two maps
    overlays = predictor.heatmaps([_png("PNEUMONIA", seed=5)], question="subtype")
    assert overlays[0].mode == "RGB"
    with pytest.raises(ValueError, match="does not answer the subtype question"):
        Predictor.from_checkpoint(checkpoint_path).cams(x, "subtype")


def test_one_pass_explains_both_questions_as_two_separate_passes_do(subtype_checkpoint: Path):
    predictor = Predictor.from_checkpoint(subtype_checkpoint)
    images = [_png("PNEUMONIA", seed=s) for s in (5, 6, 7)]
    x = predictor.inputs(images)
    together = grad_cams_many(
        predictor.model, x, target_layer=target_layer(predictor.model, predictor.meta.arch),
        scores=[cam_score(q, subtype=predictor.meta.subtype, positive=1)
                for q in ("pneumonia", "subtype")],
    )  # fmt: skip
    for question, maps in zip(("pneumonia", "subtype"), together, strict=True):
        alone = predictor.cams(x, question)
        assert alone.std() > 0.01  # maps that vary
        np.testing.assert_allclose(maps, alone, atol=1e-5)
    overlays = predictor.heatmaps_for(images, ("pneumonia", "subtype"))
    for question in ("pneumonia", "subtype"):
        separate = predictor.heatmaps(images, question=question)
        for shared, alone in zip(overlays[question], separate, strict=True):
            difference = np.abs(np.asarray(shared, float) - np.asarray(alone, float))
            assert difference.max() <= 1  # the same overlay (at most rounding apart)


# ---------------------------------------------------------------------------------------------
# Figures


def test_the_subtype_report_matches_a_hand_count():
    # Truth:        normal x2,   bacterial x3,        viral x2,     pneumonia of unknown subtype
    y_true = [0, 0, 1, 1, 1, 1, 1, 1]
    subtypes = ["", "", "bacterial", "bacterial", "bacterial", "viral", "viral", ""]
    p = [0.1, 0.9, 0.8, 0.7, 0.2, 0.9, 0.6, 0.9]  # pneumonia threshold 0.5
    b = [0.9, 0.8, 0.9, 0.3, 0.7, 0.2, 0.6, 0.5]  # subtype threshold 0.5
    t = evaluate_subtype(y_true, subtypes, p, b, threshold=0.5, subtype_threshold=0.5)
    assert t.n == {"bacterial": 3, "viral": 2, "unknown": 1}
    # Bacterial 0.9, 0.3, 0.7: two called bacterial; viral 0.2, 0.6: one called viral.
    assert (t.sensitivity, t.specificity, t.accuracy) == pytest.approx((2 / 3, 1 / 2, 3 / 5))
    assert t.auc == pytest.approx(5 / 6)  # of the 6 (bacterial, viral) pairs only 0.3 < 0.6
    assert t.confusion == {
        "normal": {"normal": 1, "bacterial": 1, "viral": 0},
        "bacterial": {"normal": 1, "bacterial": 1, "viral": 1},
        "viral": {"normal": 0, "bacterial": 1, "viral": 1},
    }
    d = t.to_dict()
    assert d["confusion"]["bacterial"]["viral"] == 1 and d["n"]["unknown"] == 1


def test_the_onnx_gate_checks_the_subtype_too():
    rng = np.random.default_rng(0)
    y = [1, 0] * 20
    reference = [0.5 + 0.4 * (v - 0.5) + rng.uniform(-0.05, 0.05) for v in y]
    same = SubtypeScores(y, reference, reference, 0.5)
    swapped = SubtypeScores(y, reference, [1 - r for r in reference], 0.5)
    scores = [0.2, 0.8] * 20
    kept = accuracy_gate([0, 1] * 20, scores, scores, 0.5, subtype=same)
    assert kept["accepted"] and kept["subtype"]["auc_drop"] == 0.0
    refused = accuracy_gate([0, 1] * 20, scores, scores, 0.5, subtype=swapped)
    assert not refused["accepted"] and "subtype AUC drops by 1.0000" in refused["reason"]


def test_the_evaluation_table_prints_the_subtype_block():
    from ml.scores import evaluate_scores

    y_true, subtypes = [0, 1, 1, 1], ["", "bacterial", "viral", "bacterial"]
    p, b = [0.2, 0.8, 0.7, 0.9], [0.5, 0.9, 0.1, 0.4]
    t = evaluate_subtype(y_true, subtypes, p, b, threshold=0.5, subtype_threshold=0.45)
    text = format_table(evaluate_scores(y_true, p, 0.5, subtype=t))
    assert "subtype ROC AUC" in text and "0.4500 on P(bacterial | pneumonia)" in text
    assert "pneumonia of unknown subtype, not scored: 0" in text


# ---------------------------------------------------------------------------------------------
# Training (slow)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """ml.train's default on synthetic X-rays whose subtypes look different (lobar bacterial,
    diffuse viral pneumonia), from scratch: the schedule tests/ml/test_train.py uses."""
    from ml.train import main, parse_config
    from tests.synthetic import write_dataset

    root = tmp_path_factory.mktemp("subtypes")
    write_dataset(root / "data", 48, size=64, seed=5, subtypes=True)
    config = parse_config(
        ["--data", str(root / "data"), "--out", str(root / "m.pt"), "--print-freq", "0",
         "--img-size", "64", "--epochs", "10", "--lr", "1e-3", "--recipe", "fastai",
         "--subtype-head", "auto"]
    )  # fmt: skip
    return main(config)


@pytest.mark.slow
def test_training_learns_the_subtype_and_chooses_its_threshold_on_validation_only(trained):
    from ml.config import DEFAULT_SUBTYPE_HEAD
    from ml.metrics import roc_auc, youden_threshold

    meta = read_meta(trained)
    assert meta.subtype is not None and meta.subtype.head == DEFAULT_SUBTYPE_HEAD
    figures = meta.metrics["subtype"]
    rule = figures["threshold_rule"]
    assert rule["rule"] == "youden" and rule["images"] == meta.train_args["val_manifest"]
    assert all(h["val_subtype_auc"] is not None for h in meta.metrics["history"])

    # Rerun the rule on the validation images it names: it gives back the stored threshold.
    val = [item for item in read_manifest(rule["images"]) if subtype_of(item)]
    assert {subtype_of(item) for item in val} == {"bacterial", "viral"}
    assert rule["n"] == len(val)
    predictions = Predictor.from_checkpoint(trained).predict_batch([item.path for item in val])
    y = [int(subtype_of(item) == "bacterial") for item in val]
    q = [p.p_bacterial for p in predictions]
    assert youden_threshold(y, q) == pytest.approx(meta.subtype.threshold, abs=1e-5)
    assert roc_auc(y, q) == pytest.approx(figures["val_auc"], abs=1e-4)

    # Held-out images (seeds no split drew from): well above chance on both questions.
    subtypes = ["bacterial", "viral"] * 16
    held_out = [_png("PNEUMONIA", seed=2000 + i, subtype=s) for i, s in enumerate(subtypes)]
    normals = [_png("NORMAL", seed=3000 + i) for i in range(32)]
    predictions = Predictor.from_checkpoint(trained).predict_batch(held_out + normals)
    bacterial = [int(s == "bacterial") for s in subtypes]
    assert roc_auc(bacterial, [p.p_bacterial for p in predictions[:32]]) >= 0.8
    assert roc_auc([1] * 32 + [0] * 32, [p.probability for p in predictions]) >= 0.8


@pytest.mark.slow
def test_the_onnx_artifact_carries_the_subtype_answer_and_passes_the_gate(trained, tmp_path):
    from ml.runtimes import OnnxPredictor, export_onnx

    meta = read_meta(trained)
    onnx = OnnxPredictor(
        export_onnx(trained, tmp_path / "m.onnx"), meta.preprocessing, meta.threshold,
        meta.class_names, meta.positive_class, subtype=meta.subtype,
    )  # fmt: skip
    subtypes = ["bacterial", "viral"] * 6
    images = [_png("PNEUMONIA", seed=4000 + i, subtype=s) for i, s in enumerate(subtypes)]
    images += [_png("NORMAL", seed=5000 + i) for i in range(6)]
    reference = Predictor.from_checkpoint(trained).predict_batch(images)
    candidate = onnx.predict_batch(images)
    ref_b, cand_b = [p.p_bacterial for p in reference], [p.p_bacterial for p in candidate]
    assert_outputs_vary(ref_b[:12])  # the pneumonia images; normals may saturate it
    # Pillow's resize against torchvision's: close, not equal (the gate measures how close).
    np.testing.assert_allclose(cand_b, ref_b, atol=0.05)
    gate = accuracy_gate(
        [1] * 12 + [0] * 6, [p.probability for p in reference],
        [p.probability for p in candidate], meta.threshold,
        subtype=SubtypeScores(
            [int(s == "bacterial") for s in subtypes], ref_b[:12], cand_b[:12],
            meta.subtype.threshold,
        ),
    )  # fmt: skip
    assert gate["accepted"], gate["reason"]
    assert gate["subtype"]["n"] == 12 and 0 < gate["subtype"]["max_abs_difference"] < 0.05
    # A site's subtype threshold decides there as in the torch runtime.
    cut = float(np.median(cand_b[:12]))
    at_site = onnx.predict_batch(images[:12], subtype_threshold=cut)
    assert [p.subtype for p in at_site] == [
        ("bacterial" if b >= cut else "viral") for b in cand_b[:12]
    ]
    assert {p.subtype_threshold for p in at_site} == {cut} and cut != meta.subtype.threshold


def test_the_pneumonia_auc_picks_the_epoch_and_the_subtype_breaks_a_tie():
    from ml.engine import Best, Scores, better

    def scores(subtype_p: list[float]) -> Scores:
        return Scores(0.1, [1, 1, 0], [0.9, 0.8, 0.1], [1, 0, NO_SUBTYPE], [*subtype_p, 0.5])

    best = Best(3, 1.0, scores([0.4, 0.6]), {})  # subtype AUC 0: bacterial scored lower
    assert better(1.0, scores([0.6, 0.4]).subtype_auc(), best)  # a tie: subtype decides
    assert not better(0.99, 1.0, best)  # pneumonia first, however good the subtype
    assert not better(1.0, None, best)
    assert not better(float("nan"), 1.0, best)


def test_outputs_that_do_not_fit_the_head_are_refused():
    with pytest.raises(ValueError, match="gives 2 outputs per image; the three_class head has 3"):
        answer_probabilities(np.zeros((4, 2)), 1, SubtypeQuestion("three_class", 0.5))
    with pytest.raises(ValueError, match="a binary model has 2"):
        answer_probabilities(np.zeros((4, 3)), 1, None)
