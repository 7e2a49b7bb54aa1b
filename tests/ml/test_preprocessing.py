from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from ml.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDecodeError,
    Preprocessing,
    eval_transform,
    image_to_tensor,
    open_image,
)
from tests.synthetic import make_xray

REAL_FULL_RES = Path(__file__).resolve().parents[3] / "shared" / "data" / "full_resolution"


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def _gradient(width: int, height: int) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width), (height, 1)).astype(np.uint8)  # (H, W)


def test_it_decodes_an_rgb_jpeg_to_grayscale():
    rgb = Image.merge("RGB", [make_xray("NORMAL", seed=0, size=96)] * 3)
    image = open_image(_encode(rgb, "JPEG", quality=95))
    assert image.mode == "L"
    assert image.size == (96, 96)
    expected = np.asarray(make_xray("NORMAL", seed=0, size=96), dtype=np.float64)
    assert np.abs(np.asarray(image, dtype=np.float64) - expected).mean() < 3.0


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "RGB"])
def test_it_converts_png_modes_to_grayscale(mode: str):
    gray = Image.fromarray(_gradient(80, 40), mode="L")
    image = open_image(_encode(gray.convert(mode), "PNG"))
    assert image.mode == "L"
    assert image.size == (80, 40)
    # Palette conversion quantises, the others are exact.
    tolerance = 8 if mode == "P" else 1
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(gray, dtype=int)).max() <= tolerance


def test_it_stretches_a_16_bit_png_to_the_full_8_bit_range():
    # 12-bit data, as many exported radiographs hold: a fixed >> 8 would make it near-black.
    data = np.tile(np.linspace(0, 4095, 64), (32, 1)).astype(np.uint16)  # (32, 64)
    png = _encode(Image.fromarray(data), "PNG")
    assert Image.open(io.BytesIO(png)).mode in ("I;16", "I")
    pixels = np.asarray(open_image(png))
    assert pixels.dtype == np.uint8
    assert (pixels.min(), pixels.max()) == (0, 255)
    assert np.all(np.diff(pixels[0].astype(int)) >= 0)  # the gradient keeps its order
    assert abs(int(pixels[0, 32]) - 130) <= 2


def test_it_raises_on_a_truncated_jpeg():
    data = _encode(make_xray("PNEUMONIA", seed=2, size=256), "JPEG", quality=95)
    with pytest.raises(ImageDecodeError, match="truncated"):
        open_image(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("data", [b"hello, this is not an image\n", b""])
def test_it_raises_on_bytes_that_are_not_an_image(data: bytes):
    with pytest.raises(ImageDecodeError, match="not a readable image: cannot identify image file"):
        open_image(data)


def test_it_decodes_a_large_jpeg_at_reduced_scale_but_never_below_size():
    big = Image.fromarray(_gradient(1800, 1200), mode="L")
    data = _encode(big, "JPEG", quality=90)
    assert open_image(data).size == (1800, 1200)
    reduced = open_image(data, size=224)
    # 1/4 scale is the smallest that keeps both sides >= 224 (1/8 would give 150 px high).
    assert reduced.size == (450, 300)
    assert min(reduced.size) >= 224


@pytest.mark.skipif(not REAL_FULL_RES.is_dir(), reason=f"real X-rays not found at {REAL_FULL_RES}")
def test_it_decodes_real_full_resolution_xrays_at_reduced_scale():
    path = sorted((REAL_FULL_RES / "PNEUMONIA").glob("*.jpeg"))[0]
    full = Image.open(path).size
    image = open_image(path, size=224)
    assert image.mode == "L"
    assert min(image.size) >= 224
    assert image.size[0] < full[0]


def test_it_reads_paths_bytes_and_file_objects_alike(xray_jpeg: Path):
    data = xray_jpeg.read_bytes()
    f = io.BytesIO(data)
    f.seek(0, io.SEEK_END)  # a caller that already read the upload
    images = [open_image(xray_jpeg), open_image(data), open_image(f)]
    arrays = [np.asarray(image) for image in images]
    assert all(np.array_equal(arrays[0], a) for a in arrays[1:])


def test_it_turns_an_image_into_a_normalised_square_tensor():
    pre = Preprocessing(input_size=32)
    value = 200
    image = Image.new("L", (100, 60), color=value)  # not square: squashed, not cropped
    x = image_to_tensor(image, pre)
    assert x.shape == (3, 32, 32)
    assert x.dtype == torch.float32
    expected = [(value / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)
    assert torch.allclose(x, eval_transform(pre)(image))


def test_it_squashes_the_whole_image_into_the_square():
    # Left half black, right half white, 2:1: a centre crop would lose the outer quarters.
    pixels = np.zeros((100, 200), dtype=np.uint8)
    pixels[:, 100:] = 255
    x = image_to_tensor(Image.fromarray(pixels, mode="L"), Preprocessing(input_size=64))
    column_means = x[0].mean(dim=0)  # (64,)
    assert column_means[:30].max() < column_means[34:].min()
    assert torch.isclose(column_means[0], torch.tensor((0 - 0.485) / 0.229), atol=1e-4)


def test_it_round_trips_preprocessing_through_json():
    pre = Preprocessing(input_size=160)
    d = json.loads(json.dumps(pre.to_dict()))
    assert Preprocessing.from_dict(d) == pre
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        Preprocessing.from_dict({**d, "crop": 0.9})
