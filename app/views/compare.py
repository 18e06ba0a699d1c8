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

from app import state
from toast_core import compare as cmp
from toast_core.viz import render
from toast_core.errors import ToastError

PER_ROW = 4
MAP_SIDE = 200  # px: a panel's inner width at 4 per row in a 1400 px window (sidebar open); the map spans it


def colorbar(lo: float, hi: float, cmap: str, label: str) -> None:
    """One thin colour bar for every panel (shared scale): the maps keep the card's whole width."""
    st.markdown(
        f'<div style="display:flex;align-items:center;gap:0.6rem;font-size:0.8rem;max-width:40rem">'
        f'<span>{html.escape(label)}</span><span class="cbar-lo">{lo:.3g}</span>'
        f'<div style="flex:1;height:0.6rem;border-radius:2px;background:{render.css_gradient(cmap)}"></div>'
        f'<span class="cbar-hi">{hi:.3g}</span></div>', unsafe_allow_html=True)

page_start = time.perf_counter()

entries, failures, note = state.session_entries()
state.sidebar_status(note)
st.title("Where does each method look?")
st.caption("Every transfer method's attention (or attribution) on the same image, on one colour scale. "
           "Hover a map to read a patch's value.")
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

names = [e.name for e in entries]
with st.sidebar:
    chosen = state.methods_multiselect(names)
    selected = [e for e in entries if e.name in chosen]
    if not selected:
        st.info("Pick at least one method.")
        st.stop()
    kind = state.kind_select("cmp-kind")
    layer, head, pass_name = None, None, None
    if kind != "integrated_gradients":
        layer = state.layer_slider("cmp-layer", cmp.common_depth(selected))
        if kind == "cls":
            head = state.head_control("cmp-heads", cmp.common_heads(selected))
        pass_name = state.pass_select("cmp-pass", selected)
    else:
        ig_steps = st.slider("IG steps", 4, 64, 16, step=4, key="cmp-ig-steps",
                             help="Integration steps (captum's n_steps); more is smoother and slower.")
    scale_mode = st.radio("Colour scale", ["shared", "per-panel"], key="cmp-scale", horizontal=True)
    cmap = state.colormap_select("cmp-cmap")
    alpha = state.opacity_slider("cmp-alpha")
    diff = st.toggle("Difference view", key="cmp-diff", help="Each method's map minus the reference's (signed).")
    reference = st.selectbox("Reference", [e.name for e in selected], key="cmp-reference", disabled=not diff)
    top_k = st.number_input("Top predictions", 1, 5, 3, key="cmp-topk")

try:
    with state.Timer() as timer, st.spinner("Running the models…"):
        panels = cmp.compare(selected, image, kind=kind, layer=layer, head=head, pass_name=pass_name,
                             image_key=image_key, top_k=int(top_k),
                             ig_steps=int(st.session_state.get("cmp-ig-steps", 16)))
except ToastError as e:
    st.error(str(e))
    st.stop()

maps = {p.name: p.map for p in panels}
signed = False
if diff:
    maps = cmp.differences(panels, reference)
    signed, cmap = True, "RdBu_r"
scale_maps = list(maps.values()) + [h for p in panels if p.heads is not None and not diff for h in p.heads]
ranges = render.color_scale(scale_maps, mode=scale_mode, signed=signed)[:len(maps)]
display = cmp.display_array(image)

kind_line = panels[0].label.split(" · ")[0]
st.subheader(f"{kind_line}" + (f" — difference vs {reference}" if diff else ""))
shared_bar = scale_mode == "shared"
if shared_bar:
    with st.container(key="compare-colorbar"):
        colorbar(ranges[0][0], ranges[0][1], cmap, "colour scale, all panels:")
pending = state.pending_demo_methods()
height = int(min(420, max(160, MAP_SIDE * display.shape[0] / display.shape[1])))
grid = st.container(key="compare-grid")
cards = [("panel", p, r) for p, r in zip(panels, ranges)] + [("pending", m, None) for m in pending]
for start in range(0, len(cards), PER_ROW):
    cols = grid.columns(PER_ROW)
    for col, (what, p, rng) in zip(cols, cards[start:start + PER_ROW]):
        if what == "pending":
            with col.container(key=f"pending-{state.slug(p)}", border=True):
                st.markdown(f"**{p}** · *not in this comparison yet*")
                state.background_progress(f"panel-{state.slug(p)}", p)
            continue
        lo, hi = rng
        s = state.slug(p.name)
        with col.container(key=f"panel-{s}", border=True):
            st.markdown(f"**{p.name}**" + ("" if p.trained else " · *untrained*"))
            fig = render.heatmap_figure(display, maps[p.name], lo, hi, cmap, alpha)
            fig.update_layout(height=height, margin={"l": 0, "r": 0, "t": 0, "b": 0})
            if shared_bar:  # one colour bar above the grid
                fig.update_traces(showscale=False, selector={"type": "heatmap"})
            else:  # a thin bar beside the map; its range is in the caption below (hover gives values)
                fig.update_traces(colorbar={"thickness": 6, "len": 1.0, "outlinewidth": 0, "xpad": 2,
                                            "showticklabels": False, "ticks": ""}, selector={"type": "heatmap"})
            st.plotly_chart(fig, key=f"fig-{s}", config={"displayModeBar": False})
            if p.heads is not None and not diff:
                hs = [[(None, h) for h in p.heads]]
                hr = [[(lo, hi)] * len(p.heads)] if scale_mode == "shared" else \
                    [render.color_scale(list(p.heads), mode="shared")]
                hfig = render.grid_figure(hs, hr, col_labels=[f"head {i}" for i in range(len(p.heads))], cmap=cmap)
                hfig.update_layout(height=130, margin={"l": 0, "r": 0, "t": 24, "b": 0})
                st.plotly_chart(hfig, key=f"heads-{s}", config={"displayModeBar": False})
            label = p.label + (f" · minus {reference}" if diff else "")
            st.caption(label + ("" if shared_bar else f" · range {lo:.3g}…{hi:.3g}"))
            with st.container(key=f"preds-{s}"):
                st.caption(state.predictions_text(p.predictions))

st.caption(f"{len(panels)} models · computed in {timer.seconds:.2f} s on {cmp.device_label(state.device())} "
           "(recordings are cached per model and image)", help=None)
st.container(key="compare-timing").caption(
    f"compute_seconds={timer.seconds:.3f} page_seconds={time.perf_counter() - page_start:.3f}")
