from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ml.gradcam import grad_cam, overlay
from ml.inference import EXPLAIN_DISPLAY_SIZE, Predictor
from ml.models import ARCHITECTURES, build_model, target_layer
from ml.preprocessing import image_to_tensor
from tests.synthetic import make_xray


@pytest.fixture(scope="module")
def predictor(checkpoint_path: Path) -> Predictor:
    return Predictor.from_checkpoint(checkpoint_path)


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _no_hooks(model: nn.Module) -> bool:
    hook_dicts = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_state_dict_hooks",
    )
    return all(not getattr(m, name) for m in model.modules() for name in hook_dicts)


def test_it_returns_a_map_in_0_1_the_size_of_the_input(predictor: Predictor):
    x = image_to_tensor(make_xray("PNEUMONIA", seed=2, size=64), predictor.meta.preprocessing)
    model = predictor.model
    cam = grad_cam(model, x.unsqueeze(0), target_layer=model.layer4, class_index=1)
    assert cam.shape == (64, 64)
    assert cam.dtype == np.float32
    assert cam.min() >= 0.0
    assert cam.max() == pytest.approx(1.0)  # scaled by its own peak
    assert _no_hooks(model)
    assert all(p.grad is None for p in model.parameters())


def test_it_works_inside_a_callers_inference_mode(predictor: Predictor):
    x = image_to_tensor(make_xray("NORMAL", seed=5, size=64), predictor.meta.preprocessing)
    layer = target_layer(predictor.model, "resnet34")
    expected = grad_cam(predictor.model, x[None], target_layer=layer, class_index=1)
    with torch.inference_mode():
        cam = grad_cam(predictor.model, x[None], target_layer=layer, class_index=1)
    np.testing.assert_allclose(cam, expected, atol=1e-5)


class _BrightSpotDetector(nn.Module):
    """Hand-built "pneumonia" model: evidence = pixels brighter than 0.7, on a 4x coarser grid
    (like a real backbone's last block); logits (-evidence, +evidence)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, kernel_size=4, stride=4)  # (B, 1, H/4, W/4)
        self.relu = nn.ReLU()
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 48)  # mean over 3 channels x 4 x 4 pixels
            self.conv.bias.fill_(-0.7)
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.conv(x))  # (B, 1, h, w)
        return self.head(a.mean(dim=(2, 3)))  # (B, 2)


def _chest_with_opacity(size: int = 64) -> tuple[torch.Tensor, tuple[int, int]]:
    """A left-right symmetric chest (body 0.6, lungs 0.2) plus a bright blob in the image's
    left lung; returns x (1, 3, S, S) in [0, 1] and the blob's (row, column)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.full((size, size), 0.05)
    img[((yy - 0.55) / 0.45) ** 2 + ((xx - 0.5) / 0.42) ** 2 <= 1] = 0.6
    for cx in (0.31, 0.69):
        img[((yy - 0.5) / 0.3) ** 2 + ((xx - cx) / 0.13) ** 2 <= 1] = 0.2
    cy, cx = 0.4, 0.31
    img += 0.65 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.06**2))
    x = torch.from_numpy(img).float().expand(3, -1, -1)[None]
    return x, (round(cy * size), round(cx * size))


