"""Compare: every selected method's map on one image, side by side, with its top predictions.

Stable element keys (CSS class ``st-key-<key>`` in the browser): ``panel-<method>`` (one bordered
container per model), ``fig-<method>`` (its plotly map), ``heads-<method>`` (per-head grid),
``preds-<method>``, ``compare-grid``, ``compare-colorbar`` (the shared colour bar), ``compare-timing``,
``pending-<method>`` (a demo model still training in the background, or not trained yet); widgets ``upload``, ``keep-image``,
``keep-methods``, ``cmp-kind``, ``cmp-layer``, ``cmp-heads``, ``cmp-scale``, ``cmp-cmap``,
``cmp-alpha``, ``cmp-diff``, ``cmp-reference``.
"""
import html
import time

import streamlit as st

from app import state, task, widgets
from toast_core import compare as cmp
from toast_core.attribution import EXPLANATIONS, SIGNED_KINDS
from toast_core.maps import ATTENTION_KINDS, MAP_KINDS
from toast_core.viz import render

#: a map's width in px per "Map size" choice; every card has a fixed width (map + its padding) and the
#: grid wraps them to the window, so a map is never squeezed or cut at any width
MAP_SIZES = {"small": 144, "medium": 176, "large": 240, "x-large": 320}
CARD_PAD = 34  # px: a bordered container's padding and border, both sides
HEADS_PER_LINE = 3


def colorbar(lo: float, hi: float, cmap: str, label: str, key: str) -> None:
    """One thin colour bar for every panel (shared scale): the maps keep the card's whole width."""
    with st.container(key=key):
        st.markdown(
            f'<div style="display:flex;align-items:center;gap:0.6rem;font-size:0.8rem;max-width:40rem">'
            f'<span>{html.escape(label)}</span><span class="cbar-lo">{lo:.3g}</span>'
            f'<div style="flex:1;height:0.6rem;border-radius:2px;background:{render.css_gradient(cmap)}"></div>'
            f'<span class="cbar-hi">{hi:.3g}</span></div>', unsafe_allow_html=True)


def map_height(shape: tuple[int, int], width: int) -> int:
    """Chart height for a map ``width`` px wide that shows the whole image at its aspect ratio
    (very tall images are capped at 1.6x the width; the plot area then narrows, keeping the aspect)."""
    return int(round(min(1.6 * width, width * shape[0] / shape[1])))


page_start = time.perf_counter()

entries, failures, note = state.session_entries()
state.sidebar_status(note)
st.title("Where does each method look?")
st.caption("Every transfer method's attention (or attribution) on the same image, on one colour scale. "
           "Hover a map to read a patch's value. " + widgets.NUMBERING)
state.untrained_notice(entries)
for key, msg in failures:
    st.error(f"Could not load {key}: {msg}")
if not entries:
    st.error("No models could be loaded. See the Models page.")
    st.stop()

top = st.columns([2, 2, 1])
with top[0]:
    state.upload_widget()
with top[1]:
    image_label, image, image_key = state.image_picker()
    with st.expander("Gallery"):
        items = state.gallery()
        st.image([state.gallery_image(p)[0] for _, p in items], caption=[lbl for lbl, _ in items], width=88)
with top[2]:
    st.image(image, caption=f"{image.size[0]}×{image.size[1]}", width=120)
truth = task.gallery_truth(image_label)
with st.container(key="compare-task"):
    st.markdown(task.task_line(entries[0].class_names, all(e.trained for e in entries)) + "  \n"
                + task.truth_line(image_label))
    far_slot = st.empty()  # filled after the maps are drawn: the first upload measures the task's images once

names = [e.name for e in entries]
with st.sidebar:
    chosen = state.methods_multiselect(names)
    selected = [e for e in entries if e.name in chosen]
    if not selected:
        st.info("Pick at least one method.")
        st.stop()
    kind = state.kind_select("cmp-kind")
    layer, head, pass_name = None, None, None
    if kind in ATTENTION_KINDS:
        layer = state.layer_slider("cmp-layer", cmp.common_depth(selected))
        if kind == "cls":
            head = widgets.head_control("cmp-heads", cmp.common_heads(selected))
        pass_name = state.pass_select("cmp-pass", selected)
    elif kind == "integrated_gradients":
        ig_steps = st.slider("IG steps", 4, 64, 8, step=4, key="cmp-ig-steps",
                             help="Integration steps (captum's n_steps); more is smoother and slower. 8 by default: "
                                  "about half the time of 16, and its maps correlated ≥ 0.98 with 32 steps' on the "
                                  "demo models.")
        st.toggle("Signed", key="cmp-ig-signed",
                  help="Keep the sign: red where the pixels raise the class's score against a black "
                       "(mean) image, blue where they lower it. Off: |attribution|.")
    else:
        st.caption(f"**{MAP_KINDS[kind]}**: {EXPLANATIONS[kind]}")
    target = None
    if kind not in ATTENTION_KINDS:  # which class the gradient explains
        classes = [c for c in selected[0].class_names if all(c in e.class_names for e in selected)]
        choice = st.selectbox("Explain class", ["predicted"] + classes, key="cmp-target",
                              help="The class whose score the map explains: each model's own prediction, or one "
                                   "class for every model (e.g. the true label).")
        target = None if choice == "predicted" else choice
    ig_signed = kind == "integrated_gradients" and bool(st.session_state.get("cmp-ig-signed"))
    scale_mode = st.radio("Colour scale", ["shared", "per-panel"], key="cmp-scale", horizontal=True)
    diff = st.toggle("Difference view", key="cmp-diff", help="Each method's map minus the reference's (signed).")
    reference = st.selectbox("Reference", [e.name for e in selected], key="cmp-reference", disabled=not diff)
    diff = diff and len(selected) > 1
    signed = diff or kind in SIGNED_KINDS or ig_signed  # differences, signed attributions: diverging, symmetric
    cmap = widgets.colormap_select("cmp-cmap", signed, state.COLORMAPS)
    alpha = state.opacity_slider("cmp-alpha")
    size = st.select_slider("Map size", list(MAP_SIZES), value="medium", key="keep-cmp-size")
    top_k = st.number_input("Top predictions", 1, 5, 3, key="cmp-topk")

