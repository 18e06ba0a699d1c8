"""TOAST inspector: first (bottom-up) vs second (top-down) pass per layer, the gate map (token
selection), the size of the top-down value term against the values it is added to per layer, the
stage-1 diagnostics of the feedback path, and live steering: scale the top-down signal
and take ξ from a clicked patch.

Stable keys: ``ins-bottom-up`` (clickable plotly map: click a patch to take ξ from it),
``ins-top-down``, ``ins-gate``, ``ins-td-chart``, ``ins-predictions``, ``ins-strips``; widgets
``ins-model``, ``keep-image``, ``ins-kind``, ``ins-layer``, ``ins-scale`` (steering 0..2),
``ins-xi`` (learned / patch), ``ins-row``, ``ins-col``, ``ins-cmap``, ``ins-alpha``.
"""
import time

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app import state, task
from toast_core import compare as cmp
from toast_core.viz import render
from toast_core.errors import ToastError
from toast_core.attribution import ATTRIBUTION_KINDS, EXPLANATIONS, SIGNED_KINDS
from toast_core.maps import MAP_KINDS, describe_map

entries, failures, note = state.session_entries()
state.sidebar_status(note)
st.title("TOAST inspector")
st.caption("TOAST runs the backbone twice: a bottom-up pass, then a top-down pass whose values are steered by "
           "a feedback signal built from the tokens that resemble the task embedding ξ. Steer it here.")
toasts = [e for e in entries if e.is_toast]
if not toasts:
    st.info("No TOAST model is loaded. Load one on the Models page.")
    st.stop()
state.untrained_notice(toasts)
page_start = time.perf_counter()
MAP_W = 220  # px: the three maps share one size

with st.sidebar:
    names = [e.name for e in toasts]
    if st.session_state.get("ins-model") not in names:
        st.session_state["ins-model"] = names[0]
    entry = toasts[names.index(st.selectbox("TOAST model", names, key="ins-model"))]
    image_label, image, image_key = state.image_picker()
    kind = state.kind_select("ins-kind", attention_only=True)
    layer = state.layer_slider("ins-layer", entry.num_layers)
    if "ins-scale" not in st.session_state:
        st.session_state["ins-scale"] = 1.0
    td_scale = st.slider("Top-down steering", 0.0, 2.0, step=0.05, key="ins-scale",
                         help="Scales the top-down signal: 0 = bottom-up only, 1 = as trained, >1 amplified.")
    st.caption("0 = bottom-up · 1 = as trained · >1 amplified")
    cmap = state.colormap_select("ins-cmap")
    alpha = state.opacity_slider("ins-alpha")

rec0 = cmp.record(entry, image, image_key=image_key)
h, w = rec0.grid


def _take_clicked_patch() -> None:
    """on_select callback of the bottom-up map: a clicked patch becomes the source of ξ."""
    sel = st.session_state.get("ins-bottom-up")
    points = (sel or {}).get("selection", {}).get("points", []) if isinstance(sel, dict) else \
        getattr(getattr(sel, "selection", None), "points", []) or []
    if not points:
        return
    rc = state.patch_from_point(points[0], (h, w), st.session_state.get("ins-display-shape"))
    if rc is not None:
        st.session_state["ins-row"], st.session_state["ins-col"] = rc
        st.session_state["ins-xi"] = "patch"


with st.sidebar:
    if st.session_state.get("ins-xi") not in ("learned", "patch"):
        st.session_state["ins-xi"] = "learned"
    xi_mode = st.radio("ξ (task embedding)", ["learned", "patch"], key="ins-xi", horizontal=True,
                       format_func=lambda m: {"learned": "learned ξ", "patch": "from a patch"}[m],
                       help="Click a patch on the bottom-up map (or type its row/column) to use its token as ξ.")
    for k, n in (("ins-row", h), ("ins-col", w)):
        if not isinstance(st.session_state.get(k), int) or not 0 <= st.session_state[k] < n:
            st.session_state[k] = n // 2
    c1, c2 = st.columns(2)
    row = c1.number_input("Patch row", 0, h - 1, key="ins-row", disabled=xi_mode != "patch")
    col = c2.number_input("Patch col", 0, w - 1, key="ins-col", disabled=xi_mode != "patch")
xi_patch = (int(row), int(col)) if xi_mode == "patch" else None

