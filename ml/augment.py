"""Training augmentations, one named recipe per preset (torchvision v2, on 8-bit grayscale).

    from ml.augment import RECIPES, train_transform
    t = train_transform(Preprocessing(input_size=160), "robust")   # 'L' image -> (3, 160, 160)

Three recipes, compared side by side in ml/README.md:

`fastai` is the prototype's `aug_transforms()`: flip; rotate <= 10 deg, zoom 1.0-1.1 and a 0.2
perspective warp (p 0.75); brightness and contrast 0.2 (p 0.75). It leaves every training
image looking like the training folder: the same framing, tone and sharpness.

`robust` is built for a population the model never trained on (another hospital, another
X-ray machine, another year of the same study). Each step, and the variation it stands for:

- RandomResizedCrop, scale 0.08-1, ratio 3/4-4/3 (framing, field of view, patient size): the
  one lever with public evidence on this data set; it took a ResNet50 from AUC 0.966 /
  specificity 0.637 to 0.992 / 0.876 on the official test split (that comparison was made on
  the test split itself, so it flatters; nothing here was tuned on it).
- Horizontal flip, p 0.5 (side markers, positioning): a burned-in "R" marker is a shortcut;
  flipping puts it on either side.
- Rotation <= 10 deg, p 0.5 (positioning): children are not positioned like adults.
- Brightness and contrast 0.3, p 0.8 (exposure, detector): the public experiment's jitter.
- Gamma 0.6-1.6, p 0.5 (the detector's tone curve): sites differ in how raw signal becomes
  grey levels.
- Histogram equalisation, p 0.1 (processing software): some PACS export equalised images.
- Gaussian blur sigma 0.1-1.5, p 0.2 (resolution): uploads arrive at many resolutions.
- JPEG re-compression, quality 30-95, p 0.3 (export quality): blocks and ringing must not be
  a cue.
- Gaussian noise sigma 0.03, p 0.2 (detector noise, dose): low-dose films are noisier.
- Random erasing of 0.5-3% of the image, p 0.25 (burned-in markers and text): no small patch
  may decide alone.

`crops` is the public experiment's change and nothing more: RandomResizedCrop 0.08-1 (ratio
3/4-4/3), horizontal flip, brightness and contrast 0.3 (p 0.8), no label smoothing. It tells
apart what the crops bring from what robust's other steps and its label smoothing cost.

CLAHE is left out: it needs OpenCV or scikit-image, and equalisation plus gamma and contrast
cover the same tone changes. The recipe also sets label smoothing (0.1): over-confident
probabilities are what made a validation threshold over-call on a shifted population.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from ml.core import Preprocessing
from ml.preprocessing import tensor_head, tensor_tail


@dataclass(frozen=True)
class Recipe:
    """What a training preset changes besides the schedule."""

    name: str
    label_smoothing: float
    description: str


RECIPES: dict[str, Recipe] = {
    "robust": Recipe(
        "robust",
        label_smoothing=0.1,
        description="random resized crops, tone, blur, JPEG, noise and erasing; label smoothing",
    ),
    "crops": Recipe(
        "crops",
        label_smoothing=0.0,
        description="the public experiment's: random resized crops, flip, jitter 0.3",
    ),
    "fastai": Recipe(
        "fastai",
        label_smoothing=0.0,
        description="the prototype's aug_transforms(): flip, rotate, zoom, warp, lighting",
    ),
}
# The default is `crops`: on the proxy as hard as the official test split (bench.hard_proxy,
# ml/README.md "A proxy as hard as the official split"), its family that fails the `fastai`
# model the way the official split did (tighter collimation: AUC kept, specificity 0.56)
# leaves `crops` at AUC 0.992, sensitivity 0.985, specificity 0.907, while it keeps AUC 0.996
# on the acquisition proxy (fastai 0.998, robust 0.992). `robust` holds up better on the
# other constructed families (noise, JPEG, resolution: shifts its own augmentations make)
# and `fastai` stays the prototype's recipe; both are one flag away.
DEFAULT_RECIPE = "crops"


class RandomGamma(v2.Transform):
    """x -> x ** gamma on [0, 1], gamma drawn log-uniformly from `gamma` (so 0.6 and 1/0.6
    are as likely), with probability p. < 1 brightens the mid-tones, > 1 darkens them."""

    def __init__(self, gamma: tuple[float, float] = (0.6, 1.6), p: float = 0.5) -> None:
        super().__init__()
        if not 0 < gamma[0] <= gamma[1]:
            raise ValueError(f"gamma must be 0 < low <= high, got {gamma}")
        self.gamma, self.p = gamma, p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(()) >= self.p:
            return {"gamma": None}
        low, high = torch.log(torch.tensor(self.gamma, dtype=torch.float64))
        return {"gamma": float(torch.exp(low + (high - low) * torch.rand((), dtype=torch.float64)))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["gamma"] is None:
            return inpt
        return v2.functional.adjust_gamma(inpt, params["gamma"])


class RandomJPEG(v2.Transform):
    """Re-compress a (1, H, W) uint8 image as JPEG at a quality drawn from `quality`, with
    probability p. Pillow's encoder, the one uploads were made with (torchvision's own JPEG
    codec is deprecated)."""

    def __init__(self, quality: tuple[int, int] = (30, 95), p: float = 0.3) -> None:
        super().__init__()
        if not 1 <= quality[0] <= quality[1] <= 100:
            raise ValueError(f"quality must be 1 <= low <= high <= 100, got {quality}")
        self.quality, self.p = quality, p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(()) >= self.p:
            return {"quality": None}
        return {"quality": int(torch.randint(self.quality[0], self.quality[1] + 1, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["quality"] is None:
            return inpt
        buffer = io.BytesIO()
        v2.functional.to_pil_image(inpt).save(buffer, format="JPEG", quality=params["quality"])
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out = v2.functional.pil_to_tensor(decoded.convert("L"))  # (1, H, W) uint8
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.Image) else out


def fastai_steps(s: int) -> list[v2.Transform]:
    # fastai warps with reflection padding; torchvision v2's affine and perspective transforms
    # only fill with a constant, so: reflect-pad by S/8, warp, centre-crop back to S. The pad
    # covers the corners a 0.2 perspective warp can expose.
    pad = max(1, s // 8)
    warp = [
        v2.Pad(pad, padding_mode="reflect"),  # (1, S + 2p, S + 2p)
        v2.RandomAffine(degrees=10, scale=(1.0, 1.1), interpolation=v2.InterpolationMode.BILINEAR),
        v2.RandomPerspective(distortion_scale=0.2, p=1.0),
        v2.CenterCrop(s),  # (1, S, S)
    ]
    return [
        v2.Resize((s, s), antialias=True),  # (1, S, S) uint8
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply(warp, p=0.75),
        v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2)], p=0.75),
    ]


def robust_steps(s: int) -> list[v2.Transform]:
    return [
        v2.RandomResizedCrop(s, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.RandomRotation(10, interpolation=v2.InterpolationMode.BILINEAR)], p=0.5),
        v2.RandomApply([v2.ColorJitter(brightness=0.3, contrast=0.3)], p=0.8),
        RandomGamma((0.6, 1.6), p=0.5),
        v2.RandomEqualize(p=0.1),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.2),
        RandomJPEG((30, 95), p=0.3),  # (1, S, S) uint8 still
    ]


def crops_steps(s: int) -> list[v2.Transform]:
    return [
        v2.RandomResizedCrop(s, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.ColorJitter(brightness=0.3, contrast=0.3)], p=0.8),
    ]


def robust_float_steps() -> list[v2.Transform]:
    # On the float image in [0, 1], before normalisation: noise, then erasing to black.
    return [
        v2.RandomApply([v2.GaussianNoise(sigma=0.03)], p=0.2),
        v2.RandomErasing(p=0.25, scale=(0.005, 0.03), ratio=(0.3, 3.3), value=0.0),
    ]


def train_transform(
    pre: Preprocessing, recipe: str = DEFAULT_RECIPE
) -> Callable[[Image.Image], torch.Tensor]:
    """'L' image -> (3, S, S) float32 normalised tensor, augmented as `recipe` says."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    s = pre.input_size
    if recipe == "fastai":
        return v2.Compose([*tensor_head(), *fastai_steps(s), *tensor_tail(pre)])
    if recipe == "crops":
        return v2.Compose([*tensor_head(), *crops_steps(s), *tensor_tail(pre)])
    return v2.Compose(
        [*tensor_head(), *robust_steps(s), *tensor_tail(pre, before=robust_float_steps())]
    )
