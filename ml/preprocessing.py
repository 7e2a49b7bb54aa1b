"""Decoding and preprocessing of chest X-ray images, shared by training and inference.

Training and inference must see identical pixels, so both go through `open_image` (decode to
8-bit grayscale) and then `eval_transform` / `train_transform` built from one `Preprocessing`
that is stored inside every checkpoint.

    from ml.preprocessing import Preprocessing, image_to_tensor, open_image
    x = image_to_tensor(open_image("upload.jpeg", size=224), Preprocessing())  # (3, 224, 224)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import v2

from ml.core import (  # noqa: F401 - re-exported: the torch-free half of preprocessing
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDecodeError,
    ImageSource,
    Preprocessing,
    _to_grayscale,
    open_image,
)

# ---------------------------------------------------------------------------------------------
# Tensors


def _gray_to_rgb(x: torch.Tensor) -> torch.Tensor:
    # (1, S, S) -> (3, S, S) as a view: the network keeps its ImageNet-shaped first layer.
    return x.expand(3, -1, -1)


def _head(pre: Preprocessing) -> list[v2.Transform]:
    # The training images were squashed to a square (aspect ratio not kept), so uploads are
    # squashed the same way instead of being cropped or padded.
    return [
        v2.ToImage(),  # (1, H, W) uint8
        v2.Resize((pre.input_size, pre.input_size), antialias=True),  # (1, S, S) uint8
    ]


def _tail(pre: Preprocessing) -> list[v2.Transform]:
    return [
        v2.ToDtype(torch.float32, scale=True),  # (1, S, S) float32 in [0, 1]
        v2.Lambda(_gray_to_rgb),  # (3, S, S)
        v2.Normalize(mean=list(pre.mean), std=list(pre.std)),
        v2.ToPureTensor(),
    ]


def eval_transform(pre: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic 'L' image -> (3, S, S) float32 normalised tensor."""
    return v2.Compose([*_head(pre), *_tail(pre)])


def train_transform(pre: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """The eval transform plus the augmentations of fastai's `aug_transforms()` defaults.

    fastai: flip p=0.5; with p=0.75 rotate <= 10 deg, zoom 1.0-1.1 and perspective warp 0.2
    using reflection padding; with p=0.75 brightness and contrast 0.2. torchvision v2's affine
    and perspective transforms only fill with a constant, so reflection padding is emulated:
    reflect-pad by S/8, warp, then centre-crop back to S. The pad covers the corners a 0.2
    perspective warp can expose (at most 0.1 of the padded width on each side).
    """
    s = pre.input_size
    pad = max(1, s // 8)
    warp = [
        v2.Pad(pad, padding_mode="reflect"),  # (1, S + 2p, S + 2p)
        v2.RandomAffine(degrees=10, scale=(1.0, 1.1), interpolation=v2.InterpolationMode.BILINEAR),
        v2.RandomPerspective(distortion_scale=0.2, p=1.0),
        v2.CenterCrop(s),  # (1, S, S)
    ]
    lighting = [v2.ColorJitter(brightness=0.2, contrast=0.2)]
    return v2.Compose(
        [
            *_head(pre),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply(warp, p=0.75),
            v2.RandomApply(lighting, p=0.75),
            *_tail(pre),
        ]
    )


def image_to_tensor(image: Image.Image, pre: Preprocessing) -> torch.Tensor:
    """One decoded image -> (3, S, S) float32 model input, exactly as in validation."""
    if image.mode != "L":
        image = _to_grayscale(image)
    return eval_transform(pre)(image)