try:
    with state.Timer() as timer:
        insp = cmp.inspect_toast(entry, image, kind=kind, td_scale=float(td_scale), xi_patch=xi_patch,
                                 image_key=image_key)
except ToastError as e:
    st.error(str(e))
    st.stop()

display = cmp.display_array(image)
st.session_state["ins-display-shape"] = display.shape[:2]
lo, hi = render.color_scale([insp.bottom_up[layer], insp.top_down[layer]], mode="shared")[0]

with st.container(key="ins-predictions", border=True):
    p1, p2, p3 = st.columns(3)
    (top_label, top_p), (tr_label, tr_p) = insp.predictions[0], insp.predictions_trained[0]
    quiet = dict(delta_color="off", delta_arrow="off")
    p1.metric(f"Prediction at steering {td_scale:.2f}", top_label, f"{100 * top_p:.1f}%", **quiet)
    p2.metric("As trained (1.0, learned ξ)", tr_label, f"{100 * tr_p:.1f}%", **quiet)
    p3.markdown(f"**ξ:** {insp.xi_source}  \n**top-{len(insp.predictions)}:** "
                f"{state.predictions_text(insp.predictions)}")

with st.container(key="ins-task"):
    st.markdown(task.task_line(entry.class_names, entry.trained) + "  \n" + task.truth_line(image_label))
    far_slot = st.empty()  # filled after the maps are drawn: the first upload measures the task's images once
truth = task.gallery_truth(image_label)
map_h = int(round(min(1.6 * MAP_W, MAP_W * display.shape[0] / display.shape[1])))


def _bar(lo_: float, hi_: float, cmap_: str) -> None:
    st.markdown(f'<div style="display:flex;align-items:center;gap:0.4rem;font-size:0.75rem;width:{MAP_W}px">'
                f'<span>{lo_:.3g}</span><div style="flex:1;height:0.5rem;border-radius:2px;'
                f'background:{render.css_gradient(cmap_)}"></div><span>{hi_:.3g}</span></div>',
                unsafe_allow_html=True)


def _map(m, lo_: float, hi_: float, cmap_: str, key: str, picker: bool = False) -> None:
    """One of the three maps: all the same size, patch blocks, colour range in a bar below."""
    fig = render.heatmap_figure(display, m, lo_, hi_, cmap_, alpha)
    fig.update_traces(showscale=False, selector={"type": "heatmap"})
    task.outline_target(fig, truth, display.shape[:2])
    fig.update_layout(width=MAP_W, height=map_h, margin={"l": 0, "r": 0, "t": 0, "b": 0})
    H, W = display.shape[:2]  # fixed ranges: the patch picker's markers must not widen the axes
    fig.update_xaxes(range=[-0.5, W - 0.5], autorange=False)
    fig.update_yaxes(range=[H - 0.5, -0.5], autorange=False)
    if picker:
        state.add_patch_picker(fig, display.shape[:2], (h, w), xi_patch)
        fig.update_layout(clickmode="event+select", dragmode=False)
        st.plotly_chart(fig, key=key, width=MAP_W, on_select=_take_clicked_patch, selection_mode="points",
                        config={"displayModeBar": False})
    else:
        st.plotly_chart(fig, key=key, width=MAP_W, config={"displayModeBar": False})
    _bar(lo_, hi_, cmap_)


maps_row = st.container(key="ins-maps", horizontal=True, gap="medium")
with maps_row.container(width=MAP_W + 4):
    st.markdown(f"**Bottom-up pass** · {MAP_KINDS[kind]} · layer {layer + 1}/{entry.num_layers}")
    _map(insp.bottom_up[layer], lo, hi, cmap, "ins-bottom-up", picker=True)
    st.caption("Click a patch to take ξ from it.")
with maps_row.container(width=MAP_W + 4):
    st.markdown(f"**Top-down pass** · steering {td_scale:.2f} · layer {layer + 1}")
    _map(insp.top_down[layer], lo, hi, cmap, "ins-top-down")
    gap = np.abs(insp.top_down[layer] - insp.bottom_up[layer]).max()
    st.caption(f"max |top-down − bottom-up| at this layer: {gap:.3g}")
with maps_row.container(width=MAP_W + 4):
    st.markdown("**Gate (token selection)** · clamp(cos(token, ξ), 0, 1)")
    _map(insp.gate, 0.0, 1.0, "viridis", "ins-gate")
    st.caption(f"mean gate {insp.gate.mean():.3f}")

