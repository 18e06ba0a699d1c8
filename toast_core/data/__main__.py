"""``python -m toast_core.data``: generate the demo task and/or its gallery samples."""
from .demo_samples import main

raise SystemExit(main())
