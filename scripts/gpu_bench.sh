#!/usr/bin/env bash
# The benchmark on the lent GPU machine (H200): ViT-B/16, bf16 autocast, batch 64, every section.
# Run from the repository root through the device tool, e.g.
#   run(command="bash scripts/gpu_bench.sh", carry=[".whl"], timeout_s=300)
# It installs nothing from the internet: the image's python3 (torch, torchvision, numpy, matplotlib) is
# used as is; a carried timm wheel in .whl/ (timm-1.0.31, the project's pin) is installed with
# --no-index --no-deps when present. Results go to $OUT/bench_gpu/ (bench.json, bench.md, scaling.png,
# log.txt); the last lines print images/s and the share of the bf16 peak the forward pass reaches.
# Budget: the benchmark is stopped after BENCH_TIMEOUT seconds (default 210); every finished section
# is already written, so a stop loses only the section in flight.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR="${OUT:-out}/bench_gpu"
PEAK_TFLOPS=${PEAK_TFLOPS:-790}   # dense bf16 matrix rate measured on this machine kind (KINDS.md)
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

shopt -s nullglob
wheels=(.whl/timm-*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
  "$PY" -m pip install -q --no-index --no-deps --disable-pip-version-check "${wheels[@]}" \
    || echo "warning: the carried timm wheel did not install; using the image's timm"
fi
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv 2>/dev/null || true
"$PY" -c "import torch, timm; print('torch', torch.__version__, '| timm', timm.__version__, '|',
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA')" || exit 3

# BENCH_DEVICE / BENCH_EXTRA only for a dry run elsewhere (e.g. BENCH_DEVICE=cpu BENCH_EXTRA=--quick).
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-210}" "$PY" -m toast_core bench --device "${BENCH_DEVICE:-cuda}" --dtype bf16 \
  --backbone vit_base_patch16_224 --batch 64 --reps 10 --warmup 2 --train-reps 5 \
  --scaling-reps 5 --sizes 224,336,448 --batches 1,8,32,64 --peer-max-mib 16384 --profile \
  --peak-tflops "$PEAK_TFLOPS" --out "$OUT_DIR" ${BENCH_EXTRA:-} 2>&1 | tee "$OUT_DIR/log.txt"
rc=${PIPESTATUS[0]}

"$PY" - "$OUT_DIR/bench.json" <<'PYEOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    sys.exit(f"no results: {e}")
for rec in r["sections"].get("record", []):
    t = rec["times"]["plain"]["median_ms"]
    print(f"HEADLINE {rec['backbone']} {r['dtype']} batch {rec['batch']} on {r['machine'].get('gpu')}: "
          f"{rec['images_per_s_plain']:.0f} images/s (forward {t:.2f} ms), "
          f"{rec['achieved_tflops']:.1f} TFLOP/s = {100 * rec.get('peak_share', float('nan')):.1f} % of "
          f"{r['config']['peak_tflops']} TFLOP/s; recording overhead {rec.get('overhead_cls', float('nan')):.3f}x "
          f"(CLS maps), {rec['overhead']:.3f}x (+ token norms)")
for t in r.get("targets", []):
    print(f"TARGET {t['target']}: {t['value'] if t['value'] is None else round(t['value'], 3)} "
          f"{t['direction']} {t['limit']} -> {t['met']}")
PYEOF
exit $rc
