"""The training engine: loss, one epoch, validation, one-cycle phases, fastai's fine_tune.

Model- and data-agnostic: `ml.train` builds the model, the loaders and a `Schedule`, and
calls `fine_tune`; site adaptation and retraining reach it through `ml.train` too.

    run = Run(schedule, model, train_loader, val_loader, criterion, device, history=[])
    rates = fine_tune(run, lr_find_plot=Path("var/models/m.lr_find.png"))
    model.load_state_dict(run.best.state_dict)       # the epoch with the best validation AUC

A process that must give way to other work (a training worker sharing the cores with a
prediction worker) wraps training in `between_batches(callback)`: every training, LR finder
and validation batch then calls it when done, and it may wait there.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ml.core import SubtypeQuestion
from ml.data import CLASS_NAMES, POSITIVE_CLASS
from ml.heads import NO_SUBTYPE, QuestionsLoss, answers
from ml.lr_find import lr_find, save_lr_plot
from ml.metrics import roc_auc
from ml.models import freeze, unfreeze

# What each batch calls when done (between_batches); None: nothing. Process-wide: the policy
# belongs to the process that trains, not to one run.
_between_batches: Callable[[], None] | None = None


@contextmanager
def between_batches(callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback` after every training, LR finder and validation batch inside."""
    global _between_batches
    previous, _between_batches = _between_batches, callback
    try:
        yield
    finally:
        _between_batches = previous


def batch_done() -> None:
    if _between_batches is not None:
        _between_batches()


def between_batches_callback() -> Callable[[], None] | None:
    """The callback batch_done() calls now (None outside between_batches)."""
    return _between_batches


@dataclass(frozen=True)
class Schedule:
    """How the two phases train: what ml.train's config resolves to for the engine."""

    arch: str
    freeze_epochs: int  # head (+ BatchNorm) only; 0 from scratch
    epochs: int  # all layers, with discriminative rates
    lr: float | None  # peak rate of the head; None: the LR finder's valley
    lr_mult: float  # the first group trains at lr / lr_mult once unfrozen
    weight_decay: float
    lr_find_start: float = 1e-7
    lr_find_end: float = 10.0
    lr_find_iters: int = 100
    print_freq: int = 10


