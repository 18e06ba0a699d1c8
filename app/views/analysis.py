"""Analysis: the batch attention analysis (``python -m toast_core analyze``) over the default task or a
folder, with a progress bar, the headline table, the plots and downloads. The page only collects
options and shows results; :mod:`toast_core.analysis.session` runs it (maths in :mod:`toast_core.analysis`).

It never runs by itself (slow on a CPU): the **Run analysis** button starts it. The last result stays
in ``st.session_state["analysis-result"]`` (an :class:`~toast_core.analysis.session.AppAnalysis`) across
page switches.

Stable keys: ``analysis-controls``, ``analysis-dataset``, ``analysis-progress``, ``analysis-results``,
``analysis-table``, ``analysis-plot-layers``, ``analysis-plot-accuracy``, ``analysis-downloads``;
widgets ``keep-methods`` (sidebar, shared with other pages), ``keep-ana-source``, ``keep-ana-folder``,
``keep-ana-split``, ``keep-ana-n``, ``keep-ana-layers``, ``keep-ana-kinds``, ``keep-ana-faith``,
``keep-ana-faith-steps``, ``keep-ana-faith-max``, ``keep-ana-faith-kinds``, ``ana-run``, ``ana-view-kind``;
the faithfulness ranking ``analysis-ranking``, ``analysis-ranking-table``, ``analysis-plot-faithfulness``;
downloads ``ana-dl-rows``, ``ana-dl-summary-csv``, ``ana-dl-summary-md``, ``ana-dl-layer-average``,
``ana-dl-faithfulness``, ``ana-dl-<plot stem>-png`` / ``-pdf``, ``ana-dl-zip``.
"""
from pathlib import Path

import streamlit as st

from app import datasets, state
from toast_core.analysis import session as analysis_app
from toast_core.analysis import ANALYSIS_KINDS, load_dataset
from toast_core.maps import MAP_KINDS
from toast_core.errors import ToastError

K = state.KEEP
RESULT = "analysis-result"
SOURCES = {"default": "Default task", "folder": "Folder on the server"}
SPLITS = ["test", "val", "train"]
KIND_LABELS = {"cls": "CLS attention", "rollout": "attention rollout", "token_norm": "token norm"}
METRICS_HELP = (
    "**Energy on target**: share of the map's mass inside the task object's mask (a uniform map scores the "
    "object's area share, the chance level). **Distractors**: share inside the other objects. **Pointing "
    "hit**: the map's peak lies on the object (within 15 px at 224 px). **IoU**: the map thresholded at half "
    "its range against the mask. **AUC**: the map as a detector of object pixels (0.5 = chance). "
    "**Deletion / insertion AUC** (faithfulness, last layer's CLS map): see the ranking below. Accuracy is the model's, whatever "
    "the map. Values are means over images (the 95% bootstrap CIs with the switch above the table); layers "
    "are counted from 1 in the plots, as on every page (the CSV files' `layer` column is the 0-based block "
    "index); *(last)* = the last analysed layer, *(layer mean)* = averaged over the analysed layers.")


def _default(key: str, value, valid=None) -> None:
    """Give a widget its default through session state (valid: a check of the kept value)."""
    if key not in st.session_state or (valid is not None and not valid(st.session_state[key])):
        st.session_state[key] = value


@st.cache_data(ttl=30, max_entries=16, show_spinner=False)
def _folder_split_size(path: str, split: str) -> int:
    """Images in a split of a folder the analysis reads (raises InputError with a clear message)."""
    return len(load_dataset(path, split))


def own_dataset_controls(run: dict) -> tuple[object, str, int, str]:
    """The session shows the models of one of the user's datasets ("Your data"): analyse that dataset."""
    spec = run.get("spec") or {}
    _default(K + "ana-split", "test", lambda v: v in SPLITS)
    split = st.selectbox("Split", SPLITS, key=K + "ana-split")
    path = str(spec.get("data") or "")
    try:
        size = _folder_split_size(path, split)
    except (ToastError, OSError, ValueError) as e:
        return None, split, 0, f"Your dataset “{spec.get('name')}” cannot be analysed: {e}"
    st.caption(f"Dataset: your dataset “{spec.get('name')}” (`{path}`); {split} split, {size} images.")
    return path, split, size, ""


