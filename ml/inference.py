"""Predict pneumonia on uploaded images with a trained checkpoint.

    from ml.inference import Predictor
    predictor = Predictor.from_checkpoint("var/models/demo.pt")  # load once per process
    predictor.predict("upload.jpeg")  # Prediction(label='PNEUMONIA', probability=0.97, ...)
    prediction, heatmap = predictor.explain("upload.jpeg")  # plus a Grad-CAM overlay (RGB)
    predictor.heatmaps(["upload.jpeg"], question="subtype")  # what drove bacterial vs viral

A model with a subtype head (ml.heads) also fills Prediction.p_bacterial, .subtype and
.subtype_threshold; a binary one leaves them None.

The checkpoint carries the preprocessing and the decision threshold chosen on validation, so
callers pass only the image; `threshold=` overrides the stored one for a single call.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ml.checkpoint import CheckpointMeta, load_checkpoint
from ml.colormap import heat_layer
from ml.core import Prediction, load_each, make_predictions
from ml.gradcam import grad_cams, grad_cams_many, overlay
from ml.heads import answers, cam_score
from ml.models import target_layer
from ml.preprocessing import ImageSource, image_to_tensor, open_image

# Long side of the image explain() draws its heatmap on: enough to read on a study page,
# small enough that a PNG per prediction stays a few hundred kB.
EXPLAIN_DISPLAY_SIZE = 512


class Predictor:
    """A model in eval mode plus the metadata needed to turn images into labels."""

    def __init__(
        self,
        model: nn.Module,
        meta: CheckpointMeta,
        *,
        device: str = "cpu",
        precision: str = "fp32",
    ) -> None:
        if len(meta.class_names) != 2:
            raise ValueError(f"Predictor needs a two-class model, got {meta.class_names}")
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        self.meta = meta
        # bf16 / fp16: the forward pass under half-precision autocast (bf16 is about twice the
        # fp32 speed on CPUs with AVX-512 BF16; fp16 is for GPUs); Grad-CAM stays in fp32.
        self.precision = precision
        self.device = torch.device(device)
        # channels_last is the faster layout for convolutions on CPU (oneDNN) and GPU alike.
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self._positive = meta.positive_index
        self._negative_label = meta.class_names[1 - self._positive]
        # Grad-CAM hooks the shared model for the length of one explain(); two at once in one
        # process (a threaded server) would each catch the other's activations.
        self._explain_lock = threading.Lock()

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, *, device: str = "cpu", precision: str = "fp32"
    ) -> Predictor:
        model, meta = load_checkpoint(path, map_location="cpu")
        return cls(model, meta, device=device, precision=precision)

    def _threshold(self, threshold: float | None) -> float:
        t = self.meta.threshold if threshold is None else float(threshold)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {t}")
        return t

    def _load(self, source: ImageSource) -> torch.Tensor:
        pre = self.meta.preprocessing
        return image_to_tensor(open_image(source, size=pre.input_size), pre)  # (3, S, S)

    @torch.inference_mode()
    def answers(self, x: torch.Tensor) -> tuple[list[float], list[float] | None]:
        """(P(positive) per image, P(bacterial | pneumonia) per image or None for a binary
        model) for inputs x (B, 3, S, S)."""
        x = x.to(self.device, memory_format=torch.channels_last)  # (B, 3, S, S)
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.autocast(self.device.type, half or torch.bfloat16, enabled=half is not None):
            logits = self.model(x)  # (B, C)
        p, p_bacterial = answers(logits, subtype=self.meta.subtype, positive=self._positive)
        return p.tolist(), None if p_bacterial is None else p_bacterial.tolist()

    def positive_probabilities(self, x: torch.Tensor) -> list[float]:
        return self.answers(x)[0]

    def _predictions(
        self,
        x: torch.Tensor,
        threshold: float,
        start: float,
        subtype_threshold: float | None = None,
    ) -> list[Prediction]:
        """Predictions of inputs x; each elapsed_ms an equal share of the time since start."""
        probabilities, bacterial = self.answers(x)
        subtype = self.meta.subtype and self.meta.subtype.at(subtype_threshold)
        return make_predictions(
            probabilities, bacterial, threshold=threshold,
            labels=(self._negative_label, self.meta.positive_class),
            elapsed_ms=(time.perf_counter() - start) * 1000.0 / len(probabilities),
            subtype=subtype,
        )  # fmt: skip

    def predict(self, source: ImageSource, *, threshold: float | None = None) -> Prediction:
        """`source` is anything `open_image` takes: a path, bytes or a binary file object."""
        t = self._threshold(threshold)
        start = time.perf_counter()
        return self._predictions(self._load(source).unsqueeze(0), t, start)[0]

    def inputs(self, sources: Sequence[ImageSource]) -> torch.Tensor:
        """Decoded and preprocessed images, (B, 3, S, S) float32 (ml.core.load_each)."""
        return torch.stack(load_each(sources, self._load))

    def predict_batch(
        self,
        sources: Sequence[ImageSource],
        *,
        threshold: float | None = None,
        subtype_threshold: float | None = None,
    ) -> list[Prediction]:
        """One forward pass for all images; each elapsed_ms is an equal share of the batch's
        decoding, preprocessing and forward pass. `threshold` and `subtype_threshold` (a
        site's own) replace the checkpoint's; a binary model ignores the second."""
        t = self._threshold(threshold)
        if not sources:
            return []
        start = time.perf_counter()
        return self._predictions(self.inputs(sources), t, start, subtype_threshold)

    def explain(
        self, source: ImageSource, *, threshold: float | None = None
    ) -> tuple[Prediction, Image.Image]:
        """predict() plus a Grad-CAM overlay for the positive class, drawn on the decoded image
        scaled to at most EXPLAIN_DISPLAY_SIZE px on its long side (RGB).

        The probability comes from the same inference-mode pass predict() makes, so it is
        bit-for-bit predict()'s, and elapsed_ms times that pass as predict() does (the Grad-CAM
        pass with gradients that follows costs about two forward passes more and is not in
        it). The model is left as it was: no hooks, no .grad, still in eval().
        """
        return self.explain_batch([source], threshold=threshold)[0]

    def explain_batch(
        self, sources: Sequence[ImageSource], *, threshold: float | None = None
    ) -> list[tuple[Prediction, Image.Image]]:
        """explain() for several images: one inference pass and one Grad-CAM pass (forward and
        backward) for the whole batch. Probabilities equal predict_batch()'s."""
        t = self._threshold(threshold)
        if not sources:
            return []
        data = _bytes_or_paths(sources)
        start = time.perf_counter()
        x = self.inputs(data)  # (B, 3, S, S)
        predictions = self._predictions(x, t, start)
        return list(zip(predictions, self._overlays(data, x), strict=True))

    def heatmaps(
        self, sources: Sequence[ImageSource], *, question: str = "pneumonia", layer: bool = False
    ) -> list[Image.Image]:
        """The Grad-CAM overlays of explain_batch() without its inference pass: for a heatmap
        made after the prediction itself was recorded. question="subtype" explains bacterial
        vs viral instead (a model with a subtype head only). layer=True gives the RGBA colour
        layer alone (ml.colormap.heat_layer) at the overlay's size, for a viewer to lay over
        the image."""
        if not sources:
            return []
        data = _bytes_or_paths(sources)
        return self._overlays(data, self.inputs(data), question, layer=layer)

    def heatmaps_for(
        self, sources: Sequence[ImageSource], questions: Sequence[str], *, layer: bool = False
    ) -> dict[str, list[Image.Image]]:
        """heatmaps() of several questions of the same images (the pneumonia and the subtype
        question): each image decoded once for the model and once for display, one forward
        pass and one backward pass per question."""
        if not sources:
            return {question: [] for question in questions}
        data = _bytes_or_paths(sources)
        x = self.inputs(data)
        scores = [
            cam_score(q, subtype=self.meta.subtype, positive=self._positive) for q in questions
        ]
        with self._explain_lock:
            maps = grad_cams_many(
                self.model,
                x.to(self.device, memory_format=torch.channels_last),
                target_layer=target_layer(self.model, self.meta.arch),
                scores=scores,
            )
        shown = [self._display(source) for source in data]
        return {
            question: [_drawn(image, cam, layer) for image, cam in zip(shown, cams, strict=True)]
            for question, cams in zip(questions, maps, strict=True)
        }

    def cams(self, x: torch.Tensor, question: str = "pneumonia") -> np.ndarray:
        """The Grad-CAM maps of `question` ("pneumonia": evidence for the positive class,
        "subtype": for bacterial against viral) for model inputs x (B, 3, S, S) -> (B, S, S)
        in [0, 1], one forward and one backward pass (ml.gradcam.grad_cams)."""
        score = cam_score(question, subtype=self.meta.subtype, positive=self._positive)
        with self._explain_lock:
            return grad_cams(
                self.model,
                x.to(self.device, memory_format=torch.channels_last),
                target_layer=target_layer(self.model, self.meta.arch),
                score=score,
            )

    def _overlays(
        self, data: list, x: torch.Tensor, question: str = "pneumonia", *, layer: bool = False
    ) -> list[Image.Image]:
        cams = self.cams(x, question)  # (B, S, S) in [0, 1]
        return [
            _drawn(self._display(source), cam, layer)
            for source, cam in zip(data, cams, strict=True)
        ]

    @staticmethod
    def _display(source) -> Image.Image:
        """The image as the overlays show it (draft(): cheap for JPEGs)."""
        image = open_image(source, size=EXPLAIN_DISPLAY_SIZE)
        image.thumbnail((EXPLAIN_DISPLAY_SIZE, EXPLAIN_DISPLAY_SIZE), Image.Resampling.LANCZOS)
        return image


def _drawn(image: Image.Image, cam, layer: bool) -> Image.Image:
    """The overlay of `cam` on the displayed image, or its colour layer at that size."""
    return heat_layer(cam, image.size) if layer else overlay(image, cam)


def _bytes_or_paths(sources: Sequence[ImageSource]) -> list:
    """Each image is decoded twice (model input, display overlay): a stream can be read once."""
    data = []
    for source in sources:
        if hasattr(source, "read"):
            if hasattr(source, "seek"):
                source.seek(0)  # as open_image() does
            source = source.read()
        data.append(source)
    return data