# gradient-based kinds take seconds per model on a CPU: a progress bar says which model is running
with state.model_work(kind) as (timer, step):
    panels = cmp.compare(selected, image, kind=kind, layer=layer, head=head, pass_name=pass_name,
                         image_key=image_key, top_k=int(top_k),
                         ig_steps=int(st.session_state.get("cmp-ig-steps", 8)),
                         progress=step, target=target, signed=ig_signed)

maps = {p.name: p.map for p in panels}
if diff:  # the reference's own difference is all zero: it gets no panel
    maps = {n: m for n, m in cmp.differences(panels, reference).items() if n != reference}
    panels = [p for p in panels if p.name != reference]
ranges = render.color_scale(list(maps.values()), mode=scale_mode, signed=signed)
all_heads = [h for p in panels if p.heads is not None and not diff for h in p.heads]
heads_range = render.color_scale(all_heads, mode="shared")[0] if all_heads else None
display = cmp.display_array(image)
map_w = MAP_SIZES[size]
map_h = map_height(display.shape[:2], map_w)

kind_line = panels[0].label.split(" · ")[0]
st.subheader(f"{kind_line}" + (f" — difference vs {reference}" if diff else ""))
if (kind in SIGNED_KINDS or ig_signed) and not diff:
    st.caption(f"Signed map: red patches support {'the predicted class' if target is None else target}, blue ones "
               "speak against it (colour scale symmetric around 0).")
if diff:
    st.caption(f"Each panel: the method's map minus **{reference}**'s (signed: red where the method puts more "
               "weight, blue where less).")
shared_bar = scale_mode == "shared"
if shared_bar:
    colorbar(ranges[0][0], ranges[0][1], cmap, "colour scale, all panels:", "compare-colorbar")
if heads_range is not None and shared_bar:
    colorbar(heads_range[0], heads_range[1], cmap, "single heads (own scale):", "compare-heads-colorbar")
pending = state.pending_demo_methods()
grid = st.container(key="compare-grid", horizontal=True, gap="small")
for p, (lo, hi) in zip(panels, ranges):
    s = state.slug(p.name)
    width = (2 * map_w if p.heads is not None and not diff else map_w) + CARD_PAD
    with grid.container(key=f"panel-{s}", border=True, width=width):
        st.markdown(f"**{p.name}**" + ("" if p.trained else " · *untrained*"))
        fig = render.heatmap_figure(display, maps[p.name], lo, hi, cmap, alpha)
        fig.update_layout(height=map_h, width=map_w, margin={"l": 0, "r": 0, "t": 0, "b": 0})
        fig.update_traces(showscale=False, selector={"type": "heatmap"})
        task.outline_target(fig, truth, display.shape[:2])
        st.plotly_chart(fig, key=f"fig-{s}", width=map_w, config={"displayModeBar": False})
        if p.heads is not None and not diff:
            hlo, hhi = heads_range if shared_bar else render.color_scale(list(p.heads), mode="shared")[0]
            thumb = (2 * map_w - (HEADS_PER_LINE - 1) * 24) // HEADS_PER_LINE  # st.image spaces images ~1rem
            small = cmp.display_array(image, max(2 * thumb, 96))
            with st.container(key=f"heads-{s}"):
                st.image([render.overlay(small, h, hlo, hhi, cmap, alpha, upsample="nearest") for h in p.heads],
                         caption=[f"head {i + 1}" for i in range(len(p.heads))], width=thumb)
        label = p.label.replace("head mean", "mean of heads") + (f" · minus {reference}" if diff else "")
        st.caption(label + ("" if shared_bar else f" · range {lo:.3g}…{hi:.3g}"))
        with st.container(key=f"preds-{s}"):
            st.caption(state.predictions_text(p.predictions))
for m in pending:
    with grid.container(key=f"pending-{state.slug(m)}", border=True, width=map_w + CARD_PAD):
        st.markdown(f"**{m}** · *not in this comparison yet*")
        state.background_progress(f"panel-{state.slug(m)}", m)

st.caption(f"{len(panels)} models · computed in {timer.seconds:.2f} s on {cmp.device_label(state.device())} "
           "(recordings are cached per model and image)", help=None)
st.container(key="compare-timing").caption(
    f"compute_seconds={timer.seconds:.3f} page_seconds={time.perf_counter() - page_start:.3f}")
with far_slot.container():
    task.far_notice(entries, image_label, image, image_key)
