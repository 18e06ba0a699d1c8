"""``python -m toast_core.background status|stop`` — the command-line entry of the background trainer,
which lives in :mod:`toast_core.demo.background`."""
import sys

from .demo.background import main

if __name__ == "__main__":
    sys.exit(main())