def dataset_controls(selected) -> tuple[object, str, int, str]:
    """Source, split and the split's size. Returns ``(task source or folder path, split, size, error)``."""
    mine = datasets.selected_run()
    if mine is not None:
        return own_dataset_controls(mine)
    allowed = state.paths_allowed()
    sources = list(SOURCES) if allowed else ["default"]
    _default(K + "ana-source", "default", lambda v: v in sources)
    source = st.radio("Dataset", sources, key=K + "ana-source", format_func=SOURCES.get, horizontal=True,
                      help="The default task: images with a red task object among distractors, with masks. "
                           "A folder: the default-task layout (manifest.json), CUB-200-2011, or an image folder "
                           "(train/<class>/…) with masks/ or boxes.json.")
    if not allowed:
        st.caption("Folders on the server can be chosen only when the app is served on localhost.")
    _default(K + "ana-split", "test", lambda v: v in SPLITS)
    split = st.selectbox("Split", SPLITS, key=K + "ana-split")
    if source == "folder":
        _default(K + "ana-folder", "")
        text = st.text_input("Folder path (on the server)", key=K + "ana-folder",
                             placeholder="/data/CUB_200_2011").strip()
        if not text:
            return None, split, 0, "Type the path of a dataset folder."
        path = str(Path(text).expanduser())
        try:
            return path, split, _folder_split_size(path, split), ""
        except (ToastError, OSError, ValueError) as e:
            return None, split, 0, f"Cannot use this folder: {e}"
    try:
        src = analysis_app.default_task([e.model for e in selected], trained=any(e.trained for e in selected))
        size = src.split_size(split)
    except (ToastError, OSError, ValueError) as e:
        return None, split, 0, f"The default task is not available: {e}"
    where = f"`{src.path}`" if src.path else "generated into the cache on the first run"
    st.caption(f"Dataset: {src.note}; {split} split, {size} images ({where}).")
    return src, split, size, ""


def run_controls(size: int) -> dict:
    """Number of images, layers, map kinds and faithfulness options."""
    hi = max(1, size)
    _default(K + "ana-n", min(48, hi), lambda v: isinstance(v, int) and 1 <= v <= hi)
    c1, c2 = st.columns(2)
    n = c1.number_input(f"Images (of {size})", 1, hi, key=K + "ana-n",
                        help="The first N images of the split. Each costs one forward pass per model.")
    _default(K + "ana-layers", "all", lambda v: v in ("all", "last"))
    layers = c2.radio("Layers", ["all", "last"], key=K + "ana-layers", horizontal=True,
                      help="All blocks (metric-vs-layer curves) or the last one only.")
    _default(K + "ana-kinds", ["cls"], lambda v: isinstance(v, list) and all(k in ANALYSIS_KINDS for k in v))
    kinds = st.multiselect("Map kinds", list(ANALYSIS_KINDS), key=K + "ana-kinds", format_func=KIND_LABELS.get,
                           help="CLS attention (head mean), rollout over the layers, or the L2 norm of each token.")
    _default(K + "ana-faith", False)
    faith = st.checkbox("Which map is faithful? (deletion / insertion ranking)", key=K + "ana-faith",
                        help="Ranks every map kind of every method: 2·(steps+1) extra forward passes per image, "
                             "model and kind, plus computing the map (Integrated Gradients: 16 backward passes).")
    steps, faith_max, faith_kinds = 8, None, []
    if faith:
        f1, f2 = st.columns(2)
        _default(K + "ana-faith-steps", 8, lambda v: isinstance(v, int) and 2 <= v <= 64)
        steps = f1.number_input("Steps", 2, 64, key=K + "ana-faith-steps")
        _default(K + "ana-faith-max", min(8, int(n)), lambda v: isinstance(v, int) and 1 <= v <= int(n))
        faith_max = f2.number_input("For the first N images", 1, int(n), key=K + "ana-faith-max")
        every = analysis_app.faithfulness_kinds()
        _default(K + "ana-faith-kinds", every, lambda v: isinstance(v, list) and all(k in every for k in v))
        faith_kinds = st.multiselect("Map kinds to rank", every, key=K + "ana-faith-kinds", format_func=_kind_label,
                                     help="'random' is uniform noise: the chance level every kind should beat.")
    return dict(n_images=int(n), layers=layers, kinds=list(kinds), faithfulness=bool(faith) and bool(faith_kinds),
                faithfulness_steps=int(steps), faithfulness_max_images=None if faith_max is None else int(faith_max),
                map_kinds=list(faith_kinds) or None)