def test_it_puts_the_map_on_the_opacity_side():
    model = _BrightSpotDetector().eval()
    x, (row, col) = _chest_with_opacity()
    size = x.shape[-1]
    for image, blob_col in ((x, col), (x.flip(-1), size - 1 - col)):  # blob left, then right
        cam = grad_cam(model, image, target_layer=model.relu, class_index=1)
        left, right = cam[:, : size // 2].sum(), cam[:, size // 2 :].sum()
        opacity_side, other_side = (left, right) if blob_col < size // 2 else (right, left)
        assert opacity_side > 3 * other_side
        peak_row, peak_col = np.unravel_index(cam.argmax(), cam.shape)
        assert abs(peak_row - row) <= 6 and abs(peak_col - blob_col) <= 6
        # Nothing in this image speaks for the other class: an empty map, not noise.
        assert grad_cam(model, image, target_layer=model.relu, class_index=0).max() == 0.0


def test_it_colours_low_evidence_blue_and_high_evidence_red():
    image = Image.new("L", (40, 20), color=100)
    cam = np.zeros((8, 8), np.float32)
    cam[:, 4:] = 1.0
    out = overlay(image, cam, alpha=0.45)
    assert (out.mode, out.size) == ("RGB", (40, 20))
    pixels = np.asarray(out).astype(int)
    # 0.55 * 100 + 0.45 * jet: jet(0) = (0, 0, 128), jet(1) = (128, 0, 0).
    assert pixels[10, 2].tolist() == [55, 55, 113]
    assert pixels[10, 37].tolist() == [113, 55, 55]
    assert overlay(image, cam, alpha=0.0).convert("L").getextrema() == (100, 100)


def test_it_explains_with_predicts_probability_and_leaves_no_trace(predictor: Predictor):
    data = _jpeg(make_xray("PNEUMONIA", seed=8, size=200).resize((600, 400)))
    before = {k: v.clone() for k, v in predictor.model.state_dict().items()}
    expected = predictor.predict(data, threshold=0.4)
    prediction, heatmap = predictor.explain(io.BytesIO(data), threshold=0.4)
    assert prediction.probability == expected.probability
    assert (prediction.label, prediction.threshold) == (expected.label, 0.4)
    assert prediction.elapsed_ms > 0
    assert (heatmap.mode, heatmap.size) == ("RGB", (EXPLAIN_DISPLAY_SIZE, 341))
    # The model is as it was: no hooks, no gradients, eval mode, same weights and BN stats.
    model = predictor.model
    assert _no_hooks(model)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert predictor.predict(data).probability == expected.probability


def test_it_keeps_small_images_at_their_own_size(predictor: Predictor):
    _, heatmap = predictor.explain(_jpeg(make_xray("NORMAL", seed=1, size=96)))
    assert heatmap.size == (96, 96)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_it_explains_every_architecture(arch: str, meta):
    torch.manual_seed(0)
    model = build_model(arch, pretrained="none").eval()
    predictor = Predictor(model, dataclasses.replace(meta, arch=arch))
    data = _jpeg(make_xray("PNEUMONIA", seed=3, size=128))
    prediction, heatmap = predictor.explain(data)
    assert prediction.probability == predictor.predict(data).probability
    assert (heatmap.mode, heatmap.size) == ("RGB", (128, 128))
    assert np.asarray(heatmap).std() > 1.0  # a coloured map, not a flat tint
    assert _no_hooks(model)
    assert all(p.grad is None for p in model.parameters())


def test_a_batch_gives_each_image_the_map_and_result_it_gets_alone(predictor: Predictor):
    images = [_jpeg(make_xray(label, seed=i, size=160)) for i, label in
              enumerate(["NORMAL", "PNEUMONIA", "PNEUMONIA"])]  # fmt: skip
    batch = predictor.explain_batch(images)
    for data, (prediction, heatmap) in zip(images, batch, strict=True):
        alone, alone_heatmap = predictor.explain(data)
        assert prediction.probability == pytest.approx(alone.probability, abs=1e-5)
        assert prediction.label == alone.label
        difference = np.abs(np.asarray(heatmap, np.int16) - np.asarray(alone_heatmap, np.int16))
        # The same map, up to float rounding in the batch (which the colour map can turn into
        # a few grey levels at a pixel); another image's map would differ everywhere.
        assert difference.max() <= 4 and difference.mean() < 0.1
    assert _no_hooks(predictor.model)


def test_it_measures_the_share_of_a_map_outside_the_thorax_box():
    from ml.gradcam import THORAX_BOX, mass_outside

    cams = np.zeros((3, 100, 100), dtype=np.float32)
    cams[0, 40:60, 40:60] = 1.0  # on the lungs
    cams[1, 0:5, 0:5] = 1.0  # a corner marker
    cams[2, 40:60, 40:60] = 1.0
    cams[2, 80:100, 40:60] = 1.0  # and the abdomen, as much again
    shares = mass_outside(cams)
    assert shares[:3].tolist() == pytest.approx([0.0, 1.0, 0.5])
    assert np.isnan(mass_outside(np.zeros((1, 10, 10), dtype=np.float32))[0])
    assert THORAX_BOX[0] < THORAX_BOX[2] and THORAX_BOX[1] < THORAX_BOX[3]
