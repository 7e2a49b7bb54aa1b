"""Inference runtimes beyond PyTorch eager fp32, each built from a checkpoint.

    torch        PyTorch eager fp32 (the reference; ml.inference.Predictor)
    torch-bf16   the same model under CPU bfloat16 autocast (no artifact; needs torch)
    onnx-fp32    the model exported to ONNX, run by ONNX Runtime (no torch at run time)
    onnx-int8    that export statically quantized to int8 (QDQ, per-channel weights,
                 activation ranges by entropy calibration on training images), run by
                 ONNX Runtime

    from ml.runtimes import build_artifact, OnnxPredictor
    build_artifact("var/models/m.pt", "onnx-int8", "m.int8.onnx", calibration=[paths...])
    OnnxPredictor("m.int8.onnx", preprocessing, threshold, class_names, positive_class,
                  subtype=meta.subtype)  # a model with a subtype head: P(bacterial) too

The artifact's one output is the network's raw logits, (B, C); OnnxPredictor reads both
answers out of them as ml.heads does in torch (ml.core.answer_probabilities).

An OnnxPredictor imports only ml.core, numpy, Pillow and onnxruntime: a worker using it never
imports torch. It gives probabilities, not Grad-CAM heatmaps (those need gradients).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.core import (
    ImageSource,
    Prediction,
    Preprocessing,
    SubtypeQuestion,
    answer_probabilities,
    image_to_array,
    load_each,
    make_predictions,
    open_image,
)

RUNTIMES = ("torch", "torch-bf16", "onnx-fp32", "onnx-int8")
ONNX_RUNTIMES = ("onnx-fp32", "onnx-int8")


class OnnxPredictor:
    """An ONNX model plus what it needs to turn images into labels; predict / predict_batch
    answer like ml.inference.Predictor's."""

    def __init__(
        self,
        path: str | os.PathLike,
        preprocessing: Preprocessing,
        threshold: float,
        class_names: Sequence[str],
        positive_class: str,
        *,
        subtype: SubtypeQuestion | None = None,
        threads: int = 0,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.preprocessing, self.threshold = preprocessing, float(threshold)
        self.class_names = list(class_names)
        self.positive_class = positive_class
        self._positive = self.class_names.index(positive_class)
        self._labels = (self.class_names[1 - self._positive], positive_class)
        self.subtype = subtype
        self._input = self.session.get_inputs()[0].name

    def inputs(self, sources: Sequence[ImageSource]) -> np.ndarray:
        """Decoded and preprocessed images, (B, 3, S, S) float32 (ml.core.load_each)."""
        size, pre = self.preprocessing.input_size, self.preprocessing
        return np.stack(load_each(sources, lambda s: image_to_array(open_image(s, size=size), pre)))

    def answers(self, x: np.ndarray) -> tuple[list[float], list[float] | None]:
        """(B, 3, S, S) float32 inputs -> (P(positive) per image, P(bacterial | pneumonia) per
        image or None for a binary model)."""
        (logits,) = self.session.run(None, {self._input: np.ascontiguousarray(x, np.float32)})
        p, p_bacterial = answer_probabilities(logits, self._positive, self.subtype)
        return p.tolist(), None if p_bacterial is None else p_bacterial.tolist()

    def positive_probabilities(self, x: np.ndarray) -> list[float]:
        return self.answers(x)[0]

    def predict_batch(
        self,
        sources: Sequence[ImageSource],
        *,
        threshold: float | None = None,
        subtype_threshold: float | None = None,
    ) -> list[Prediction]:
        t = self.threshold if threshold is None else float(threshold)
        if not sources:
            return []
        start = time.perf_counter()
        probabilities, bacterial = self.answers(self.inputs(sources))
        return make_predictions(
            probabilities, bacterial, threshold=t, labels=self._labels,
            elapsed_ms=(time.perf_counter() - start) * 1000.0 / len(sources),
            subtype=self.subtype and self.subtype.at(subtype_threshold),
        )  # fmt: skip

    def predict(self, source: ImageSource, *, threshold: float | None = None) -> Prediction:
        return self.predict_batch([source], threshold=threshold)[0]


# ---------------------------------------------------------------------------------------------
# Building artifacts (these need torch)


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """The checkpoint's network as ONNX (opset 17, dynamic batch), input (B, 3, S, S)."""
    import warnings

    import torch

    from ml.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    size = meta.preprocessing.input_size
    x = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated, still sound
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(out), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17, dynamo=False,
        )  # fmt: skip
    return Path(out)


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over preprocessed images, one at a time
    (entropy calibration collects histograms that need one batch shape throughout)."""

    def __init__(self, sources: Sequence[ImageSource], pre: Preprocessing, name: str) -> None:
        self._sources, self._pre, self._name = iter(sources), pre, name

    def get_next(self):
        source = next(self._sources, None)
        if source is None:
            return None
        image = open_image(source, size=self._pre.input_size)
        return {self._name: image_to_array(image, self._pre)[None]}  # (1, 3, S, S)


def quantize_int8(
    fp32_onnx: str | os.PathLike,
    out: str | os.PathLike,
    *,
    calibration: Sequence[ImageSource],
    preprocessing: Preprocessing,
) -> Path:
    """Static int8 quantization (QDQ, per-channel weights, activation ranges by entropy
    calibration) calibrated on `calibration` images: take them at random across classes (the
    first images of a sorted folder are all of one class, and skew the ranges)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = Path(out).with_suffix(".prep.onnx")
    quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
    try:
        quantize_static(
            str(prepared), str(out), _Calibration(calibration, preprocessing, "input"),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Entropy,
        )  # fmt: skip
    finally:
        prepared.unlink(missing_ok=True)
    return Path(out)


