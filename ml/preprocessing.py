"""Decoding and preprocessing of chest X-ray images, shared by training and inference.

Training and inference must see identical pixels, so both go through `open_image` (decode to
8-bit grayscale) and then `eval_transform` / `ml.augment.train_transform` built from one
`Preprocessing` that is stored inside every checkpoint.

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
    open_image,
    to_grayscale,
)

# ---------------------------------------------------------------------------------------------
# Tensors


def _gray_to_rgb(x: torch.Tensor) -> torch.Tensor:
    # (1, S, S) -> (3, S, S) as a view: the network keeps its ImageNet-shaped first layer.
    return x.expand(3, -1, -1)


def tensor_head() -> list[v2.Transform]:
    """'L' image -> (1, H, W) uint8 tensor: what every pipeline starts with."""
    return [v2.ToImage()]


def tensor_tail(pre: Preprocessing, before: list[v2.Transform] = ()) -> list[v2.Transform]:
    """(1, S, S) uint8 -> (3, S, S) float32 normalised; `before` runs on the float image in
    [0, 1] (training noise, erasing), ahead of the channel copy and the normalisation."""
    return [
        v2.ToDtype(torch.float32, scale=True),  # (1, S, S) float32 in [0, 1]
        *before,
        v2.Lambda(_gray_to_rgb),  # (3, S, S)
        v2.Normalize(mean=list(pre.mean), std=list(pre.std)),
        v2.ToPureTensor(),
    ]


def eval_transform(pre: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic 'L' image -> (3, S, S) float32 normalised tensor.

    The training images were squashed to a square (aspect ratio not kept), so uploads are
    squashed the same way instead of being cropped or padded."""
    resize = v2.Resize((pre.input_size, pre.input_size), antialias=True)  # (1, S, S) uint8
    return v2.Compose([*tensor_head(), resize, *tensor_tail(pre)])


def image_to_tensor(image: Image.Image, pre: Preprocessing) -> torch.Tensor:
    """One decoded image -> (3, S, S) float32 model input, exactly as in validation."""
    if image.mode != "L":
        image = to_grayscale(image)
    return eval_transform(pre)(image)
