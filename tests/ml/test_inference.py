from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import pytest
import torch

from ml.inference import Prediction, Predictor
from ml.preprocessing import ImageDecodeError
from tests.synthetic import make_xray


@pytest.fixture(scope="module")
def predictor(checkpoint_path: Path) -> Predictor:
    return Predictor.from_checkpoint(checkpoint_path)


def _jpeg(label: str, seed: int) -> bytes:
    buf = io.BytesIO()
    make_xray(label, seed=seed, size=96).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_it_labels_by_the_threshold(predictor: Predictor):
    data = _jpeg("PNEUMONIA", seed=3)
    p = predictor.predict(data).probability
    assert 0.0 < p < 1.0
    at = predictor.predict(data, threshold=p)
    above = predictor.predict(data, threshold=math.nextafter(p, 1.0) + 1e-6)
    assert (at.label, at.threshold) == ("PNEUMONIA", p)
    assert above.label == "NORMAL"
    assert predictor.predict(data, threshold=0.0).label == "PNEUMONIA"


def test_it_uses_the_checkpoint_threshold_by_default(model, meta):
    data = _jpeg("NORMAL", seed=4)
    p = Predictor(model, meta).predict(data).probability
    low = Predictor(model, dataclasses.replace(meta, threshold=max(0.0, p - 0.01)))
    high = Predictor(model, dataclasses.replace(meta, threshold=min(1.0, p + 0.01)))
    assert low.predict(data).label == "PNEUMONIA"
    assert high.predict(data).label == "NORMAL"
    assert high.predict(data).threshold == pytest.approx(min(1.0, p + 0.01))


def test_it_predicts_a_batch_like_one_by_one(predictor: Predictor, tmp_path: Path):
    sources = [_jpeg(label, seed) for label in ("NORMAL", "PNEUMONIA") for seed in range(3)]
    path = tmp_path / "IM-0001-0001.jpeg"
    path.write_bytes(sources[0])
    sources += [path, io.BytesIO(sources[1])]
    batch = predictor.predict_batch(sources, threshold=0.6)
    single = [predictor.predict(s, threshold=0.6) for s in sources]  # file objects re-read
    assert len(batch) == len(sources)
    for b, s in zip(batch, single, strict=True):
        assert isinstance(b, Prediction)
        assert b.probability == pytest.approx(s.probability, abs=1e-5)
        assert b.label == s.label
        assert b.elapsed_ms > 0
    assert len({round(b.probability, 6) for b in batch}) > 1  # not a constant model
    assert predictor.predict_batch([]) == []


def test_it_raises_decode_errors_and_bad_thresholds(predictor: Predictor):
    with pytest.raises(ImageDecodeError):
        predictor.predict(b"GIF89a but not really")
    with pytest.raises(ValueError, match="threshold"):
        predictor.predict(_jpeg("NORMAL", seed=0), threshold=1.5)


def test_it_runs_the_model_in_channels_last(predictor: Predictor):
    assert predictor.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not predictor.model.training


def test_it_names_the_file_that_does_not_decode_in_a_batch(predictor: Predictor, tmp_path: Path):
    good, bad = tmp_path / "IM-0001-0001.jpeg", tmp_path / "IM-0002-0001.jpeg"
    good.write_bytes(_jpeg("NORMAL", seed=0))
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ImageDecodeError, match=r"IM-0002-0001\.jpeg"):
        predictor.predict_batch([good, bad])
