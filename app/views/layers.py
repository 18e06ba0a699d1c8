"""Layers: for one image, every method's maps across all layers (small multiples, one row per method).

Colour scale (default *per layer*): one range per layer (column) over every shown method, so each
layer is readable (layer 1's CLS attention peaks far higher than the deeper layers' and set a shared
scale that left the others black) and methods stay comparable within a layer. *Shared*, *per method*
and *per panel* are options. Thumbnails show the patch grid as blocks (nearest upsampling), six per line.

Stable keys: ``strip-<method>`` (one container per model), ``layers-grid``, ``layers-scale`` (the
ranges in use, per layer); widgets ``keep-image``,
``keep-methods``, ``lay-kind``, ``lay-heads``, ``lay-pass``, ``lay-scale``, ``lay-cmap``, ``lay-alpha``,
``lay-width``.
"""
import numpy as np
import streamlit as st

from app import state, task, widgets
from toast_core import compare as cmp
from toast_core.attribution import EXPLANATIONS
from toast_core.maps import ATTENTION_KINDS, MAP_KINDS, describe_map
from toast_core.viz import render

SCALES = ["per layer", "shared", "per method", "per panel"]
PER_LINE = 6  # thumbnails per line: layer columns line up across methods

entries, failures, note = state.session_entries()
state.sidebar_status(note)
st.title("Layer by layer")
st.caption("Each row is one method, each thumbnail one layer. All maps come from one forward pass per model. "
           + widgets.NUMBERING)
state.untrained_notice(entries)
for key, msg in failures:
    st.error(f"Could not load {key}: {msg}")
if not entries:
    st.stop()

names = [e.name for e in entries]
with st.sidebar:
    image_label, image, image_key = state.image_picker()
    chosen = state.methods_multiselect(names)
    selected = [e for e in entries if e.name in chosen]
    kind = state.kind_select("lay-kind", per_layer=True)
    head = widgets.head_control("lay-heads", cmp.common_heads(selected or entries), allow_all=False) \
        if kind == "cls" else None
    pass_name = None
    if kind in ATTENTION_KINDS:
        pass_name = state.pass_select("lay-pass", selected)
    else:
        st.caption(f"**{MAP_KINDS[kind]}** per layer (predicted class): {EXPLANATIONS[kind]}")
    scale_mode = st.radio("Colour scale", SCALES, key="lay-scale",
                          help="per layer: one range per column over all methods (each layer readable, methods "
                               "comparable within a layer); shared: one range for every thumbnail; per method: "
                               "one per row; per panel: each thumbnail its own.")
    cmap = state.colormap_select("lay-cmap")
    alpha = state.opacity_slider("lay-alpha", 0.6)
    width = st.slider("Thumbnail width", 64, 320, 136, step=8, key="lay-width")

if not selected:
    st.info("Pick at least one method.")
    st.stop()

with state.model_work(kind) as (timer, step):
    strips = {}
    for i, e in enumerate(selected):
        if step is not None:  # gradient kinds take seconds per model on a CPU
            step(i, len(selected), e.name)
        strips[e.name] = cmp.layer_strip(e, image, kind=kind, head=head, pass_name=pass_name, image_key=image_key)

display = cmp.display_array(image, max_side=max(2 * width, 96))
all_maps = [m for s in strips.values() for m in s]
shared = render.color_scale(all_maps, mode="shared")[0]
depth = max(len(s) for s in strips.values())
per_layer = [render.color_scale([s[i] for s in strips.values() if i < len(s)], mode="shared")[0]
             for i in range(depth)]
head_txt = "" if kind != "cls" else (" · mean of heads" if head is None else f" · head {head + 1}")
with st.container(key="layers-task"):
    st.markdown(task.task_line(selected[0].class_names, all(e.trained for e in selected)) + "  \n"
                + task.truth_line(image_label).replace(", outlined (dashed) on the maps", ""))
st.subheader(MAP_KINDS[kind] + head_txt)
st.caption(f"{image_label} · colour scale: {scale_mode} · {timer.seconds:.2f} s")
with st.container(key="layers-scale"):
    if scale_mode == "per layer":
        st.caption("range per layer: " + " · ".join(f"L{i + 1} {lo:.3g}…{hi:.3g}" for i, (lo, hi) in enumerate(per_layer)))
    elif scale_mode == "shared":
        st.caption(f"range, all thumbnails: {shared[0]:.3g}…{shared[1]:.3g}")
grid = st.container(key="layers-grid")
for e in selected:
    strip = strips[e.name]
    if scale_mode == "per layer":
        ranges = per_layer[:len(strip)]
    elif scale_mode == "shared":
        ranges = [shared] * len(strip)
    elif scale_mode == "per method":
        ranges = render.color_scale(list(strip), mode="shared")
    else:
        ranges = render.color_scale(list(strip), mode="per-panel")
    thumbs = [render.overlay(display, m, lo, hi, cmap, alpha, upsample="nearest") for m, (lo, hi) in zip(strip, ranges)]
    with grid.container(key=f"strip-{state.slug(e.name)}", border=True):
        rec = cmp.record(e, image, image_key=image_key)
        pass_used = cmp.resolve_pass(rec, pass_name)  # attribution kinds: the final pass (pass_name None)
        label = describe_map(kind, None, None, pass_used if len(rec.passes) > 1 else None)
        label = label.replace("head mean", "mean of heads" if head is None else f"head {head + 1}")
        preds = cmp.top_predictions(rec.probs, e.class_names, 1)
        st.markdown(f"**{e.name}**" + ("" if e.trained else " · *untrained*") +
                    f" — {label} · predicts {state.predictions_text(preds)}")
        for start in range(0, len(thumbs), PER_LINE):
            st.image(thumbs[start:start + PER_LINE], caption=[f"L{i + 1}" for i in range(start, min(len(thumbs), start + PER_LINE))],
                     width=width)
        peak = np.array([m.max() for m in strip])
        st.caption("peak per layer: " + " ".join(f"{v:.2g}" for v in peak))
