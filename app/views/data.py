"""Your data: point at a labelled folder on the server or upload a zip of it, see what it holds and
every problem, choose backbone, methods and budget (with the time estimate), train in the background,
and show the trained models on every page under the dataset's name.

Stable keys: ``data-source``, ``data-zip``, ``data-path``, ``data-scan``, ``data-rescan``, ``data-found``
(classes and counts), ``data-samples`` (sample grid), ``data-problems``, ``data-name``, ``data-backbone``,
``data-methods``, ``data-epochs``, ``data-size``, ``data-estimate`` (button), ``data-estimate-table``,
``data-start``, ``data-stop``, ``dsrun-data`` (progress), ``data-runs`` (trained datasets), ``data-use-<i>``,
``data-use-default``.
"""
import json
from pathlib import Path

import numpy as np
import streamlit as st

import toast_core as tc
from app import datasets, state
from toast_core.backbones import DEFAULT_BACKBONE
from toast_core.data.archive import extract_upload
from toast_core.data.scan import scan_folder
from toast_core.demo.background import format_seconds
from toast_core.errors import ToastError
from toast_core.methods import available_methods
from toast_core.demo import dataset_background as dbg
from toast_core.demo import dataset_run

entries, failures, note = state.session_entries()
state.sidebar_status(note)
st.title("Your data")
st.markdown("Train the transfer methods on **your own labelled images** and compare where each one looks. "
            "Layout: `train/<class>/<image>` (required), `val/` and `test/` (optional, same class folders), "
            "`masks/<split>/<class>/<name>.png` or `boxes.json` (optional: object masks or boxes for the "
            "localisation metrics). See docs/YOUR_DATA.md.")


MAX_SAMPLE_CLASSES = 12


@st.cache_data(max_entries=512, show_spinner=False)
def _thumbnail(path: str, mtime_ns: int) -> np.ndarray:
    """A small preview of one image (decoded with the library's safe loader)."""
    im = tc.load_image(path)
    im.thumbnail((96, 96))
    return np.asarray(im)


def _set_folder(folder) -> None:
    st.session_state["data-folder"] = str(folder)
    st.session_state.pop("data-report", None)


# -- the dataset --------------------------------------------------------------------------------------
sources = ["Upload a zip"] + (["Folder on the server"] if state.paths_allowed() else [])
source = st.radio("Dataset", sources, key="data-source", horizontal=True)
if source == "Upload a zip":
    up = st.file_uploader("A zip of the folder", type=["zip"], key="data-zip",
                          help="Extracted safely on the server (no paths outside its folder, no links, size "
                               "limits); the same zip is extracted once.")
    if up is not None:
        try:
            folder = extract_upload(up.getvalue(), up.name)
            if st.session_state.get("data-folder") != str(folder):
                _set_folder(folder)
        except ToastError as e:
            st.error(f"The zip was refused: {e}", icon=":material/block:")
else:
    path = st.text_input("Folder on the server", key="data-path", placeholder="/data/my-dataset")
    if st.button("Scan", key="data-scan") and path.strip():
        _set_folder(Path(path.strip()).expanduser().resolve())

folder = st.session_state.get("data-folder")
if not folder:
    st.info("Choose a dataset to see what it holds.")
