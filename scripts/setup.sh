#!/usr/bin/env bash
# Create .venv (once) and install the project's requirements into it.
#   bash scripts/setup.sh        runtime requirements (the app)
#   bash scripts/setup.sh dev    runtime + test requirements
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
req=requirements.txt
[ "${1:-}" = "dev" ] && req=requirements-dev.txt
stamp=".venv/.installed-$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)-${1:-app}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
  if [ "${1:-}" = "dev" ]; then
    # Test-only reference for the LRP rules (tests/test_attribution.py). Without its dependencies: its
    # zennit requirement refuses this Python, and the test loads only lxt's own rule files.
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps lxt==2.1
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  touch "$stamp"
fi
