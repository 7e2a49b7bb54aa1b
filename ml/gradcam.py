"""Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for a class sits.

    from ml.gradcam import grad_cam, overlay
    cam = grad_cam(model, x, target_layer=target_layer(model, arch), class_index=1)  # (H, W)
    overlay(open_image("upload.jpeg"), cam).save("heatmap.png")          # RGB, image's size
    ml.colormap.heat_layer(cam, image.size).save("layer.png")     # RGBA colour layer only

Usually reached through `Predictor.explain()`. The map is coarse by design: it lives on the
target layer's grid (7 x 7 for a ResNet34 at 224 px) and is only upsampled for display.
It shows what drove this model, not where the disease is; a radiologist still reads the film.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ml.colormap import JET, levels


def grad_cam(
    model: nn.Module, x: torch.Tensor, *, target_layer: nn.Module, class_index: int
) -> np.ndarray:
    """Grad-CAM of `class_index` for one image x (1, 3, H, W) -> float32 (H, W) in [0, 1]."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"grad_cam takes one image shaped (1, C, H, W), got {tuple(x.shape)}")
    return grad_cams(model, x, target_layer=target_layer, class_index=class_index)[0]


def grad_cams(
    model: nn.Module,
    x: torch.Tensor,
    *,
    target_layer: nn.Module,
    class_index: int | None = None,
    score: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Grad-CAM of `class_index` for a batch x (B, 3, H, W) -> float32 (B, H, W) in [0, 1],
    with one forward and one backward pass for the whole batch. Instead of a class, `score`
    maps the raw outputs (B, C) to the per-image score to explain (ml.heads.cam_score: the
    pneumonia or the subtype question of a model with a subtype head).

    The class score is the logit's margin over the other classes, z_c - logsumexp(z_other),
    which for two classes is log(p / (1 - p)): the map then shows evidence for pneumonia
    against normal rather than features that raise both logits. The scores of the batch are
    summed before the backward pass; in eval() mode images do not interact, so each image's
    gradient is its own. Each map is ReLU'd and scaled by its own maximum, so 1 is the
    strongest evidence in that image (not comparable across images) and an image with no
    evidence for the class gives all zeros.

    The model's state is untouched: the hook is removed in `finally`, gradients come from
    torch.autograd.grad (nothing lands in parameters' .grad) and eval/train mode is kept.
    """
    if (class_index is None) == (score is None):
        raise ValueError("give exactly one of class_index and score")
    if score is None:

        def score(logits: torch.Tensor) -> torch.Tensor:
            others = torch.cat([logits[:, :class_index], logits[:, class_index + 1 :]], dim=1)
            return logits[:, class_index] - torch.logsumexp(others, dim=1)  # (B,)

    return grad_cams_many(model, x, target_layer=target_layer, scores=[score])[0]


def grad_cams_many(
    model: nn.Module,
    x: torch.Tensor,
    *,
    target_layer: nn.Module,
    scores: Sequence[Callable[[torch.Tensor], torch.Tensor]],
) -> list[np.ndarray]:
    """grad_cams() of several scores of the same images (the pneumonia and the subtype
    question): one forward pass for all of them and one backward pass each, the maps equal
    to those of separate grad_cams() calls."""
    if x.ndim != 4:
        raise ValueError(f"grad_cams takes images shaped (B, C, H, W), got {tuple(x.shape)}")
    captured: list[torch.Tensor] = []

    def keep_activation(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        # Only our own pass records grad; a predict() running in another thread at the same
        # time is under inference_mode (grad mode is per thread) and is ignored.
        if torch.is_grad_enabled():
            captured.append(output)

    handle = target_layer.register_forward_hook(keep_activation)
    cams = []
    try:
        # inference_mode(False): a caller's inference-mode context would make every tensor
        # unusable for autograd. The clone turns an inference tensor x into a normal one, and
        # requires_grad on the input makes the graph exist even if the weights are frozen.
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone().requires_grad_(True)
            logits = model(x).float()  # (B, C)
            if not captured:
                raise ValueError("target_layer did not run in the model's forward pass")
            activation = captured[-1]  # (B, K, h, w)
            for k, score in enumerate(scores):
                explained = score(logits)  # (B,)
                (gradient,) = torch.autograd.grad(
                    explained.sum(), activation, retain_graph=k < len(scores) - 1
                )  # (B, K, h, w)
                weights = gradient.mean(dim=(2, 3), keepdim=True)  # per-channel importance
                cams.append(F.relu((weights * activation).sum(dim=1, keepdim=True)).detach())
    finally:
        handle.remove()
    return [_normalised(cam, x.shape[-2:]) for cam in cams]


def _normalised(cam: torch.Tensor, size) -> np.ndarray:
    """(B, 1, h, w) -> (B, H, W) in [0, 1], each map scaled by its own maximum."""
    cam = F.interpolate(cam.float(), size=size, mode="bilinear", align_corners=False)
    cam = cam[:, 0].clamp_(min=0.0)  # (B, H, W); bilinear can undershoot by float noise
    peak = cam.amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    cam = torch.where(peak > 0.0, cam / peak.clamp(min=1e-12), cam)
    return cam.cpu().numpy().astype(np.float32)


# A rough thorax on a frontal chest film, as fractions of (width, height): left, top, right,
# bottom. Outside it lie the corners with side markers and text, and the abdomen.
THORAX_BOX = (0.1, 0.05, 0.9, 0.8)


def mass_outside(
    cams: np.ndarray, box: tuple[float, float, float, float] = THORAX_BOX
) -> np.ndarray:
    """Per map of cams (B, H, W), the share of its total mass outside `box` (fractions of the
    width and height): how much of what drove the call lies off the lungs. NaN for a map with
    no mass."""
    b, h, w = cams.shape
    left, top, right, bottom = box
    inside = np.zeros((h, w), dtype=bool)
    inside[round(top * h) : round(bottom * h), round(left * w) : round(right * w)] = True
    total = cams.reshape(b, -1).sum(axis=1)  # (B,)
    off = cams[:, ~inside].sum(axis=1)  # (B,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, off / total, np.nan)


def overlay(image: Image.Image, cam: np.ndarray, *, alpha: float = 0.45) -> Image.Image:
    """Blend the jet-coloured `cam` over the grayscale `image`; RGB, the image's size.

    The model saw the image squashed to a square, so the square map is stretched back over
    the whole image (not cropped): each map cell covers the pixels it was computed from.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    heat = JET[levels(cam, image.size)].astype(np.float32)  # (h, w, 3)
    gray = np.asarray(image.convert("L"), dtype=np.float32)[..., None]  # (h, w, 1)
    blended = (1.0 - alpha) * gray + alpha * heat  # (h, w, 3)
    return Image.fromarray(np.rint(blended).astype(np.uint8), mode="RGB")
