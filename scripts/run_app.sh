#!/usr/bin/env bash
# Set up a fresh clone, build the default models once (cached in $TOAST_HOME, default
# ~/.cache/toast_core), and start the app on http://127.0.0.1:8501 (no usage statistics are sent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m toast_core prepare-demo
exec .venv/bin/python -m streamlit run app/main.py \
  --server.headless true --server.address 127.0.0.1 --browser.gatherUsageStats false "$@"
