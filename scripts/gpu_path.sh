#!/usr/bin/env bash
# The GPU path end to end, on a machine with a CUDA card (the project never needs one; the
# tests check the device choice on the CPU). Run it where a card is lent:
#
#     bash scripts/gpu_path.sh [OUT_DIR]      # PYTHON=... to pick the interpreter
#
# 1. ml.train with --device auto trains on the card in mixed precision (bf16 autocast where
#    the card has it, else fp16 with a gradient scaler): a ResNet34 from random weights on
#    synthetic X-rays, one frozen and one unfrozen epoch, and the log must say so;
# 2. its checkpoint predicts on the card (Predictor on cuda, half precision) within 0.02 of
#    the CPU's probabilities, with a heatmap;
# 3. the worker's own GPU test: a prediction task on the card, in half precision, with its
#    heatmap (tests/diagnosis/test_runtimes.py, skipped on machines without a card).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${1:-${OUT:-/tmp/gpu-path}}
mkdir -p "$OUT"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA card here'; \
print('card:', torch.cuda.get_device_name(), '| bf16:', torch.cuda.is_bf16_supported())"

"$PY" -c "from tests.synthetic import write_dataset; write_dataset('$OUT/data', 60, size=128, seed=1)"
start=$(date +%s)
"$PY" -m ml.train --data "$OUT/data" --arch resnet34 --pretrained none --freeze-epochs 1 \
  --epochs 1 --img-size 128 --device auto --out "$OUT/gpu.pt" | tee "$OUT/train.log"
echo "training: $(( $(date +%s) - start )) s"
grep -E "^Training on cuda(:[0-9]+)? in (bf16|fp16)$" "$OUT/train.log"

"$PY" - "$OUT" <<'PY'
import sys
from pathlib import Path

from ml.inference import Predictor

out = Path(sys.argv[1])
images = sorted((out / "data").rglob("*.jpeg"))[:16]
card = Predictor.from_checkpoint(out / "gpu.pt", device="cuda", precision="fp16")
cpu = Predictor.from_checkpoint(out / "gpu.pt")
worst = max(
    abs(a.probability - b.probability)
    for a, b in zip(card.predict_batch(images), cpu.predict_batch(images), strict=True)
)
(prediction, heatmap), *_ = card.explain_batch(images[:2])
print(f"predicted on {card.device} in {card.precision}: largest difference from the CPU "
      f"{worst:.4f}; heatmap {heatmap.size}")
assert worst <= 0.02 and heatmap.mode == "RGB"
PY

"$PY" -m pytest -q -p no:cacheprovider tests/diagnosis/test_runtimes.py -k "gpu" -rs
echo "GPU path: all steps passed ($OUT)"
