"""The parts of the ml package that need no torch: decoding, the preprocessing description,
numpy model inputs, prediction results and errors. A worker on a torch-free runtime (ONNX
Runtime) imports only this, which keeps it to a fraction of a torch process's memory.

    from ml.core import Preprocessing, image_to_array, open_image
    x = image_to_array(open_image("upload.jpeg", size=224), Preprocessing())  # (3, 224, 224)
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import BinaryIO, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class CheckpointError(ValueError):
    """The file is missing, corrupted, not a checkpoint, or does not fit the model it names."""


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float  # P(positive class)
    threshold: float  # the threshold the label was decided with
    elapsed_ms: float  # decode + preprocess + forward for this image
    # The second question, for a model that answers it (None otherwise): P(bacterial |
    # pneumonia), the subtype it calls at the model's subtype threshold, and that threshold.
    # Given for every image: it reads "if this is pneumonia, it is more likely bacterial".
    p_bacterial: float | None = None
    subtype: str | None = None
    subtype_threshold: float | None = None


# ---------------------------------------------------------------------------------------------
# The subtype question: bacterial or viral, given pneumonia

SUBTYPES = ("bacterial", "viral")  # the model gives P(SUBTYPES[0] | pneumonia)
# How one network answers both questions (ml.heads has the torch side):
#   two_heads    3 outputs: the two pneumonia logits as a binary model has them, plus one
#                logit of bacterial against viral
#   three_class  3 outputs: NORMAL, BACTERIAL, VIRAL logits of one softmax; P(pneumonia) is
#                p_bacterial + p_viral
HEAD_OUTPUTS = {"two_heads": 3, "three_class": 3}


@dataclass(frozen=True)
class SubtypeQuestion:
    """What a checkpoint that also answers "bacterial or viral?" records about it."""

    head: str  # a HEAD_OUTPUTS key
    threshold: float  # on P(bacterial | pneumonia): at or above it, "bacterial"

    def __post_init__(self) -> None:
        if self.head not in HEAD_OUTPUTS:
            raise ValueError(
                f"subtype head must be one of {', '.join(HEAD_OUTPUTS)}, got {self.head!r}"
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"subtype threshold must be within [0, 1], got {self.threshold}")

    def at(self, threshold: float | None) -> SubtypeQuestion:
        """The same question decided at `threshold` (a site's own), or as recorded (None)."""
        return self if threshold is None else dataclasses.replace(self, threshold=threshold)

    def label(self, p_bacterial: float, threshold: float | None = None) -> str:
        t = self.threshold if threshold is None else threshold
        return SUBTYPES[0] if p_bacterial >= t else SUBTYPES[1]

    def to_dict(self) -> dict:
        return {"head": self.head, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: dict) -> SubtypeQuestion:
        return cls(head=d["head"], threshold=float(d["threshold"]))


def answer_probabilities(
    logits: np.ndarray, positive: int, subtype: SubtypeQuestion | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """A network's raw outputs (B, C) -> (P(positive class) (B,), P(bacterial | pneumonia)
    (B,) or None), in numpy: what ONNX Runtime workers compute. ml.heads.answers is the same
    in torch, and a test holds the two together."""
    z = logits.astype(np.float64)  # (B, C)
    expected = 2 if subtype is None else HEAD_OUTPUTS[subtype.head]
    if z.ndim != 2 or z.shape[1] != expected:
        what = "a binary model" if subtype is None else f"the {subtype.head} head"
        given = z.shape[1] if z.ndim == 2 else f"shape {z.shape} of"
        raise ValueError(f"the network gives {given} outputs per image; {what} has {expected}")
    if subtype is None:
        return _softmax(z)[:, positive], None
    if subtype.head == "two_heads":
        return _softmax(z[:, :2])[:, positive], _sigmoid(z[:, 2])
    # three_class: (NORMAL, BACTERIAL, VIRAL); the two-class positive index is PNEUMONIA's.
    p = _softmax(z)
    p_pneumonia = p[:, 1] + p[:, 2]
    return (p_pneumonia if positive == 1 else 1.0 - p_pneumonia), _sigmoid(z[:, 1] - z[:, 2])


def make_predictions(
    probabilities: Sequence[float],
    bacterial: Sequence[float] | None,
    *,
    threshold: float,
    labels: tuple[str, str],
    elapsed_ms: float,
    subtype: SubtypeQuestion | None,
) -> list[Prediction]:
    """Predictions from both answers: labels = (negative, positive) class; the subtype
    fields are filled when the model answers the subtype question."""
    negative, positive = labels
    if bacterial is None or subtype is None:
        bacterial = [None] * len(probabilities)
    out = []
    for p, b in zip(probabilities, bacterial, strict=True):
        label = positive if p >= threshold else negative
        if b is None:
            out.append(Prediction(label, p, threshold, elapsed_ms))
        else:
            out.append(
                Prediction(
                    label,
                    p,
                    threshold,
                    elapsed_ms,
                    p_bacterial=b,
                    subtype=subtype.label(b),
                    subtype_threshold=subtype.threshold,
                )
            )
    return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(750) is inf, and 1 / inf is the right 0
        return 1.0 / (1.0 + np.exp(-z))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# What open_image() reads: a path, the encoded bytes, or a binary file object.
ImageSource = str | os.PathLike | bytes | BinaryIO

T = TypeVar("T")

# Modes that hold more than 8 bits per pixel; they are windowed down to 8-bit grayscale.
_HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


class ImageDecodeError(ValueError):
    """The bytes are not an image Pillow can fully decode (unknown format, truncated, bomb)."""


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become a model input. Saved in checkpoints so inference matches training."""

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.input_size < 16:
            raise ValueError(f"input_size must be >= 16, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std must have 3 values (the model takes RGB input)")
        # from_dict receives lists from JSON; store tuples so the instance stays hashable.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict:
        return {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        known = asdict(cls())
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# Decoding


def open_image(source: ImageSource, *, size: int | None = None) -> Image.Image:
    """Decode `source` into a fully loaded single-channel 8-bit ('L') PIL image.

    `source` is a path, the raw bytes, or a binary file object (read from its start).
    With `size`, JPEGs are decoded at a reduced scale (1/2, 1/4 or 1/8) that is still at least
    `size` pixels on both sides: a 2000 px upload then decodes several times faster, and the
    later resize to `size` loses nothing.

    Raises ImageDecodeError for data that is not a complete image. Truncated files are only
    detected while `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is False (Pillow's default); this
    module never changes it. A missing path raises FileNotFoundError as usual.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        fp: str | os.PathLike | BinaryIO = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        fp = source
    elif hasattr(source, "read"):
        # Copy the bytes so the decoded image never depends on the caller's file object.
        if hasattr(source, "seek"):
            source.seek(0)
        fp = io.BytesIO(source.read())
    else:
        raise TypeError(f"open_image() takes a path, bytes or a file object, not {type(source)}")

    try:
        with Image.open(fp) as img:
            if size is not None and img.format == "JPEG":
                img.draft("L", (size, size))
            img.load()
            # Phone photos of films carry an EXIF orientation; training images carry none.
            img = ImageOps.exif_transpose(img)
            return to_grayscale(img)
    except FileNotFoundError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not a readable image: cannot identify image file") from exc
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, EOFError, ...
        raise ImageDecodeError(f"not a readable image: {exc}") from exc


def load_each(sources: Sequence[ImageSource], load: Callable[[ImageSource], T]) -> list[T]:
    """`load(source)` for each source, in order. A source that fails raises ImageDecodeError
    naming it (its path, or its position in the batch): an evaluation over hundreds of files
    must say which one is bad."""
    loaded = []
    for i, source in enumerate(sources):
        try:
            loaded.append(load(source))
        except ImageDecodeError as exc:
            name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"#{i}"
            raise ImageDecodeError(f"image {name}: {exc}") from exc
    return loaded


def to_grayscale(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> a new 'L' image that no longer refers to the source file."""
    if img.mode in _HIGH_BIT_DEPTH_MODES:
        # 16-bit X-ray PNGs often hold 10-14 bit data, so a fixed >> 8 would leave them nearly
        # black; stretch the used range over 0..255 instead.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")
    if img.mode in ("L", "RGB", "P", "1"):
        return img.convert("L")
    if img.mode in ("LA", "RGBA", "PA"):
        # Dropping alpha keeps the radiograph's own gray values (no compositing on a colour).
        return img.convert("RGBA").convert("RGB").convert("L")
    return img.convert("RGB").convert("L")  # CMYK, YCbCr, LAB, HSV, ...


# ---------------------------------------------------------------------------------------------
# numpy model input


def image_to_array(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """One decoded 'L' image -> (3, S, S) float32 normalised input, without torch: squashed
    to S x S with Pillow's antialiased bilinear resize (close to, not bit-equal with, the torch
    path; the runtime accuracy gate measures the difference on validation)."""
    size = (pre.input_size, pre.input_size)
    gray = np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    mean = np.asarray(pre.mean, dtype=np.float32)[:, None, None]  # (3, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32)[:, None, None]
    return (gray[None, :, :] - mean) / std  # (3, S, S)
