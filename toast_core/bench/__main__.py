"""The RSS child of the memory cross-check: ``python -m toast_core.bench --rss-child '<json>'``."""
import sys

from .rss import _rss_child

if len(sys.argv) == 3 and sys.argv[1] == "--rss-child":
    _rss_child(sys.argv[2])
else:
    print("internal entry point; use `python -m toast_core bench`", file=sys.stderr)
    sys.exit(2)
