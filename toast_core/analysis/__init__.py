"""Batch analysis: does each method's attention land on the task object? Tidy rows, summaries, plots.

One recorded forward pass per batch and model gives every layer (and both TOAST passes); the
localisation metrics of :mod:`toast_core.analysis.metrics` are then evaluated for all layers × map kinds of the
batch at once, on the patch grid, from per-image geometry computed once (mask coverage per patch,
pixel counts per patch, where a peak would count as a pointing-game hit). The vectorised values equal
the per-map functions of :mod:`toast_core.analysis.metrics` (``tests/test_analysis.py`` checks this).

Example::

    from toast_core.analysis import run_analysis, summarise, plot_metric_vs_layer
    rows = run_analysis({"linear": m1, "toast": m2}, dataset, layers="all", kinds=("cls", "rollout"))
    table = summarise(rows)                      # means with 95% bootstrap CIs per group
    fig = plot_metric_vs_layer(rows, "energy_target", kind="cls")

A *dataset* is any sequence whose items are dicts with ``image`` (3, H, W) normalised float tensor,
``label`` int, ``target_mask`` (H, W) bool, and optionally ``distractor_mask`` (H, W) bool,
``parts`` (K, 3) float (x, y, visible) in pixels of the (resized) image, and ``image_id`` (str or int;
default ``index``, else the position). :class:`~toast_core.data.MaskedImageDataset` (the default task),
:class:`~toast_core.data.cub.CUBDataset` and the folder reader fit; :func:`load_dataset` picks one.

Row columns (one row per image × method × pass × layer × map kind) are listed in :data:`COLUMNS`;
layers are 0-based block indices; ``pass`` is ``main`` or TOAST's ``bottom-up`` / ``top-down``.
``prob`` is the probability of the predicted class, ``prob_label`` that of the true label;
``target_area`` / ``distractor_area`` are the shares of the image the objects cover (what a uniform map's
energies would be: the chance level).
TOAST models add ``gate_energy_target`` / ``gate_energy_distractors`` (the share of the token-selection
map s = clamp(cos(x_i, ξ), 0, 1) on the target / distractors; per image) and ``td_ratio`` (the size of
the top-down term against what it is added to: mean_i |W_v·td_l,i| over mean_i |v_l,i|, the values of
block l in the top-down pass, with ``td_scale`` applied); NaN for other methods. (Until 2026-12 it
divided |td_l| by the residual-stream tokens, 1–10 in DINOv2, while td is added beside norm1(x), 18–40.)

The package: ``options`` (kinds, columns, specs), ``geometry`` (per-image geometry, vectorised metrics,
rollout), ``datasets``, ``engine`` (:func:`run_analysis`), ``tables`` (CSV, summaries), ``plots``
(figures, :func:`write_report`) and ``faithfulness`` (:func:`run_faithfulness`: every map kind of every
method ranked by deletion / insertion AUC, pointing game and energy; :func:`ranking_table`).
"""
from .datasets import _Limited, load_dataset, model_input_size  # noqa: F401 (private names: tests, bench)
from .engine import _records, run_analysis
from .geometry import _stack_geometry, batch_map_metrics, image_geometry, rollout_all_layers
from .options import (ANALYSIS_KINDS, COLUMNS, METRICS, default_tolerance, parse_kinds, parse_layers,
                      resolve_device)
from .faithfulness import ranking_table, run_faithfulness
from .plots import (plot_accuracy_vs_energy, plot_faithfulness_ranking, plot_metric_vs_layer, save_figure,
                    write_report)
from .tables import (headline_table, layer_average, read_rows_csv, summarise, summary_markdown, write_rows_csv,
                     write_table_csv)

__all__ = ["COLUMNS", "METRICS", "ANALYSIS_KINDS", "parse_layers", "parse_kinds", "resolve_device",
           "default_tolerance", "image_geometry", "batch_map_metrics", "rollout_all_layers", "model_input_size",
           "load_dataset", "run_analysis", "write_rows_csv", "write_table_csv", "read_rows_csv", "summarise",
           "layer_average", "headline_table", "summary_markdown", "plot_metric_vs_layer",
           "plot_accuracy_vs_energy", "save_figure", "write_report", "run_faithfulness", "ranking_table",
           "plot_faithfulness_ranking"]