def _kind_label(kind: str) -> str:
    return MAP_KINDS.get(kind, "random (chance level)" if kind == "random" else kind)


def run(selected, source, split: str, options: dict) -> None:
    """Run the analysis with a progress bar; keep the result in the session or show the error."""
    with st.container(key="analysis-progress"):
        bar = st.progress(0.0, text="Starting…")

    def generating(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(1, total)), text=f"Generating the default task: {done}/{total} images")

    def progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(1, total)), text=f"{done}/{total} images × models")

    try:
        data_dir = source.ensure(progress=generating) if isinstance(source, analysis_app.TaskSource) else source
        result = analysis_app.run_app_analysis(
            {e.name: e.model for e in selected}, data_dir, split=split, device=selected[0].device,
            progress=progress, meta={"models_source": {e.name: e.source for e in selected}}, **options)
    except (ToastError, OSError, ValueError, RuntimeError) as e:
        bar.empty()
        st.error(f"The analysis failed: {e}", icon=":material/error:")
        return
    bar.progress(1.0, text=f"Done: {result.n_images} images × {len(selected)} models in {result.seconds:.1f} s")
    st.session_state[RESULT] = result


def show(result) -> None:
    """The last result: settings, headline table, plots and downloads."""
    with st.container(key="analysis-results"):
        st.subheader("Results")
        st.caption(f"{result.n_images} images of `{result.data_dir}` ({result.split}); kinds: "
                   f"{', '.join(result.kinds)}; {result.seconds:.1f} s.")
        for line in result.notes:
            st.info(line, icon=":material/info:")
        kind = result.kinds[0]
        if len(result.kinds) > 1:
            if st.session_state.get("ana-view-kind") not in result.kinds:
                st.session_state["ana-view-kind"] = kind
            kind = st.radio("Show map kind", result.kinds, key="ana-view-kind", horizontal=True,
                            format_func=KIND_LABELS.get)
        with st.container(key="analysis-table"):
            headline_tables(result.headline[kind])
        st.caption(METRICS_HELP)
        plots = result.plots(kind)
        if "layers" in plots:
            with st.container(key="analysis-plot-layers"):
                st.image(result.files[plots["layers"] + ".png"],
                         caption="Metrics against the layer: mean with 95% CI band; TOAST's bottom-up pass dashed")
        else:
            st.caption("One layer analysed: no metric-vs-layer plot (choose all layers for it).")
        if "accuracy" in plots:
            with st.container(key="analysis-plot-accuracy", width=560):
                st.image(result.files[plots["accuracy"] + ".png"],
                         caption="Accuracy against the energy on the task object (last layer; 95% CI bars)")
        if result.ranking:
            ranking(result)
        downloads(result)


def headline_tables(records: list[dict]) -> None:
    """The headline table in two narrow tables of means (last layer; layer means and the rest), so it
    fits a 1024 px window; the switch shows the full table with 95% CIs instead."""
    if st.toggle("with 95% CIs", key="ana-ci", help="The full table: mean [95% bootstrap CI] per column."):
        st.dataframe(records, hide_index=True, width="stretch")
        return
    def mean(v):
        return v.split(" [")[0] if isinstance(v, str) else v
    last, rest = [], []
    for r in records:
        a, b = {"method": r["method"]}, {"method": r["method"]}
        for k, v in r.items():
            if k in ("method", "images"):
                continue
            if k == "accuracy" or k.endswith("(last)"):
                a[k.replace(" (last)", "")] = mean(v)
            else:
                b[k.replace(" (layer mean)", "")] = mean(v)
        last.append(a)
        rest.append(b)
    st.markdown(f"**Last analysed layer** · means over {records[0].get('images', '?')} images")
    st.dataframe(last, hide_index=True, width="stretch")
    if len(rest[0]) > 1:
        others = any(not k.endswith(("(layer mean)", "(last)")) for k in records[0]
                     if k not in ("method", "images", "accuracy"))
        st.markdown("**Averaged over the analysed layers**" + (" · and the other columns" if others else ""))
        st.dataframe(rest, hide_index=True, width="stretch")


