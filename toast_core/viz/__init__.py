"""Pictures without torch: overlays, colour scales and figure grids (:mod:`.render`), figure export to
PDF/SVG/PNG and bundles (:mod:`.export`)."""