else:
    rescan = st.button("Scan again", key="data-rescan")
    if st.session_state.get("data-report") is None or rescan:
        with st.spinner("Scanning (every image is decoded once)…"):
            st.session_state["data-report"] = scan_folder(folder)
    report = st.session_state["data-report"]
    with st.container(key="data-found", border=True):
        st.markdown(f"**{folder}** · {len(report.classes)} classes")
        if report.classes:
            st.dataframe(report.counts_table(), hide_index=True)
        st.caption(" · ".join(f"{s.name}: {s.n_images} images, {s.with_mask} with masks, {s.with_box} with boxes"
                              + (" (held out of train/)" if s.held_out_of_train else "")
                              for s in report.splits.values()))
    if report.samples:
        with st.container(key="data-samples"):
            for c, rels in list(report.samples.items())[:MAX_SAMPLE_CLASSES]:
                cols = st.columns(len(rels) + 1)
                cols[0].markdown(f"**{c}**")
                for col, rel in zip(cols[1:], rels):
                    try:
                        p = Path(folder) / rel
                        col.image(_thumbnail(str(p), p.stat().st_mtime_ns), width=96, caption=p.name)
                    except (ToastError, OSError):
                        col.caption("unreadable")
    with st.container(key="data-problems"):
        for p in report.errors:
            st.error(p.message, icon=":material/error:")
        for p in report.warnings:
            st.warning(p.message, icon=":material/warning:")
        if report.ok and not report.has_masks:
            st.caption("No masks or boxes: the Analysis page's localisation metrics need them; accuracy works.")

    # -- what to train ------------------------------------------------------------------------------------
    st.subheader("Train")
    c1, c2 = st.columns(2)
    name = c1.text_input("Dataset name", value=Path(folder).name, key="data-name")
    backbone = c2.text_input("Backbone (timm name)", value=DEFAULT_BACKBONE, key="data-backbone",
                             help="The default (DINOv2 ViT-S/14) works offline; other names need timm's "
                                  "weights in the local cache.")
    methods = st.multiselect("Methods", available_methods(), default=available_methods(), key="data-methods")
    c3, c4 = st.columns(2)
    epochs = c3.number_input("Epochs per method (0: each recipe's own, 8; full fine-tuning 3 on a CPU)",
                             min_value=0, max_value=200, value=0, key="data-epochs")
    size = c4.selectbox("Input size (px)", [224, 112, 56], key="data-size",
                        format_func=lambda s: {224: "224 (default: 16×16 maps)",
                                               112: "112 (fast: ~4× less training on a CPU, 8×8 maps)",
                                               56: "56 (a quick trial: 4×4 maps)"}[s])
    spec = None
    try:
        spec = dataset_run.DatasetRunSpec(name=name, data=folder, methods=tuple(methods), backbone=backbone,
                                          epochs=int(epochs), image_size=int(size))
    except ToastError as e:
        st.error(str(e))
    spec_key = json.dumps(spec.to_dict(), sort_keys=True) if spec else None
    est = st.session_state.get("data-est", {}).get(spec_key)
    if st.button("Estimate the time on this machine", key="data-estimate", disabled=spec is None or not report.ok):
        with st.spinner("Measuring one training step per method…"):
            try:
                est = dataset_run.estimate(spec, device=state.device(), report=report)
                st.session_state["data-est"] = {spec_key: est}
            except ToastError as e:
                st.error(str(e))
    if est:
        with st.container(key="data-estimate-table"):
            st.dataframe([{"method": m, "epochs": e["epochs"], "time": format_seconds(e["seconds"])}
                          for m, e in est["methods"].items()], hide_index=True)
            st.caption(f"All: {format_seconds(est['seconds'])} on {est['device']} at {est['image_size']} px "
                       f"({est['n_train']} training images; one step measured on {est['measured_on']} images).")

    # -- training in the background ----------------------------------------------------------------------
    active = datasets.active_run()
    directory = None
    if spec is not None and report.ok:
        directory = str(dataset_run.run_dir(spec, report.fingerprint))
    if st.button("Train in the background", key="data-start", type="primary",
                 disabled=spec is None or not report.ok or not methods or active is not None):
        try:
            got = dbg.start(spec, device=state.device(), estimate=est)
            st.toast(f"Training: {got['reason']}")
        except ToastError as e:
            st.error(str(e))
        st.rerun()
    if active is not None:
        st.caption(f"Training now: “{active['name']}” (one training at a time on this machine).")
        if st.button("Stop (saves; the next start resumes)", key="data-stop"):
            dbg.stop(active["dir"], timeout=60)
            st.rerun()
    if directory and (Path(directory) / "run.json").is_file():
        datasets.render_progress(directory, "data")

# -- trained datasets -------------------------------------------------------------------------------------
st.subheader("Your trained datasets")
runs = [r for r in dataset_run.list_runs() if r["complete"]]
chosen = datasets.selected_run()
with st.container(key="data-runs"):
    if not runs:
        st.caption("None yet: models appear here (and can be shown on every page) as soon as one is complete.")
    for i, r in enumerate(runs):
        shown = chosen is not None and chosen["dir"] == r["dir"]
        c1, c2 = st.columns([3, 1])
        c1.markdown(f"**{r['name']}** · {len(r['classes'])} classes · complete: {', '.join(r['complete'])}"
                    + (" · *shown on the pages*" if shown else ""))
        if c2.button("Show on the pages", key=f"data-use-{i}", disabled=shown):
            datasets.select_run(r["dir"])
            st.rerun()
    if chosen is not None and st.button("Back to the default models", key="data-use-default"):
        datasets.select_run(None)
        st.rerun()
