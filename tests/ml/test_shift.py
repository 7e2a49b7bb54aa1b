from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.data import Item, patient_id, scan_folder, write_manifest
from ml.shift import Shift, get_args_parser, main, shift_image
from tests.synthetic import make_xray, write_dataset

REAL_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "chest_xray" / "train"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("source")
    write_dataset(root, 8, size=64, seed=5)
    return root


def _run(source: Path, out: Path, *extra: str) -> list[Item]:
    return main(get_args_parser().parse_args(["--data", str(source), "--out", str(out), *extra]))


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64)


def test_it_writes_a_kaggle_layout_site_with_the_original_names(source: Path, tmp_path: Path):
    written = _run(source, tmp_path / "site", "--size", "128")

    items = scan_folder(tmp_path / "site")
    assert sorted((p.name, label) for p, label in items) == sorted(
        (p.name, label) for p, label in scan_folder(source)
    )
    assert sorted(p for p, _ in written) == sorted(p for p, _ in items)
    with Image.open(items[0].path) as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "L", (128, 128))
    assert {patient_id(p) for p, _ in items} == {patient_id(p) for p, _ in scan_folder(source)}
    settings = json.loads((tmp_path / "site" / "shift.json").read_text())
    assert settings["shift"]["gamma"] == 1.6 and settings["shift"]["jpeg_quality"] == 35
    assert settings["counts"] == {"NORMAL": 8, "PNEUMONIA": 8}


def test_it_writes_the_same_bytes_for_the_same_seed(source: Path, tmp_path: Path):
    common = ("--size", "96", "--noise", "4", "--limit-per-class", "5")
    first = _run(source, tmp_path / "a", *common, "--seed", "1")
    second = _run(source, tmp_path / "b", *common, "--seed", "1")
    other = _run(source, tmp_path / "c", *common, "--seed", "2")

    assert [p.name for p, _ in first] == [p.name for p, _ in second]
    pairs = zip(first, second, strict=True)
    assert all(a.read_bytes() == b.read_bytes() for (a, _), (b, _) in pairs)
    # Another seed: maybe other patients, and other noise on the images both runs wrote.
    a_files = {p.relative_to(tmp_path / "a"): p for p, _ in first}
    c_files = {p.relative_to(tmp_path / "c"): p for p, _ in other}
    shared = a_files.keys() & c_files.keys()
    assert shared
    assert all(a_files[k].read_bytes() != c_files[k].read_bytes() for k in shared)


def test_it_applies_the_tone_curve_and_contrast_as_configured():
    image = make_xray("NORMAL", seed=3, size=64)
    x = np.asarray(image, dtype=np.float64) / 255.0

    plain = Shift(gamma=1.0, size=None)
    assert np.array_equal(np.asarray(shift_image(image, plain)), np.asarray(image))
    darker = np.asarray(shift_image(image, Shift(gamma=1.6, size=None)), dtype=np.float64)
    assert np.abs(darker - 255.0 * x**1.6).max() <= 0.5 + 1e-6
    assert darker.mean() < np.asarray(image).mean() - 10

    harder = Shift(gamma=1.0, contrast=1.5, brightness=0.1, size=None)
    expected = np.clip((x - 0.5) * 1.5 + 0.6, 0.0, 1.0) * 255.0
    assert np.abs(np.asarray(shift_image(image, harder), dtype=np.float64) - expected).max() <= 0.5


def _detail(a: np.ndarray) -> float:
    """Mean absolute difference between neighbouring pixels: fine detail and noise."""
    return float(np.abs(np.diff(a, axis=1)).mean() + np.abs(np.diff(a, axis=0)).mean())


def test_it_changes_resolution_blur_noise_and_compression_as_configured(tmp_path: Path):
    image = make_xray("PNEUMONIA", seed=4, size=128)
    base = Shift(gamma=1.0, size=128)
    same = np.asarray(shift_image(image, base), dtype=np.float64)
    assert shift_image(image, Shift(gamma=1.0, size=300)).size == (300, 300)
    blurred = np.asarray(shift_image(image, Shift(gamma=1.0, size=128, downscale=0.25)))
    assert blurred.shape == (128, 128)
    assert _detail(blurred.astype(np.float64)) < 0.7 * _detail(same)

    noisy = Shift(gamma=1.0, size=128, noise=8.0)
    a = np.asarray(shift_image(image, noisy, seed=0, name="x.jpeg"), dtype=np.float64)
    assert 6.0 < np.std(a - same) < 10.0
    again = np.asarray(shift_image(image, noisy, seed=0, name="x.jpeg"), dtype=np.float64)
    assert np.array_equal(a, again)
    assert not np.array_equal(a, np.asarray(shift_image(image, noisy, seed=0, name="y.jpeg")))

    errors = {}
    for quality in (35, 95):
        path = tmp_path / f"q{quality}.jpeg"
        shift_image(image, base).save(path, quality=quality)
        errors[quality] = (path.stat().st_size, np.abs(_gray(path) - same).mean())
    assert errors[35][0] < errors[95][0] and errors[35][1] > 2 * errors[95][1]


