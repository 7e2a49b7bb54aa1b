"""Training on a CUDA card runs in mixed precision; on the CPU in fp32. No card here: the
choice of device and precision is checked, and the autocast path runs on the CPU (torch has
bf16 and fp16 autocast there too); scripts/gpu_path.sh runs it on a card."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ml import engine
from ml.heads import NO_SUBTYPE, QuestionsLoss


def batches(n: int, size: int = 8):
    generator = torch.Generator().manual_seed(0)
    for _ in range(n):
        images = torch.randn(size, 3, 8, 8, generator=generator)
        targets = (images.mean(dim=(1, 2, 3)) > 0).long()  # learnable
        yield images, targets, torch.ones(size), torch.full((size,), NO_SUBTYPE)


def test_auto_is_the_card_when_there_is_one_else_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine.training_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert engine.training_device("auto") == torch.device("cuda")
    assert engine.training_device("cpu") == torch.device("cpu")


def test_a_card_trains_in_bf16_where_it_has_it_else_fp16_and_the_cpu_in_fp32(monkeypatch):
    assert engine.training_precision(torch.device("cpu")) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert engine.training_precision(torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert engine.training_precision(torch.device("cuda", 1)) == "fp16"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_learns_as_fp32_does_and_keeps_fp32_weights(precision):
    losses = {}
    for mode in ("fp32", precision):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        seen = set()
        model[0].register_forward_hook(lambda m, i, out, seen=seen: seen.add(out.dtype))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        first = engine.train_one_epoch(model, list(batches(20)), QuestionsLoss(torch.ones(2)),
                                       optimizer, scheduler, torch.device("cpu"), epoch=1,
                                       print_freq=0, precision=mode)  # fmt: skip
        last = engine.train_one_epoch(model, list(batches(20)), QuestionsLoss(torch.ones(2)),
                                      optimizer, scheduler, torch.device("cpu"), epoch=2,
                                      print_freq=0, precision=mode)  # fmt: skip
        assert all(p.dtype == torch.float32 for p in model.parameters())
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]
        assert seen == {dtype}  # the forward pass ran in that precision
        losses[mode] = (first, last)
    assert losses[precision][1] < losses[precision][0]  # it learns
    assert losses[precision][1] == pytest.approx(losses["fp32"][1], rel=0.1, abs=0.02)