def build_artifact(
    checkpoint: str | os.PathLike,
    runtime: str,
    out: str | os.PathLike,
    *,
    calibration: Sequence[ImageSource] = (),
) -> Path | None:
    """Write the artifact `runtime` runs (None for torch-bf16, which needs none)."""
    if runtime not in RUNTIMES or runtime == "torch":
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES[1:])}, got {runtime!r}")
    if runtime == "torch-bf16":
        return None
    if runtime == "onnx-fp32":
        return export_onnx(checkpoint, out)
    from ml.checkpoint import read_meta

    if not calibration:
        raise ValueError("onnx-int8 needs calibration images")
    fp32 = export_onnx(checkpoint, Path(out).with_suffix(".fp32.onnx"))
    try:
        return quantize_int8(
            fp32, out, calibration=calibration, preprocessing=read_meta(checkpoint).preprocessing
        )
    finally:
        fp32.unlink(missing_ok=True)


def accuracy_gate(
    y_true: Sequence[int],
    reference: Sequence[float],
    candidate: Sequence[float],
    threshold: float,
    *,
    max_auc_drop: float = 0.005,
    max_sensitivity_drop: float = 0.005,
    subtype: SubtypeScores | None = None,
) -> dict:
    """Compare a runtime's scores with the fp32 reference's on the same labeled images:
    AUC, and sensitivity / specificity at the stored threshold. `accepted` is False when the
    AUC drops by more than max_auc_drop or the sensitivity by more than max_sensitivity_drop
    (0.005 = 0.5 points). For a model with a subtype head, `subtype` holds both runtimes'
    P(bacterial | pneumonia) on the pneumonia images of known subtype, and the subtype AUC
    may drop by no more than max_auc_drop either."""
    from ml.metrics import roc_auc, sensitivity_specificity

    ref_auc, cand_auc = roc_auc(y_true, reference), roc_auc(y_true, candidate)
    ref_sens, ref_spec = sensitivity_specificity(y_true, reference, threshold)
    cand_sens, cand_spec = sensitivity_specificity(y_true, candidate, threshold)
    auc_drop, sens_drop = ref_auc - cand_auc, ref_sens - cand_sens
    reasons = []
    if not auc_drop <= max_auc_drop:
        reasons.append(f"AUC drops by {auc_drop:.4f} (> {max_auc_drop})")
    if not sens_drop <= max_sensitivity_drop:
        reasons.append(
            f"sensitivity drops by {100 * sens_drop:.2f} points "
            f"(> {100 * max_sensitivity_drop:.1f})"
        )
    result = {
        "n": len(y_true),
        "threshold": threshold,
        "reference": {"auc": ref_auc, "sensitivity": ref_sens, "specificity": ref_spec},
        "candidate": {"auc": cand_auc, "sensitivity": cand_sens, "specificity": cand_spec},
        "auc_drop": auc_drop,
        "sensitivity_drop": sens_drop,
        "max_abs_difference": float(np.max(np.abs(np.subtract(reference, candidate)))),
    }
    if subtype is not None:
        result["subtype"] = subtype.compare()
        drop = result["subtype"]["auc_drop"]
        if not drop <= max_auc_drop:
            reasons.append(f"subtype AUC drops by {drop:.4f} (> {max_auc_drop})")
    return result | {"accepted": not reasons, "reason": "; ".join(reasons) or "within the gate"}


@dataclass(frozen=True)
class SubtypeScores:
    """Both runtimes' P(bacterial | pneumonia) on the pneumonia images of known subtype."""

    y_true: Sequence[int]  # 1 bacterial, 0 viral
    reference: Sequence[float]
    candidate: Sequence[float]
    threshold: float  # the model's subtype threshold

    def compare(self) -> dict:
        from ml.metrics import roc_auc, sensitivity_specificity

        ref_auc, cand_auc = (
            roc_auc(self.y_true, self.reference),
            roc_auc(self.y_true, self.candidate),
        )
        ref = sensitivity_specificity(self.y_true, self.reference, self.threshold)
        cand = sensitivity_specificity(self.y_true, self.candidate, self.threshold)
        return {
            "n": len(self.y_true),
            "threshold": self.threshold,
            "reference": {"auc": ref_auc, "sensitivity": ref[0], "specificity": ref[1]},
            "candidate": {"auc": cand_auc, "sensitivity": cand[0], "specificity": cand[1]},
            "auc_drop": ref_auc - cand_auc,
            "max_abs_difference": float(
                np.max(np.abs(np.subtract(self.reference, self.candidate)), initial=0.0)
            ),
        }
