#!/usr/bin/env bash
# Set up a fresh clone and run the whole test suite (CI runs exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# Browser tests need Debian's chromium, figure tests pdftoppm. Install them where we can (root + apt);
# elsewhere the browser tests are skipped and the reason is printed.
if ! command -v chromium >/dev/null 2>&1 || ! command -v pdftoppm >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium poppler-utils >/dev/null) \
      || echo "NOTE: could not install chromium/poppler-utils; browser tests will be skipped"
  else
    echo "NOTE: chromium or pdftoppm missing and apt-get unavailable; browser tests will be skipped"
  fi
fi
export TOAST_TEST_SESSION=1
exec .venv/bin/python -m pytest -q "$@"
