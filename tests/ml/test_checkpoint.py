from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest
import torch
from torch import nn

from ml.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)


def _payload(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_it_round_trips_weights_and_meta(checkpoint_path: Path, model: nn.Module, meta):
    loaded, loaded_meta = load_checkpoint(checkpoint_path)
    assert loaded_meta == meta
    assert read_meta(checkpoint_path) == meta
    assert not loaded.training
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_it_saves_a_plain_dict_that_loads_with_weights_only(checkpoint_path: Path, meta):
    payload = _payload(checkpoint_path)
    assert set(payload) == {"format_version", "meta", "state_dict"}
    assert payload["format_version"] == FORMAT_VERSION
    assert payload["meta"]["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert payload["meta"]["preprocessing"] == {
        "input_size": 64,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    assert CheckpointMeta.from_dict(payload["meta"]) == meta


def test_it_replaces_the_file_atomically_with_normal_permissions(tmp_path: Path, model, meta):
    path = tmp_path / "models" / "m.pt"
    save_checkpoint(path, model, meta)
    save_checkpoint(path, model, dataclasses.replace(meta, threshold=0.25))
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]
    assert read_meta(path).threshold == 0.25
    # Readable like any file the umask allows, not mkstemp's private 0600.
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_it_refuses_meta_that_is_not_json(tmp_path: Path, model, meta):
    bad = dataclasses.replace(meta, metrics={"val_auc": object()})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "m.pt", model, bad)
    assert not (tmp_path / "m.pt").exists()


def test_it_raises_checkpoint_error_for_truncated_or_garbage_files(tmp_path, checkpoint_path):
    truncated = tmp_path / "truncated.pt"
    data = checkpoint_path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint" * 100)
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match="not a readable checkpoint"):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_it_refuses_pickled_code(tmp_path: Path):
    path = tmp_path / "evil.pt"
    # Any class outside torch's weights_only allow-list stands in for a malicious object.
    torch.save({"format_version": 1, "meta": {}, "state_dict": {}, "x": Path("/")}, path)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_meta(path)


def _rewrite(checkpoint_path: Path, tmp_path: Path, change) -> Path:
    payload = _payload(checkpoint_path)
    change(payload)
    path = tmp_path / "changed.pt"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.pop("state_dict"), "is not a checkpoint"),
        (lambda p: p.update(format_version=99), "format_version 99"),
        (lambda p: p["meta"].pop("threshold"), r"missing keys: \['threshold'\]"),
        (lambda p: p["meta"].update(arch="vgg11"), "unknown architecture 'vgg11'"),
        (lambda p: p["meta"].update(positive_class="COVID"), "invalid checkpoint meta"),
        (lambda p: p["state_dict"].pop("fc.weight"), "weights do not fit resnet34"),
    ],
)
def test_it_explains_what_is_wrong_with_a_checkpoint(checkpoint_path, tmp_path, change, message):
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(_rewrite(checkpoint_path, tmp_path, change))
