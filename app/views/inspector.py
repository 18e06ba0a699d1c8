"""TOAST inspector: first (bottom-up) vs second (top-down) pass per layer, the gate map (token
selection), the size of the top-down value term against the values it is added to per layer, the
stage-1 diagnostics of the feedback path, and live steering: scale the top-down signal
and take ξ from a clicked patch.

Stable keys: ``ins-bottom-up`` (clickable plotly map: click a patch to take ξ from it),
``ins-top-down``, ``ins-gate``, ``ins-td-chart``, ``ins-predictions``, ``ins-strips``; widgets
``ins-model``, ``keep-image``, ``ins-kind``, ``ins-layer``, ``ins-scale`` (steering 0..2),
``ins-xi`` (learned / patch), ``ins-row``, ``ins-col``, ``ins-cmap``, ``ins-alpha``.
"""
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app import state
from toast_core import compare as cmp
from toast_core.viz import render
from toast_core.errors import ToastError
from toast_core.maps import MAP_KINDS

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

c_bu, c_td, c_gate = st.columns(3)
with c_bu:
    st.markdown(f"**Bottom-up pass** · {MAP_KINDS[kind]} · layer {layer + 1}/{entry.num_layers}")
    fig = render.heatmap_figure(display, insp.bottom_up[layer], lo, hi, cmap, alpha)
    state.add_patch_picker(fig, display.shape[:2], (h, w), xi_patch)
    fig.update_layout(height=300, clickmode="event+select", dragmode=False)
    st.plotly_chart(fig, key="ins-bottom-up", on_select=_take_clicked_patch, selection_mode="points",
                    config={"displayModeBar": False})
    st.caption("Click a patch to take ξ from it.")
with c_td:
    st.markdown(f"**Top-down pass** · steering {td_scale:.2f}")
    fig = render.heatmap_figure(display, insp.top_down[layer], lo, hi, cmap, alpha)
    fig.update_layout(height=300)
    st.plotly_chart(fig, key="ins-top-down", config={"displayModeBar": False})
    gap = np.abs(insp.top_down[layer] - insp.bottom_up[layer]).max()
    st.caption(f"max |top-down − bottom-up| at this layer: {gap:.3g}")
with c_gate:
    st.markdown("**Gate (token selection)** · clamp(cos(token, ξ), 0, 1)")
    fig = render.heatmap_figure(display, insp.gate, 0.0, 1.0, "viridis", alpha)
    fig.update_layout(height=300)
    st.plotly_chart(fig, key="ins-gate", config={"displayModeBar": False})
    st.caption(f"mean gate {insp.gate.mean():.3f}")

layers = [f"L{i + 1}" for i in range(len(insp.td_norm))]
chart = go.Figure([go.Bar(x=layers, y=(100 * insp.value_ratio).tolist(), name=f"applied (× {td_scale:.2f}, {insp.xi_source})"),
                   go.Bar(x=layers, y=(100 * insp.value_ratio_trained).tolist(), name="as trained"),
                   go.Scatter(x=layers, y=(100 * insp.value_ratio_max).tolist(), name="largest token (applied)", mode="markers")])
chart.update_layout(barmode="group", height=280, margin={"l": 4, "r": 4, "t": 30, "b": 4},
                    title={"text": "Size of the top-down term against the values it is added to: "
                                   "mean |W_v·td| / mean |v| per layer (%)"},
                    yaxis={"title": "% of |v|"}, legend={"orientation": "h", "y": -0.2})
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
    st.image([render.overlay(small, m, thumbs_lo, thumbs_hi, cmap, alpha) for m in insp.bottom_up],
             caption=layers, width=88)
    st.caption("top-down (second pass)")
    st.image([render.overlay(small, m, thumbs_lo, thumbs_hi, cmap, alpha) for m in insp.top_down],
             caption=layers, width=88)
    st.caption(f"difference (top-down − bottom-up), signed scale ±{dhi:.2g}")
    st.image([render.overlay(small, m, dlo, dhi, "RdBu_r", alpha) for m in diff], caption=layers, width=88)
st.caption(f"{timer.seconds:.2f} s · {entry.name} · {image_label}")