def ranking(result) -> None:
    """The faithfulness ranking: table (best kind first within each method) and the AUC plot."""
    with st.container(key="analysis-ranking"):
        st.subheader("Which map is faithful?")
        st.caption(f"Every map kind of every method on the first {result.n_faithfulness} images: the predicted "
                   "class's probability as the map's most important patches are removed (deletion, replaced by the "
                   "image's mean colour: lower AUC is better) or revealed over a blurred copy (insertion: higher is "
                   "better), plus the pointing game and the map's energy on the target. Ranked within each method by "
                   "insertion − deletion; *gap to next* is the paired 95% CI of that difference to the next kind "
                   "(ranks are distinguishable only where it excludes 0). *random* is the chance level.")
        with st.container(key="analysis-ranking-table"):
            st.dataframe(result.ranking, hide_index=True, width="stretch")
        if "faithfulness_ranking.png" in result.files:
            with st.container(key="analysis-plot-faithfulness"):
                st.image(result.files["faithfulness_ranking.png"],
                         caption="Deletion and insertion AUC per method and map kind (mean, 95% CI)")


def downloads(result) -> None:
    files = result.files
    with st.container(key="analysis-downloads"):
        st.markdown("**Downloads**")
        tables = [("rows.csv", "rows.csv", "text/csv", "ana-dl-rows"),
                  ("summary.csv", "summary.csv", "text/csv", "ana-dl-summary-csv"),
                  ("summary.md", "summary.md", "text/markdown", "ana-dl-summary-md"),
                  ("layer_average.csv", "layer_average.csv", "text/csv", "ana-dl-layer-average"),
                  ("faithfulness_ranking.csv", "faithfulness_ranking.csv", "text/csv", "ana-dl-faithfulness")]
        tables = [t for t in tables if t[0] in files]
        row = st.container(horizontal=True, gap="small")  # wraps: no label cut at 1024 px
        for name, label, mime, key in tables:
            row.download_button(label, files[name], file_name=name, mime=mime, key=key, on_click="ignore")
        row.download_button("Everything (.zip)", result.zip_bytes, file_name="toast_analysis.zip",
                            mime="application/zip", key="ana-dl-zip", on_click="ignore", type="primary")
        stems = [s for k in result.kinds for s in result.plots(k).values()]
        stems += ["faithfulness_ranking"] if "faithfulness_ranking.png" in files else []
        row = st.container(horizontal=True, gap="small")
        for stem in stems:
            for fmt, mime in (("png", "image/png"), ("pdf", "application/pdf")):
                name = f"{stem}.{fmt}"
                if name in files:
                    row.download_button(name, files[name], file_name=name, mime=mime,
                                        key=f"ana-dl-{stem}-{fmt}", on_click="ignore")


entries, failures, note = state.session_entries()
state.sidebar_status(note)
st.title("Analysis: where does attention land, over many images?")
st.caption("Every selected method over the first N images of an annotated dataset: how much of each map lies "
           "on the task object, on the distractors and on the background, layer by layer, with accuracy. The "
           "same analysis as `python -m toast_core analyze`; it runs when you press the button (it is slow "
           "on a CPU: start with a few images).")
state.untrained_notice(entries)
for key, msg in failures:
    st.error(f"Could not load {key}: {msg}")

if not entries:
    st.error("No models could be loaded, so there is nothing to analyse. See the Models page.")
else:
    with st.sidebar:
        chosen = state.methods_multiselect([e.name for e in entries])
    selected = [e for e in entries if e.name in chosen]
    with st.container(key="analysis-controls"):
        with st.container(key="analysis-dataset"):
            source, split, size, problem = dataset_controls(selected or entries)
        if problem:
            st.error(problem, icon=":material/error:")
        options = run_controls(size)
        if not selected:
            st.info("Pick at least one method (sidebar).")
        elif not options["kinds"]:
            st.info("Pick at least one map kind.")
        clicked = st.button("Run analysis", key="ana-run", type="primary",
                            disabled=bool(problem) or not selected or not options["kinds"] or source is None)
    if clicked:
        run(selected, source, split, options)

if st.session_state.get(RESULT) is not None:
    show(st.session_state[RESULT])
