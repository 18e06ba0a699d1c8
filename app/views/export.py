"""Export for papers: a figure builder (rows = methods, columns = layers or images) with titles, colour
bar, colormap, scale and font size; downloads as PDF / SVG (vector, editable text) / PNG at a chosen
dpi, and a zip bundle with the raw maps (``maps.npz``) and a manifest to regenerate the figure.

Stable keys: ``export-preview`` (preview image), ``export-manifest``; downloads ``dl-pdf``, ``dl-svg``,
``dl-png``, ``dl-zip``; widgets ``exp-rows``, ``exp-columns``, ``exp-layers``, ``exp-images``,
``exp-layer``, ``exp-kind``, ``exp-heads``, ``exp-pass``, ``exp-title``, ``exp-colorbar``, ``exp-cmap``,
``exp-scale``, ``exp-percentile``, ``exp-alpha``, ``exp-font``, ``exp-dpi``, ``exp-panel``.
"""

import streamlit as st

from app import state, widgets
from toast_core import compare as cmp
from toast_core.attribution import EXPLANATIONS, SIGNED_KINDS
from toast_core.maps import ATTENTION_KINDS, MAP_KINDS
from toast_core.viz import export
from toast_core.errors import ToastError

entries, failures, note = state.session_entries()
state.sidebar_status(note)
st.title("Export a figure")
st.caption("Rows are methods; columns are layers of one image or several images at one layer. The bundle "
           "holds the raw maps and a manifest (checkpoint hashes, layer/head, map kind, normalisation, "
           "preprocessing, versions), so the figure can be regenerated: `python -m toast_core figure …`.")
state.untrained_notice(entries)
if not entries:
    st.stop()

names = [e.name for e in entries]
with st.sidebar:
    image_label, image, image_key = state.image_picker("Image (for layer columns)")

left, right = st.columns([1, 2])
with left:
    state.sanitize_choice("exp-rows", names)
    rows = st.multiselect("Rows (methods)", names, default=names, key="exp-rows")
    selected = [e for e in entries if e.name in rows]
    if not selected:
        st.info("Pick at least one method.")
        st.stop()
    depth = cmp.common_depth(selected)
    columns = st.radio("Columns", ["layers", "images"], key="exp-columns", horizontal=True)
    kind = state.kind_select("exp-kind")
    if kind not in ATTENTION_KINDS and kind != "integrated_gradients":
        st.caption(f"**{MAP_KINDS[kind]}** (predicted class): {EXPLANATIONS[kind]}"
                   + (" Use the signed scale." if kind in SIGNED_KINDS else ""))
    if columns == "layers" and kind in ATTENTION_KINDS:
        default_layers = sorted({max(1, round(depth * f)) for f in (0.25, 0.5, 0.75, 1.0)})
        state.sanitize_choice("exp-layers", list(range(1, depth + 1)))
        picked = st.multiselect("Layers", list(range(1, depth + 1)), default=default_layers, key="exp-layers")
        layers = [layer - 1 for layer in sorted(picked)]
        images = [(image_label.split("/")[-1], image)]
    else:
        options = state.image_options()
        state.sanitize_choice("exp-images", options)
        picked_images = st.multiselect("Images", options, default=[image_label], key="exp-images")
        images = [(lbl.split("/")[-1], state.resolve_image(lbl)[0]) for lbl in picked_images]
        layers = [state.layer_slider("exp-layer", depth)] if kind in ATTENTION_KINDS else [None]
    head = None
    if kind == "cls":
        head = widgets.head_control("exp-heads", cmp.common_heads(selected), allow_all=False)
    pass_name = state.pass_select("exp-pass", selected) if kind in ATTENTION_KINDS else None
    ig_steps = st.slider("IG steps", 4, 64, 16, step=4, key="exp-ig-steps") if kind == "integrated_gradients" else 16
    title = st.text_input("Title", "", key="exp-title")
    # one widget per line: at 1024 px two side by side cut their labels ("Colour …", "share")
    scale = st.selectbox("Scale", list(export.SCALES), key="exp-scale",
                         help="shared: one range and colour bar; per-panel: one each; signed: symmetric around 0.")
    cmap_choice = st.selectbox("Colormap", ["auto"] + state.COLORMAPS + widgets.SIGNED_COLORMAPS, key="exp-cmap",
                               help="auto: inferno, or RdBu_r for the signed scale")
    colorbar = st.checkbox("Colour bar", True, key="exp-colorbar")
    percentile = st.number_input("Clip at percentile (0 = off)", 0.0, 100.0, 0.0, step=0.5, key="exp-percentile")
    alpha = st.slider("Map opacity", 0.0, 1.0, 0.55, step=0.05, key="exp-alpha")
    font = st.slider("Font size (pt)", 4.0, 16.0, 8.0, step=0.5, key="exp-font")
    dpi = st.select_slider("PNG dpi", [72, 100, 150, 200, 300, 600], value=300, key="exp-dpi")
    panel = st.slider("Panel size (in)", 0.8, 3.0, 1.6, step=0.1, key="exp-panel")

if not images or not layers:
    right.info("Pick at least one layer and one image.")
    st.stop()
try:
    spec, maps_meta, provenance = cmp.figure_spec(
        selected, images, columns=columns, layers=layers, kind=kind, head=head, pass_name=pass_name,
        ig_steps=int(ig_steps), title=title, cmap=None if cmap_choice == "auto" else cmap_choice, scale=scale,
        percentile=percentile or None, alpha=alpha, font_size=font, dpi=int(dpi), colorbar=colorbar,
        panel_inches=panel)
    with state.Timer() as timer:
        preview = state.figure_preview(state.spec_digest(spec), spec)
except ToastError as e:
    right.error(str(e))
    st.stop()

with right:
    with st.container(key="export-preview"):
        st.image(preview, caption=f"preview ({spec.shape[0]}×{spec.shape[1]} panels, 90 dpi; drawn in "
                 f"{timer.seconds:.2f} s)")
    stem = "toast_figure"
    buttons = st.container(horizontal=True, gap="small", key="export-downloads")  # wraps: labels never cut
    buttons.download_button("PDF", lambda: export.figure_bytes(export.build_figure(spec), "pdf"),
                            file_name=f"{stem}.pdf", mime="application/pdf", key="dl-pdf", on_click="ignore")
    buttons.download_button("SVG", lambda: export.figure_bytes(export.build_figure(spec), "svg"),
                            file_name=f"{stem}.svg", mime="image/svg+xml", key="dl-svg", on_click="ignore")
    buttons.download_button(f"PNG ({dpi} dpi)",
                            lambda: export.figure_bytes(export.build_figure(spec), "png", int(dpi)),
                            file_name=f"{stem}.png", mime="image/png", key="dl-png", on_click="ignore")
    buttons.download_button("Bundle (.zip)", lambda: export.export_bundle(spec, maps_meta, provenance),
                            file_name=f"{stem}_bundle.zip", mime="application/zip", key="dl-zip", on_click="ignore")
    with st.expander("Manifest (provenance)"):
        with st.container(key="export-manifest"):
            st.json(provenance, expanded=1)
