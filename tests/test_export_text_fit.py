"""A figure's title and caption stay inside the figure for any rows/columns/font size (issue 20: a
one-image, columns = images figure cut both at its edges)."""
import itertools

import numpy as np

from toast_core.viz.export import FigureSpec, build_figure


def test_title_and_caption_inside_the_figure():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    kind = "CLS attention · layer 12/12 · head mean · top-down pass · layer 12/12"
    title = "Where each transfer method looks on one image of the default task"
    for n_rows, n_cols, fs in itertools.product([1, 4], [1, 2], [4, 8, 16]):
        spec = FigureSpec(panels=[[(image, rng.random((6, 8)))] * n_cols for _ in range(n_rows)], map_kind=kind,
                          row_labels=[f"method {i}" for i in range(n_rows)], col_labels=["00_circle"] * n_cols,
                          title=title, font_size=fs)
        fig = build_figure(spec)
        renderer = fig.canvas.get_renderer()
        for text in (fig._suptitle, fig._supxlabel):
            box = text.get_window_extent(renderer)
            assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, \
                (n_rows, n_cols, fs, text.get_text(), box, fig.bbox)
        assert fig._suptitle.get_text().replace("\n", " ") == title  # wrapped, not cut