def training_device(name: str) -> torch.device:
    """`name` as a torch device; "auto" is the CUDA card when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def training_precision(device: torch.device) -> str:
    """The precision training runs in on `device`: mixed precision on a CUDA card (bf16
    autocast where the card has it, else fp16 with a gradient scaler), fp32 on the CPU
    (bf16 there helps only some CPUs, and then for inference: README, "Runtimes")."""
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: QuestionsLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    epoch: int,
    print_freq: int = 10,
    precision: str = "fp32",
) -> float:
    """One pass over (images, targets, weights, subtypes) batches, stepping the scheduler
    every batch; the forward pass and the loss under autocast at `precision` ("bf16" or
    "fp16", the latter with a gradient scaler; the weights and the optimizer stay fp32).
    Returns the mean loss."""
    model.train()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    total_loss, n_seen, start = 0.0, 0, time.perf_counter()
    for i, (images, targets, weights, subtypes) in enumerate(loader, start=1):
        images = images.to(device, memory_format=torch.channels_last)  # (B, 3, S, S)
        targets, weights = targets.to(device), weights.to(device)  # (B,), (B,)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(images)  # (B, C)
            loss = criterion(logits.float(), targets, weights, subtypes.to(device))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        batch_done()
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


@dataclass(frozen=True)
class Scores:
    """One pass over a validation loader, in loader order."""

    loss: float
    y_true: list[int]  # 1 = pneumonia
    p: list[float]  # P(pneumonia)
    subtypes: list[int]  # 1 bacterial, 0 viral, NO_SUBTYPE (normal, or subtype unknown)
    p_bacterial: list[float] | None  # P(bacterial | pneumonia); None for a binary model

    def subtype_pairs(self) -> tuple[list[int], list[float]]:
        """(1 = bacterial truth, P(bacterial | pneumonia)) of the images of known subtype."""
        if self.p_bacterial is None:
            return [], []
        known = [i for i, s in enumerate(self.subtypes) if s != NO_SUBTYPE]
        return [self.subtypes[i] for i in known], [self.p_bacterial[i] for i in known]

    def subtype_auc(self) -> float | None:
        """ROC AUC of bacterial vs viral on the pneumonia images of known subtype (None for a
        binary model; NaN when one subtype is missing)."""
        if self.p_bacterial is None:
            return None
        return roc_auc(*self.subtype_pairs())


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    device: torch.device,
    positive_index: int,
    subtype: SubtypeQuestion | None = None,
) -> Scores:
    """Loss and both answers over (images, targets, subtypes) batches."""
    model.eval()
    total_loss, y_true, scores, subtypes, bacterial = 0.0, [], [], [], []
    for images, targets, batch_subtypes in loader:
        images = images.to(device, memory_format=torch.channels_last)  # (B, 3, S, S)
        targets, batch_subtypes = targets.to(device), batch_subtypes.to(device)
        logits = model(images)  # (B, C)
        total_loss += criterion(logits, targets, None, batch_subtypes).item() * len(targets)
        p, p_bacterial = answers(logits, subtype=subtype, positive=positive_index)
        scores += p.tolist()
        y_true += (targets == positive_index).int().tolist()
        subtypes += batch_subtypes.tolist()
        if p_bacterial is not None:
            bacterial += p_bacterial.tolist()
        batch_done()
    loss = total_loss / max(len(y_true), 1)
    return Scores(loss, y_true, scores, subtypes, bacterial if subtype is not None else None)


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # counted across both phases, from 1
    phase: str  # "frozen" or "unfrozen"
    train_loss: float
    val_loss: float
    val_auc: float
    seconds: float
    val_subtype_auc: float | None = None  # bacterial vs viral, for a model with a subtype head


@dataclass(frozen=True)
class Best:
    epoch: int
    auc: float  # of the pneumonia question, which picks the epoch
    val: Scores
    state_dict: dict[str, torch.Tensor]


@dataclass
class Run:
    """What every epoch of both phases shares, and the best epoch so far."""

    schedule: Schedule
    model: nn.Module
    train_loader: DataLoader
    val_loader: DataLoader
    criterion: QuestionsLoss
    device: torch.device
    history: list[EpochResult]
    best: Best | None = None
    # The subtype question the model answers (its threshold is chosen after training; the
    # head is what matters here), or None for a binary model.
    subtype: SubtypeQuestion | None = None


def one_cycle(
    optimizer: torch.optim.Optimizer,
    max_lr: list[float],
    total_steps: int,
    pct_start: float,
    div: float,
) -> torch.optim.lr_scheduler.OneCycleLR:
    """torch's one-cycle schedule over `total_steps`, warming up for `pct_start` of them. torch
    divides by the warm-up's length minus one step, so a warm-up of exactly one step (4 steps
    at 0.25: a small site's adaptation) raised ZeroDivisionError; it is made two steps (none
    in a schedule of two, so that it still anneals)."""
    if math.isclose(pct_start * total_steps, 1.0):
        pct_start = 2 / total_steps if total_steps > 2 else 0.0
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start, div_factor=div
    )


def fit_one_cycle(
    run: Run,
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
    optimizer = torch.optim.AdamW(groups, weight_decay=run.schedule.weight_decay)
    scheduler = one_cycle(
        optimizer, [g["lr"] for g in groups], epochs * len(run.train_loader), pct_start, div
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
            run.schedule.print_freq,
            training_precision(run.device),
        )
        val = evaluate(
            run.model, run.val_loader, run.criterion, run.device, positive_index, run.subtype
        )
        auc, subtype_auc = roc_auc(val.y_true, val.p), val.subtype_auc()
        seconds = time.perf_counter() - start
        result = EpochResult(epoch, phase, train_loss, val.loss, auc, seconds, subtype_auc)
        run.history.append(result)
        subtype_text = "" if subtype_auc is None else f" val_subtype_auc {subtype_auc:.4f}"
        print(
            f"epoch {epoch} ({phase}) train_loss {train_loss:.4f} val_loss {val.loss:.4f} "
            f"val_auc {auc:.4f}{subtype_text} time {result.seconds:.0f}s",
            flush=True,
        )
        if run.best is None or better(auc, subtype_auc, run.best):
            state = copy.deepcopy(run.model.state_dict())
            run.best = Best(epoch, auc, val, state)


def better(auc: float, subtype_auc: float | None, best: Best) -> bool:
    """Whether an epoch beats the best so far. The pneumonia question picks the epoch: it is
    the one a missed call costs most on; among epochs equal on it (a saturated validation
    AUC), the subtype AUC decides. A NaN AUC (a one-class validation set) never compares
    greater: the first epoch stays."""
    if auc != best.auc:
        return auc > best.auc
    theirs = best.val.subtype_auc()
    return subtype_auc is not None and theirs is not None and subtype_auc > theirs


def class_weights(targets: list[int], n_classes: int) -> torch.Tensor:
    counts = Counter(targets)
    if any(counts[c] == 0 for c in range(n_classes)):
        raise ValueError(f"every class needs training images, got counts {dict(counts)}")
    return torch.tensor([len(targets) / (n_classes * counts[c]) for c in range(n_classes)])


def find_lr(run: Run, plot_path: Path) -> tuple[float, dict]:
    """Run the LR finder on the model as the first phase will train it; save the plot."""
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-7, weight_decay=run.schedule.weight_decay)

    def loss_fn(model: nn.Module, batch: tuple) -> torch.Tensor:
        images, targets, weights, subtypes = (t.to(run.device) for t in batch)
        images = images.to(memory_format=torch.channels_last)  # (B, 3, S, S)
        return run.criterion(model(images), targets, weights, subtypes)

    start = time.perf_counter()
    result = lr_find(
        run.model,
        run.train_loader,
        loss_fn,
        optimizer,
        start_lr=run.schedule.lr_find_start,
        end_lr=run.schedule.lr_find_end,
        num_iter=run.schedule.lr_find_iters,
        print_freq=run.schedule.print_freq,
        between=batch_done,
    )
    save_lr_plot(result, plot_path)
    print(
        f"lr_find: {len(result.lrs)} steps in {time.perf_counter() - start:.0f}s, valley "
        f"{result.valley:.2e} (used), steepest {result.steepest:.2e}; plot {plot_path}",
        flush=True,
    )
    info = {k: v for k, v in asdict(result).items() if k not in ("lrs", "losses")}
    return result.suggestion, info | {"plot": str(plot_path), "steps": len(result.lrs)}


def fine_tune(run: Run, lr_find_plot: Path) -> dict:
    """The two phases, preceded by the LR finder unless --lr is given. Returns what the
    checkpoint should remember about the rates: {"lr_used", "unfrozen_lrs", "lr_find"}."""
    s, model = run.schedule, run.model
    if s.freeze_epochs > 0:
        freeze(model, s.arch)
    lr, lr_find_info = s.lr, None
    if lr is None:  # measured on the model as the first phase will train it
        lr, lr_find_info = find_lr(run, lr_find_plot)
    head = [p for p in model.parameters() if p.requires_grad]
    fit_one_cycle(run, [{"params": head, "lr": lr}], s.freeze_epochs, phase="frozen")

    # After the head has trained, fastai halves the rate and starts the cycle higher (div 5):
    # the body only needs nudging. From scratch it is a plain fit_one_cycle (div 25).
    fine_tuning = s.freeze_epochs > 0
    groups = unfreeze(model, s.arch, lr / 2 if fine_tuning else lr, s.lr_mult)
    unfrozen_lrs = [g["lr"] for g in groups]  # the scheduler overwrites g["lr"] as it goes
    if fine_tuning:
        fit_one_cycle(run, groups, s.epochs, phase="unfrozen", div=5.0)
    else:
        fit_one_cycle(run, groups, s.epochs, phase="unfrozen", pct_start=0.25)
    return {"lr_used": lr, "unfrozen_lrs": unfrozen_lrs, "lr_find": lr_find_info}
