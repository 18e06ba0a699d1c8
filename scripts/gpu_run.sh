#!/usr/bin/env bash
# One prepared run on the lent GPU machine (device tool): prepare-demo timing on CUDA, then the
# ViT-B/16 bf16 batch-64 benchmark. Carries: .whl (timm 1.0.31 wheel), .gpu (fp16 copy of the
# converted default backbone; see scripts/gpu_seed_cache.py). Results land in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" TOAST_HOME=/tmp/toast_home
python3 -m pip install -q --no-index --no-deps --disable-pip-version-check .whl/timm-*.whl || true
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name(0))"
python3 scripts/gpu_seed_cache.py .gpu/dinov2_fp16.safetensors
start=$(date +%s)
timeout "${DEMO_TIMEOUT:-170}" python3 -m toast_core prepare-demo --device cuda --quiet 2>&1 | tail -40 | tee "$OUT/prepare_log.txt"
echo "prepare-demo wall seconds: $(( $(date +%s) - start ))" | tee -a "$OUT/prepare_log.txt"
cp /tmp/toast_home/demo/results.json /tmp/toast_home/demo/results.md "$OUT/" 2>/dev/null
BENCH_TIMEOUT=${BENCH_TIMEOUT:-110} BENCH_EXTRA="--sections record,toast,train,peer --reps 10 --train-reps 5" \
  bash scripts/gpu_bench.sh 2>&1 | tail -30
cp out/bench_gpu/bench.json out/bench_gpu/bench.md "$OUT/" 2>/dev/null || cp "$OUT"/bench_gpu/bench.* "$OUT/" 2>/dev/null
ls "$OUT"
