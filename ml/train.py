"""Fine-tune a NORMAL / PNEUMONIA classifier and write a self-describing checkpoint.

    python -m ml.train --data ../shared/data/chest_xray --arch efficientnet_lite0 \
        --pretrained imagenet --out var/models/effl0-full.pt        # the crops recipe
    python -m ml.train ... --recipe robust      # heavier; --recipe fastai: the prototype's

From code, build the frozen config directly (services do):

    from ml.train import TrainConfig, main
    main(TrainConfig(manifest=Path("train.csv"), val_manifest=Path("val.csv"), epochs=3))

Recipe, fastai's `fine_tune` made explicit (the loop itself is ml.engine):
1. Split by patient: a TEST split (--test-fraction) is carved out first and never used for any
   choice; validation (--val-fraction) picks the epoch and the threshold. Both are written
   next to the checkpoint as CSV manifests (`<out>.test.csv`, `<out>.val.csv`) for
   `python -m ml.evaluate --data-manifest`, and the training split as `<out>.train.csv` (for
   `python -m ml.shift --exclude-manifest`: a site made of patients the model never saw).
2. LR finder on the frozen model (skipped when --lr is given); its plot goes to
   `<out>.lr_find.png` and its "valley" becomes the learning rate.
3. --freeze-epochs with the body frozen: only the new head and the BatchNorm layers train.
4. Unfreeze; --epochs more with discriminative rates, lr/2/--lr-mult for the first parameter
   group rising geometrically to lr/2 for the head. Each phase is one AdamW one-cycle.
5. Keep the epoch with the best validation ROC AUC; its threshold is the highest one whose
   validation sensitivity is >= --min-sensitivity. The checkpoint records the rule and the
   images it was chosen on (`metrics["threshold_rule"]`).
6. A model that also answers bacterial vs viral (--subtype-head, ml.heads; learnt from
   Kermany file names, a manifest's `subtype` column or reviewed studies) stores a second
   threshold on P(bacterial | pneumonia): Youden's on the validation pneumonia images of known
   subtype (`metrics["subtype"]["threshold_rule"]`).
The augmentations and the label smoothing are the --recipe's (ml.augment: `crops`, the
default; `robust`; `fastai`, the prototype's). Retraining (`manage.py retrain`) passes
--val-manifest, the selection part of a validation split frozen once (no test split is
carved then), and --init-checkpoint to continue from the active model instead of ImageNet weights.
The class imbalance (about 1 normal to 3 pneumonia) is handled with a weighted cross-entropy
(class weights n_train / (n_classes * n_class), so each class contributes equally), times the
per-image `weight` of a manifest row. The same --seed gives the same split and result on CPU.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ml.augment import train_transform
from ml.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint, utc_now
from ml.config import DEFAULT_SUBTYPE_HEAD, TrainConfig, get_args_parser
from ml.core import SUBTYPES, SubtypeQuestion
from ml.data import (
    CLASS_NAMES,
    POSITIVE_CLASS,
    Item,
    limit_per_class,
    manifest_hash,
    read_manifest,
    scan_folder,
    split_train_val_test,
    subtype_of,
    write_manifest,
)
from ml.dataset import ImageDataset
from ml.engine import (
    Best,
    Run,
    class_weights,
    fine_tune,
    training_device,
    training_precision,
)
from ml.heads import NO_SUBTYPE, QuestionsLoss, n_outputs
from ml.metrics import choose_threshold, roc_auc, sensitivity_specificity, youden_threshold
from ml.models import (
    PretrainedWeightsUnavailable,
    build_model,
    default_preprocessing,
)
from ml.preprocessing import Preprocessing, eval_transform


def _describe(name: str, items: list[Item]) -> str:
    counts = Counter(label for _, label in items)
    subtypes = Counter(subtype_of(item) for item in items)
    return (
        f"{name} {len(items)} ({', '.join(f'{c} {counts[c]}' for c in CLASS_NAMES)}; "
        f"{', '.join(f'{s} {subtypes[s]}' for s in SUBTYPES)})"
    )


def _subtype_head(
    config: TrainConfig, init: CheckpointMeta | None, train: list[Item], val: list[Item]
) -> str | None:
    """The subtype head to train (None: a binary model); see --subtype-head."""
    if init is not None:  # continuing a model keeps the questions it answers
        return None if init.subtype is None else init.subtype.head
    if config.subtype_head == "none":
        return None

    def both(items: list[Item]) -> bool:
        return set(SUBTYPES) <= {subtype_of(item) for item in items}

    if both(train) and both(val):
        return DEFAULT_SUBTYPE_HEAD if config.subtype_head == "auto" else config.subtype_head
    if config.subtype_head == "auto":
        print("subtype: training or validation lacks bacterial or viral images; binary model")
        return None
    raise ValueError(
        f"--subtype-head {config.subtype_head} needs bacterial and viral pneumonia images in "
        "both the training and the validation split (Kermany file names or a manifest's "
        "subtype column); use --subtype-head none for a binary model"
    )


def _splits(config: TrainConfig) -> tuple[list[Item], list[Item], list[Item], list[Item]]:
    """(all items used, train, val, test), split by patient; or, with val_manifest, that
    fixed validation split, the other items for training, and no test split."""
    items = read_manifest(config.manifest) if config.manifest else scan_folder(config.data)
    if config.limit_per_class:
        items = limit_per_class(items, config.limit_per_class, seed=config.seed)
    if config.val_manifest is not None:
        val, test = read_manifest(config.val_manifest), []
        held = {item.path.resolve() for item in val}
        train = [item for item in items if Path(item.path).resolve() not in held]
        items = train + val
    else:
        train, val, test = split_train_val_test(
            items,
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
            seed=config.seed,
            test_split=config.test_split,
        )
    splits = (("train", train), ("val", val), ("test", test))
    print(", ".join(_describe(name, split) for name, split in splits), flush=True)
    return items, train, val, test


def _loaders(
    config: TrainConfig, pre: Preprocessing, train: list[Item], val: list[Item]
) -> tuple[DataLoader, DataLoader]:
    augment = train_transform(pre, config.recipe)
    train_ds = ImageDataset(train, augment, decode_size=pre.input_size, return_weight=True)
    val_ds = ImageDataset(val, eval_transform(pre), decode_size=pre.input_size)
    train_loader = DataLoader(
        train_ds,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=config.workers,
        generator=torch.Generator().manual_seed(config.seed),
        # A last batch of one image would make BatchNorm's batch statistics meaningless.
        drop_last=len(train_ds) > config.batch_size,
    )
    val_loader = DataLoader(val_ds, batch_size=config.batch_size, num_workers=config.workers)
    return train_loader, val_loader


def main(config: TrainConfig) -> Path:
    """Train as `config` says, write the checkpoint to config.out and return its path."""
    init = None
    if config.init_checkpoint is not None:  # continue from a trained model: its arch and inputs
        init = load_checkpoint(config.init_checkpoint)
        config = dataclasses.replace(config, arch=init[1].arch)
    config = config.resolved()
    if config.freeze_epochs + config.epochs <= 0:
        raise ValueError("nothing to train: --freeze-epochs and --epochs are both 0")
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = training_device(config.device)
    print(f"Training on {device} in {training_precision(device)}", flush=True)
    out = config.out

    pre = init[1].preprocessing if init else default_preprocessing(config.arch, config.img_size)
    items, train, val, test = _splits(config)
    manifests = {
        # The training split too, so that a new site can be built from other patients.
        "train_manifest": write_manifest(out.with_suffix(".train.csv"), train),
        "val_manifest": write_manifest(out.with_suffix(".val.csv"), val),
    }
    if test:  # what `python -m ml.evaluate --data-manifest` reads
        manifests["test_manifest"] = write_manifest(out.with_suffix(".test.csv"), test)
    head = _subtype_head(config, init[1] if init else None, train, val)
    if init is not None:
        if tuple(init[1].class_names) != CLASS_NAMES:
            raise ValueError(
                f"{config.init_checkpoint} predicts {init[1].class_names}, not {CLASS_NAMES}"
            )
        model = init[0].train()
    else:
        model = build_model(
            config.arch,
            num_classes=n_outputs(head),
            pretrained=config.pretrained,
            weights_path=config.weights,
        )
    model = model.to(device, memory_format=torch.channels_last)
    train_loader, val_loader = _loaders(config, pre, train, val)
    weights = class_weights(train_loader.dataset.targets, len(CLASS_NAMES))
    criterion = QuestionsLoss(
        weights,
        label_smoothing=config.label_smoothing,
        head=head,
        subtype_weights=subtype_loss_weights(
            train_loader.dataset.subtypes, config.subtype_loss_weight
        )
        if head
        else None,
    )
    # The head is what training needs; the subtype threshold is chosen after it (0.5 here).
    subtype = SubtypeQuestion(head, 0.5) if head else None
    run = Run(
        config.schedule(), model, train_loader, val_loader, criterion.to(device), device, [],
        subtype=subtype,
    )  # fmt: skip

    rates = fine_tune(run, out.with_suffix(".lr_find.png"))
    model.load_state_dict(run.best.state_dict)
    lr_find_info = rates.pop("lr_find")
    extra_args = rates | {
        "lr_find_plot": lr_find_info["plot"] if lr_find_info else None,
        **{name: str(path.resolve()) for name, path in manifests.items()},
        "train_manifest_hash": manifest_hash(train),
        "val_manifest_hash": manifest_hash(val),
        "test_manifest_hash": manifest_hash(test) if test else None,
    }
    extra_metrics = {
        "n_train": len(train),
        "n_test": len(test),
        "lr_find": lr_find_info,
        "history": [asdict(r) for r in run.history],
    }
    subtype, subtype_metrics = _subtype_answer(
        head, run.best, init[1] if init else None, extra_args
    )
    if subtype_metrics is not None:
        extra_metrics["subtype"] = subtype_metrics
    return _write_checkpoint(
        config, model, pre, run.best, items, extra_args, extra_metrics, subtype
    )


def subtype_loss_weights(subtypes: list[int], scale: float = 1.0) -> torch.Tensor:
    """(viral, bacterial) weights, each subtype contributing equally (as class_weights), times
    `scale`: the subtype question's share of the loss against the pneumonia question's."""
    return scale * class_weights([s for s in subtypes if s != NO_SUBTYPE], 2)


def _subtype_answer(
    head: str | None, best: Best, init: CheckpointMeta | None, extra_args: dict
) -> tuple[SubtypeQuestion | None, dict | None]:
    """The subtype question the checkpoint records and its validation figures.

    The threshold on P(bacterial | pneumonia) maximises Youden's J (sensitivity + specificity
    - 1) on the validation pneumonia images of known subtype: both errors matter (antibiotics
    withheld, antibiotics given for nothing), as Kermany et al. report them side by side.
    A validation split without both subtypes (retraining on reviews that rarely record one)
    keeps the threshold of the model it continues."""
    if head is None:
        return None, None
    y, p = best.val.subtype_pairs()
    if len(set(y)) == 2:
        threshold, rule = youden_threshold(y, p), "youden"
    elif init is not None and init.subtype is not None:
        threshold, rule = init.subtype.threshold, "inherited"
    else:  # _subtype_head made sure validation holds both subtypes
        raise ValueError("validation holds no bacterial and viral images to choose on")
    sensitivity, specificity = sensitivity_specificity(y, p, threshold) if y else (None, None)
    figures = {
        "val_auc": roc_auc(y, p) if len(set(y)) == 2 else None,
        "val_sensitivity": sensitivity,  # bacterial called bacterial
        "val_specificity": specificity,  # viral called viral
        "n_val": {SUBTYPES[0]: sum(y), SUBTYPES[1]: len(y) - sum(y)},
        "threshold_rule": {
            "rule": rule,
            "images": extra_args["val_manifest"],
            "manifest_hash": extra_args["val_manifest_hash"],
            "n": len(y),
        },
    }
    return SubtypeQuestion(head, threshold), figures


def _write_checkpoint(
    config: TrainConfig,
    model: nn.Module,
    pre: Preprocessing,
    best: Best,
    items: list[Item],
    extra_args: dict,
    extra_metrics: dict,
    subtype: SubtypeQuestion | None = None,
) -> Path:
    y_val, p_val = best.val.y_true, best.val.p
    threshold = choose_threshold(y_val, p_val, min_sensitivity=config.min_sensitivity)
    sensitivity, specificity = sensitivity_specificity(y_val, p_val, threshold)
    metrics = {
        "val_auc": best.auc,
        "val_sensitivity": sensitivity,
        "val_specificity": specificity,
        "n_val": len(y_val),
        "best_epoch": best.epoch,
        # Which rule chose the threshold, on which images: the gate may then judge on others.
        "threshold_rule": {
            "rule": "sensitivity",
            "target": config.min_sensitivity,
            "images": extra_args["val_manifest"],
            "manifest_hash": extra_args["val_manifest_hash"],
            "n": len(y_val),
        },
        **extra_metrics,
    }
    meta = CheckpointMeta(
        arch=config.arch,
        class_names=CLASS_NAMES,
        positive_class=POSITIVE_CLASS,
        preprocessing=pre,
        threshold=threshold,
        metrics=metrics,
        train_args=config.to_dict() | extra_args,
        data_hash=manifest_hash(items),
        created_at=utc_now(),
        subtype=subtype,
    )
    out = config.out
    save_checkpoint(out, model, meta)
    print(
        f"best epoch {best.epoch}: val_auc {best.auc:.4f}, threshold {threshold:.4f} -> "
        f"sensitivity {sensitivity:.3f} specificity {specificity:.3f}; wrote {out}",
        flush=True,
    )
    if subtype is not None:
        figures = extra_metrics["subtype"]
        auc = figures["val_auc"]
        print(
            f"subtype ({subtype.head}): val_auc {'-' if auc is None else f'{auc:.4f}'}, "
            f"threshold {subtype.threshold:.4f} ({figures['threshold_rule']['rule']})",
            flush=True,
        )
    return out


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The TrainConfig of a command line (sys.argv when None)."""
    return TrainConfig.from_args(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    try:
        main(parse_config())
    except PretrainedWeightsUnavailable as exc:  # an expected situation, not a bug: no traceback
        raise SystemExit(f"error: {exc}") from None
