#!/usr/bin/env bash
# Set up a fresh clone, install what ships ready (DINOv2 backbone, demo task, six shipped checkpoints;
# cached in $TOAST_HOME, default ~/.cache/toast_core), start the app on http://127.0.0.1:8501 (no usage
# statistics are sent), and train what does not ship (full fine-tuning on a CPU) in a background process
# at lower CPU priority: the app shows its progress and adds the model when its checkpoint is complete.
# A background training already running is not started twice; a stopped one resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m toast_core prepare-demo --background
exec .venv/bin/python -m streamlit run app/main.py \
  --server.headless true --server.address 127.0.0.1 --browser.gatherUsageStats false "$@"