layers = [f"L{i + 1}" for i in range(len(insp.td_norm))]
chart = go.Figure([go.Bar(x=layers, y=(100 * insp.value_ratio).tolist(), name=f"applied (× {td_scale:.2f}, {insp.xi_source})"),
                   go.Bar(x=layers, y=(100 * insp.value_ratio_trained).tolist(), name="as trained"),
                   go.Scatter(x=layers, y=(100 * insp.value_ratio_max).tolist(), name="largest token (applied)", mode="markers")])
chart.update_layout(barmode="group", height=280, margin={"l": 4, "r": 4, "t": 8, "b": 4},
                    yaxis={"title": "% of |v|"}, legend={"orientation": "h", "y": -0.2})
st.markdown("**Size of the top-down term** against the values it is added to, per layer: "
            "mean |W_v·td| / mean |v| (%)")
st.plotly_chart(chart, key="ins-td-chart", config={"displayModeBar": False})
stage1 = ((entry.info or {}).get("pretuned_from") or {}).get("stage1") or {}
if stage1.get("diagnostics"):
    with st.expander("Stage 1: how well the feedback path inverts the backbone (held-out generic crops)"):
        st.markdown(cmp.stage1_table(stage1))
st.subheader("First vs second pass, every layer")
thumbs_lo, thumbs_hi = render.color_scale(list(insp.bottom_up) + list(insp.top_down), mode="shared")[0]
small = cmp.display_array(image, 192)
diff = insp.top_down - insp.bottom_up
dlo, dhi = render.color_scale(list(diff), mode="shared", signed=True)[0]
with st.container(key="ins-strips"):
    st.caption("bottom-up (first pass)")
    st.image([render.overlay(small, m, thumbs_lo, thumbs_hi, cmap, alpha, upsample="nearest") for m in insp.bottom_up],
             caption=layers, width=88)
    st.caption("top-down (second pass)")
    st.image([render.overlay(small, m, thumbs_lo, thumbs_hi, cmap, alpha, upsample="nearest") for m in insp.top_down],
             caption=layers, width=88)
    st.caption(f"difference (top-down − bottom-up), signed scale ±{dhi:.2g}")
    st.image([render.overlay(small, m, dlo, dhi, "RdBu_r", alpha, upsample="nearest") for m in diff],
             caption=layers, width=88)
st.subheader("Attribution at this steering setting")
with st.container(key="ins-attribution"):
    a_kind = st.selectbox("Attribution kind", ["off", *ATTRIBUTION_KINDS], key="ins-attr-kind",
                          format_func=lambda k: "off" if k == "off" else MAP_KINDS[k],
                          help="Gradient-based maps of the predicted class, at the steering above and as trained. "
                               + " ".join(f"{MAP_KINDS[k]}: {EXPLANATIONS[k]}" for k in EXPLANATIONS))
    if a_kind != "off":
        try:
            with st.spinner(f"{MAP_KINDS[a_kind]}: two settings…"):
                steered = cmp.attribution(entry, image, kind=a_kind, image_key=image_key, td_scale=float(td_scale),
                                          xi_patch=xi_patch)
                trained = cmp.attribution(entry, image, kind=a_kind, image_key=image_key)
        except ToastError as e:
            st.error(str(e))
            st.stop()
        signed = a_kind in SIGNED_KINDS
        alo, ahi = render.color_scale([steered, trained], mode="shared", signed=signed)[0]
        a_cmap = "RdBu_r" if signed else cmap
        st.caption(describe_map(a_kind, passes=rec0.passes) + " · predicted class · "
                   + EXPLANATIONS[a_kind])
        a_row = st.container(horizontal=True, gap="medium")
        for title, m, key in ((f"steering {td_scale:.2f} · {insp.xi_source}", steered, "ins-attr-steered"),
                              ("as trained (1.0, learned ξ)", trained, "ins-attr-trained")):
            with a_row.container(width=MAP_W + 4):
                st.markdown(f"**{title}**")
                _map(m, alo, ahi, a_cmap, key)

cached = timer.seconds < 0.005
st.caption(f"TOAST passes: {timer.seconds * 1000:.0f} ms" + (" (reused from the cache)" if cached else "")
           + f" · whole page: {time.perf_counter() - page_start:.2f} s · {entry.name} · {image_label}")
with far_slot.container():
    task.far_notice(entries, image_label, image, image_key)
