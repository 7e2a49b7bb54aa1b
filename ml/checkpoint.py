"""Self-describing checkpoints: a plain dict of JSON-like metadata plus the model's state_dict.

    {"format_version": 1, "meta": CheckpointMeta.to_dict(), "state_dict": {name: tensor}}

Plain dicts load with `torch.load(path, weights_only=True)`, which cannot run pickled code,
so a checkpoint from an untrusted place is safe to open. Missing, truncated or garbled files
raise CheckpointError; a flipped bit inside the weights is not detected (no checksum).

    from ml.checkpoint import load_checkpoint
    model, meta = load_checkpoint("var/models/demo.pt")  # eval() mode, on CPU
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from ml.core import CheckpointError, Preprocessing, SubtypeQuestion
from ml.heads import n_outputs
from ml.models import ARCHITECTURES, build_model

FORMAT_VERSION = 1
_TOP_LEVEL_KEYS = ("format_version", "meta", "state_dict")


@dataclass(frozen=True)
class CheckpointMeta:
    arch: str
    class_names: tuple[str, ...]  # index order of the model's outputs, e.g. ("NORMAL", "PNEUMONIA")
    positive_class: str  # the class whose probability the threshold applies to
    preprocessing: Preprocessing
    threshold: float  # decision threshold on P(positive_class)
    metrics: dict  # validation metrics, JSON-serialisable
    train_args: dict
    data_hash: str | None
    created_at: str  # ISO 8601 UTC
    # The second question, bacterial or viral (ml.heads), or None: the model answers only
    # the first. Checkpoints written before it existed lack the key and load as None.
    subtype: SubtypeQuestion | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.positive_class not in self.class_names:
            raise ValueError(f"positive_class {self.positive_class!r} not in {self.class_names}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {self.threshold}")

    @property
    def positive_index(self) -> int:
        return self.class_names.index(self.positive_class)

    @property
    def questions(self) -> tuple[str, ...]:
        """Which questions the model answers: ("pneumonia",) or ("pneumonia", "subtype")."""
        return ("pneumonia",) if self.subtype is None else ("pneumonia", "subtype")

    @property
    def n_outputs(self) -> int:
        return n_outputs(None if self.subtype is None else self.subtype.head)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["class_names"] = list(self.class_names)
        d["preprocessing"] = self.preprocessing.to_dict()
        d["subtype"] = None if self.subtype is None else self.subtype.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CheckpointMeta:
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d and n != "subtype"]
        if missing:
            raise CheckpointError(f"checkpoint meta is missing keys: {missing}")
        try:
            values = {n: d[n] for n in names if n in d}
            values["preprocessing"] = Preprocessing.from_dict(d["preprocessing"])
            values["threshold"] = float(d["threshold"])
            if d.get("subtype") is not None:
                values["subtype"] = SubtypeQuestion.from_dict(d["subtype"])
            return cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid checkpoint meta: {exc}") from exc


def utc_now() -> str:
    """The `created_at` format: ISO 8601 in UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: CheckpointMeta) -> None:
    """Write atomically: a reader sees the old file or the complete new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta_dict = meta.to_dict()
    # Fail here rather than at load time: weights_only loading refuses numpy scalars and the
    # like, and the Django side stores the same meta as JSON.
    json.dumps(meta_dict, allow_nan=True)
    payload = {"format_version": FORMAT_VERSION, "meta": meta_dict, "state_dict": state_dict}
    # The temporary file sits in the target folder so os.replace never crosses file systems.
    # open("xb") rather than mkstemp: mkstemp's 0600 mode would hide the model from a web or
    # worker process running as another user; "xb" honours the umask like any other file.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # mmap: read_meta() never reads the ~85 MB of weights, and load_checkpoint() copies
        # them into the model straight from the page cache instead of via a second buffer.
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated zip, random bytes, pickled code refused, ...
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupted?): {exc}") from exc
    if not isinstance(payload, dict) or any(k not in payload for k in _TOP_LEVEL_KEYS):
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not a checkpoint: expected keys {_TOP_LEVEL_KEYS}, got {keys}"
        )
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {payload['format_version']!r}; "
            f"this code reads {FORMAT_VERSION}"
        )
    if not isinstance(payload["meta"], dict):
        raise CheckpointError(f"{path}: 'meta' is not a dict")
    return payload


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    return CheckpointMeta.from_dict(_read(path)["meta"])


def load_checkpoint(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model the checkpoint names, load its weights strictly, return it in eval()."""
    payload = _read(path)
    meta = CheckpointMeta.from_dict(payload["meta"])
    if meta.arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{path} names unknown architecture {meta.arch!r}; known: {', '.join(ARCHITECTURES)}"
        )
    model = build_model(meta.arch, num_classes=meta.n_outputs, pretrained="none")
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except Exception as exc:  # missing / unexpected keys, shape mismatch, non-tensor values
        raise CheckpointError(f"{path}: weights do not fit {meta.arch}: {exc}") from exc
    return model.to(map_location).eval(), meta
