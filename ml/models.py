"""Model builders: an ImageNet-shaped backbone with a `num_classes` head.

    from ml.models import build_model
    model = build_model("resnet34", pretrained="none")                   # seeded random weights
    model = build_model("resnet34", pretrained="imagenet")               # torchvision's weights
    model = build_model("resnet34", weights_path="resnet34-b627a593.pth")  # local ImageNet file

Adding an architecture is one builder function plus one `_BUILDERS` entry: the builder makes
the ImageNet-shaped model, loads the backbone state it is given, and replaces the head.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torch.hub import load_state_dict_from_url
from torchvision.models import ResNet34_Weights, WeightsEnum

PRETRAINED_CHOICES = ("none", "imagenet")


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but cannot be had (no cache, no network, bad file)."""


# A builder takes (num_classes, ImageNet state_dict or None) and returns the finished model.
Builder = Callable[[int, dict[str, torch.Tensor] | None], nn.Module]


def _resnet34(num_classes: int, imagenet_state: dict[str, torch.Tensor] | None) -> nn.Module:
    model = torchvision.models.resnet34()  # 1000-class head, so ImageNet keys load strictly
    if imagenet_state is not None:
        model.load_state_dict(imagenet_state)
    model.fc = nn.Linear(model.fc.in_features, num_classes)  # (B, 512) -> (B, num_classes)
    return model


# name -> (builder, torchvision ImageNet weights or None when torchvision has none)
_BUILDERS: dict[str, tuple[Builder, WeightsEnum | None]] = {
    "resnet34": (_resnet34, ResNet34_Weights.IMAGENET1K_V1),
}

ARCHITECTURES: tuple[str, ...] = tuple(_BUILDERS)


def build_model(
    arch: str,
    *,
    num_classes: int = 2,
    pretrained: str = "none",
    weights_path: str | os.PathLike | None = None,
    download: bool = True,
) -> nn.Module:
    """Build `arch` with a fresh `num_classes` head.

    pretrained="none" leaves the backbone randomly initialised (seed torch first for repeatable
    weights). pretrained="imagenet" loads torchvision's ImageNet weights from torch.hub's cache
    (downloading them when `download` is true). `weights_path` is a local state_dict of the
    ImageNet backbone (1000-class head included); when given it is used whatever `pretrained`
    says, so `--weights PATH` alone is enough on an offline machine.
    """
    if arch not in _BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if pretrained not in PRETRAINED_CHOICES:
        raise ValueError(f"pretrained must be one of {PRETRAINED_CHOICES}, got {pretrained!r}")
    builder, weights = _BUILDERS[arch]

    state = None
    if weights_path is not None:
        state = _load_local_weights(arch, Path(weights_path))
    elif pretrained == "imagenet":
        state = _load_torchvision_weights(arch, weights, download=download)

    try:
        return builder(num_classes, state)
    except RuntimeError as exc:  # load_state_dict: missing / unexpected keys, shape mismatch
        raise PretrainedWeightsUnavailable(
            f"the weights given for {arch} do not match its ImageNet backbone: {exc}"
        ) from exc


def _alternatives(arch: str) -> str:
    return (
        f"Alternatives: pass a local ImageNet state_dict for {arch} with --weights PATH "
        "(build_model(weights_path=...)), or train from scratch with --pretrained none."
    )


def _load_local_weights(arch: str, path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PretrainedWeightsUnavailable(
            f"weights file {path} does not exist. {_alternatives(arch)}"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedWeightsUnavailable(f"cannot read weights file {path}: {exc}") from exc
    # torchvision's reference scripts save {"model": state_dict, ...}; accept that too.
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedWeightsUnavailable(f"{path} does not hold a state_dict of tensors")
    return obj


def _load_torchvision_weights(
    arch: str, weights: WeightsEnum | None, *, download: bool
) -> dict[str, torch.Tensor]:
    if weights is None:
        raise PretrainedWeightsUnavailable(
            f"torchvision ships no ImageNet weights for {arch}. {_alternatives(arch)}"
        )
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if not cached.is_file() and not download:
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for {arch} are not in the torch.hub cache ({cached}) and "
            f"downloading is disabled. {_alternatives(arch)}"
        )
    try:
        return load_state_dict_from_url(weights.url, progress=False, check_hash=True)
    except Exception as exc:  # URLError, hash mismatch, truncated cache file, ...
        raise PretrainedWeightsUnavailable(
            f"could not load ImageNet weights for {arch} from {weights.url} "
            f"(cache {cached}): {exc}. {_alternatives(arch)}"
        ) from exc
