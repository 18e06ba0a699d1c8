"""Side-by-side comparison of transfer methods on one image: the library layer under the app's pages
and the ``figure`` command. Pure over the core API (no Streamlit import), thread-safe, cached.

A :class:`ModelEntry` is a loaded model plus what the pages show about it. Every model runs **once per
image** (and per steering setting): :func:`record` keeps one :class:`Recording` per
``(model key, image id, td_scale, ξ patch)`` in a small LRU, and every layer, head, pass and map kind
is derived from it. Recordings read the prefix tokens' query rows beside fused attention; only rollout
asks for full matrices (``record(..., full=True)``), kept head-averaged (1/H of the memory).
:func:`record_all` runs several models side by side (one thread per free core on a CPU).
Models are never modified: recording is thread-local, inference runs under ``torch.inference_mode``
(Integrated Gradients needs gradients w.r.t. the input only), and a loaded model's parameters are
frozen before it is shared.

Example::

    entries = [load_entry(f"tiny:{m}") for m in available_methods()]
    panels = compare(entries, image, kind="cls", layer=None)          # one Panel per model, last layer
    diffs = differences(panels, reference="linear")                   # name -> (h, w)
    insp = inspect_toast(entries[-2], image, td_scale=0.5, xi_patch=(3, 4))

Layers are 0-based here (the pages and the CLI show them 1-based).

The package: :mod:`.entries` (loading models), :mod:`.images` (working copy, hashes, model input),
:mod:`.recordings` (one cached forward per model and image; maps derived from it), :mod:`.panels`
(the compare grid), :mod:`.inspector` (TOAST's two passes), :mod:`.figures` (paper figures).
"""
from ..cache import LRU  # noqa: F401 (was defined here)
from ..device import default_device, device_label  # noqa: F401 (the pages' device line)
from .entries import (TINY_SPEC, ModelEntry, checkpoint_entry, load_entry, parameter_digest, tiny_entry,
                      unique_names)
from .figures import figure_spec, model_provenance
from .images import DISPLAY_SIDE, WORKING_SIDE, display_array, image_id, preprocess, preprocessing, working_copy
from .inspector import ToastInspection, inspect_toast, stage1_table
from .panels import (HeadChoice, Panel, common_depth, common_heads, compare, differences, layer_strip,
                     model_layer)
from .recordings import (ATTRIBUTIONS, RECORDINGS, Recording, attribution, head_maps, map_of, needs_full, record,
                         record_all, record_workers, resolve_pass, strip_of, top_predictions)

__all__ = ["TINY_SPEC", "WORKING_SIDE", "DISPLAY_SIDE", "HeadChoice", "default_device", "device_label",
           "ModelEntry", "tiny_entry", "checkpoint_entry", "load_entry", "unique_names", "parameter_digest",
           "working_copy", "image_id", "display_array", "preprocessing", "preprocess", "RECORDINGS",
           "ATTRIBUTIONS", "Recording", "record", "record_all", "record_workers", "needs_full", "resolve_pass", "map_of", "strip_of", "head_maps", "attribution",
           "top_predictions", "Panel", "common_depth", "common_heads", "model_layer", "compare", "differences",
           "layer_strip", "ToastInspection", "inspect_toast", "stage1_table", "model_provenance", "figure_spec"]
