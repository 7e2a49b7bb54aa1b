from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from ml.models import ARCHITECTURES, PretrainedWeightsUnavailable, build_model


def test_it_builds_every_architecture_with_the_requested_head():
    for arch in ARCHITECTURES:
        model = build_model(arch, num_classes=3).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_it_gives_the_same_random_weights_for_the_same_seed():
    torch.manual_seed(5)
    a = build_model("resnet34").state_dict()
    torch.manual_seed(5)
    b = build_model("resnet34").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


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