def test_it_reframes_a_film_as_a_tighter_or_a_wider_collimation():
    # A white square on black, its border 16 px of each 64 px side: cropping to the central
    # half leaves no black, a 0.25 frame doubles the black border, and the size stays.
    pixels = np.zeros((64, 64), dtype=np.uint8)
    pixels[16:48, 16:48] = 255
    image = Image.fromarray(pixels, mode="L")
    plain = Shift(gamma=1.0, size=None)
    assert np.array_equal(np.asarray(shift_image(image, plain)), pixels)

    tight = np.asarray(shift_image(image, Shift(gamma=1.0, size=None, crop=0.5)))
    assert tight.shape == (64, 64)
    assert tight[4:-4, 4:-4].min() > 200  # all film (the edge rows are resampling)

    wide = np.asarray(shift_image(image, Shift(gamma=1.0, size=None, frame=0.25)))
    assert wide.shape == (64, 64)
    assert wide[:16].max() == 0 and wide[-16:].max() == 0  # the new frame
    assert abs((wide > 127).mean() - 0.25 * 0.5**2) < 0.01  # the square, half as wide

    with pytest.raises(ValueError, match="crop"):
        Shift(crop=0.0)
    with pytest.raises(ValueError, match="frame"):
        Shift(frame=0.5)


def test_it_leaves_out_the_patients_of_excluded_manifests(source: Path, tmp_path: Path):
    items = scan_folder(source)
    seen = [it for i, it in enumerate(items) if i % 3 == 0]
    seen_patients = {patient_id(p) for p, _ in seen}
    write_manifest(tmp_path / "train.csv", seen[::2])
    write_manifest(tmp_path / "val.csv", seen[1::2])
    written = _run(source, tmp_path / "site", "--size", "64",
                   "--exclude-manifest", str(tmp_path / "train.csv"),
                   "--exclude-manifest", str(tmp_path / "val.csv"))  # fmt: skip

    site_patients = {patient_id(p) for p, _ in written}
    assert site_patients.isdisjoint(seen_patients)
    # Whole patients go: a patient's second image goes with the listed first one.
    assert site_patients == {patient_id(p) for p, _ in items} - seen_patients
    assert len(written) < len(items) - len(seen)


def test_it_caps_each_class_with_whole_patients(source: Path, tmp_path: Path):
    written = _run(source, tmp_path / "site", "--size", "64", "--limit-per-class", "3")
    assert Counter(label for _, label in written) == {"NORMAL": 3, "PNEUMONIA": 3}


def test_it_refuses_to_mix_two_runs_in_one_folder(source: Path, tmp_path: Path):
    _run(source, tmp_path / "site", "--size", "64", "--limit-per-class", "2")
    with pytest.raises(FileExistsError, match="not empty"):
        _run(source, tmp_path / "site", "--size", "64")


def test_it_refuses_bad_settings_and_documents_every_flag():
    with pytest.raises(ValueError, match="downscale"):
        Shift(downscale=0.0)
    with pytest.raises(ValueError, match="jpeg_quality"):
        Shift(jpeg_quality=100)
    parser = get_args_parser()
    assert [a.dest for a in parser._actions if not a.help] == []


@pytest.mark.skipif(not REAL_TRAIN.is_dir(), reason=f"real X-rays not found at {REAL_TRAIN}")
def test_it_shifts_a_few_real_xrays(tmp_path: Path):
    written = _run(REAL_TRAIN, tmp_path / "site", "--limit-per-class", "2")

    assert Counter(label for _, label in written) == {"NORMAL": 2, "PNEUMONIA": 2}
    for path, label in written:
        original = REAL_TRAIN / label / path.name
        assert patient_id(path) == patient_id(original)
        shifted = _gray(path)
        assert shifted.shape == (512, 512)
        assert shifted.mean() < np.asarray(Image.open(original).convert("L")).mean() - 5
