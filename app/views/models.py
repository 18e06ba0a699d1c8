"""Models: which checkpoints are loaded (backbone, method, trainable share, accuracy), load your own
(upload or server path), and prepare the trained demo checkpoints with a progress bar.

Stable keys: ``models-table``, ``models-failures``, ``models-background`` (background training: progress,
``bg-start`` / ``bg-stop`` buttons), ``prepare-demo`` (button), ``prepare-quick``,
``ckpt-upload``, ``ckpt-path``, ``ckpt-path-load``, ``models-remove``, ``models-device``.
"""
from pathlib import Path

import streamlit as st

import toast_core as tc
from app import state
from toast_core import compare as cmp
from toast_core.errors import ToastError
from toast_core.io import peft

entries, failures, note = state.session_entries()
state.sidebar_status(note)
st.title("Models")
with st.container(key="models-device"):
    st.markdown(f"**Device:** {cmp.device_label(state.device())} · **models:** {note}")
state.untrained_notice(entries)

# the table keeps the columns a reader compares (it fits a 1024 px window); the rest is under "Details"
rows = []
for e in entries:
    share, acc = e.info.get("share"), e.info.get("accuracy")
    rows.append({"name": e.name, "method": e.method,
                 "accuracy": None if acc is None else f"{100 * acc:.1f}%",
                 "trainable": None if share is None else f"{100 * share:.2g}%",
                 "layers × heads": f"{e.num_layers} × {e.num_heads}", "classes": len(e.class_names)})
with st.container(key="models-table"):
    st.dataframe(rows, hide_index=True, width="stretch", column_config={
        "accuracy": st.column_config.TextColumn("accuracy", help="test accuracy on the task", width="small"),
        "trainable": st.column_config.TextColumn("trainable", help="share of parameters trained", width="small"),
        "layers × heads": st.column_config.TextColumn("layers × heads", width="small"),
        "classes": st.column_config.NumberColumn("classes", width="small")})
with st.expander("Details: backbone, source, parameters, checkpoint"):
    for e in entries:
        info = e.info
        sha = (info.get("sha256") or "")[:12]
        st.markdown(f"**{e.name}** · {info.get('backbone')} · {e.source} · {info.get('trainable')} trainable "
                    f"parameters" + (f" · sha256 `{sha}`" if sha else "") + f"  \n`{info.get('path') or e.key}`")
if failures:
    with st.container(key="models-failures"):
        for key, msg in failures:
            st.error(f"Could not load {key}: {msg}")

# -- prepare-demo ------------------------------------------------------------------------------------
st.subheader("Default models")
demo_keys = state.demo_checkpoint_keys()
if demo_keys:
    st.success(f"{len(demo_keys)} trained demo checkpoints are present.")
else:
    st.info("The trained demo checkpoints are missing. Prepare them here (or run "
            "`python -m toast_core prepare-demo`); until then the pages show random tiny models, labelled "
            "as untrained.")
pending = state.pending_demo_methods()
bg_status = state.background_status()
if pending or state.background_active(bg_status):
    from toast_core.demo import background

    with st.container(key="models-background", border=True):
        st.markdown("**Background training** — " + (
            f"missing: {', '.join(pending)}." if pending else "the last checkpoints are being written."))
        if state.background_active(bg_status):
            state.background_progress("models")
            st.caption(f"pid {bg_status.get('pid')} · log `{bg_status.get('log')}` · restarting the app does not "
                       "start a second training; stopping saves the state and the next start resumes from it.")
            if st.button("Stop (saves; the next start resumes)", key="bg-stop"):
                background.stop(Path(bg_status["log"]).parent, timeout=60)
                st.rerun()
        else:
            if bg_status:
                st.caption(f"Last background run: {background.describe(bg_status)}")
            quick_dir = any(state.is_quick(k) for k in demo_keys)
            if st.button("Train the missing ones in the background", key="bg-start"):
                got = background.start(quick=quick_dir, device=state.device())
                st.toast(f"Background training: {got['reason']}")
                st.rerun()
quick = st.checkbox("Quick (small task, few steps: minutes, for a first look)", key="prepare-quick")
complete = len(demo_keys) >= len(tc.available_methods())
if complete:
    st.caption("All seven demo checkpoints are present: nothing to prepare.")
if st.button("Prepare demo checkpoints", key="prepare-demo", disabled=complete or not state.prepare_demo_available()):
    bar = st.progress(0.0, text="Starting…")

    def progress(fraction: float, text: str) -> None:
        bar.progress(min(1.0, max(0.0, float(fraction))), text=text)

    try:
        state.prepare_demo(progress, quick=quick)
    except ToastError as e:
        st.error(f"prepare-demo failed: {e}")
    else:
        bar.progress(1.0, text="Done")
        st.success("Demo checkpoints ready.")
        st.rerun()
if not state.prepare_demo_available():
    st.caption("prepare-demo is not available in this installation.")

# -- your own checkpoints ----------------------------------------------------------------------------
st.subheader("Load your own checkpoint")
st.caption("This project's checkpoints: a `.safetensors` file written by `toast_core` (its config travels in "
           "the header). Files are read safely (safetensors, or torch with weights_only); nothing in them runs.")
extra = st.session_state.setdefault("extra_models", [])
up = st.file_uploader("Upload a checkpoint (.safetensors)", key="ckpt-upload")  # checked by content
limit_mb = st.get_option("server.maxUploadSize")
st.caption(f"Uploads are limited to {limit_mb} MB per file (a full fine-tuning checkpoint is about 86 MB). "
           + ("Load a larger one by its path on the server, below." if state.paths_allowed() else
              "For a larger one, start the app with a higher `--server.maxUploadSize`, or on localhost, "
              "where loading by path is allowed."))
if up is not None:
    done = st.session_state.setdefault("ckpt-upload-results", {})
    if up.file_id not in done:
        try:
            key = state.save_uploaded_checkpoint(up.name, up.getvalue())
            entry = state.load_model(key, state.device())
        except ToastError as e:
            done[up.file_id] = ("error", str(e))
        else:
            if key not in extra:
                extra.append(key)
            done[up.file_id] = ("ok", f"Loaded {entry.method} from {up.name}.")
            st.rerun()
    status, text = done[up.file_id]
    (st.success if status == "ok" else st.error)(text)

allowed = state.paths_allowed()
path = st.text_input("…or a checkpoint path on the server", key="ckpt-path", disabled=not allowed,
                     placeholder="/path/to/run/model.safetensors",
                     help="Also a folder saved by Hugging Face PEFT (adapter_config.json + adapter_model.safetensors): "
                          "a LoRA on a timm ViT's qkv loads as the lora method, on the default backbone unless "
                          "the adapter names another timm model.")
if not allowed:
    st.caption("Loading by path is disabled on this server (it serves beyond localhost). Upload instead.")
if st.button("Load from path", key="ckpt-path-load", disabled=not allowed or not path):
    target = state.resolve_checkpoint_path(path)
    try:
        if peft.is_peft_adapter(target):  # converted once into a checkpoint under TOAST_HOME/imported/
            with st.spinner("Converting the PEFT adapter…"):
                target = str(peft.as_checkpoint_path(target))
        key = f"ckpt:{target}"
        entry = state.load_model(key, state.device())
    except ToastError as e:
        st.error(f"Could not load {path}: {e}")
    else:
        if key not in extra:
            extra.append(key)
        st.rerun()

if extra:
    drop = st.multiselect("Your checkpoints in this session", extra, default=[], key="models-remove",
                          help="Select to remove from this session (the shared cache keeps the model).")
    if st.button("Remove selected", key="models-remove-go", disabled=not drop):
        st.session_state["extra_models"] = [k for k in extra if k not in drop]
        st.rerun()
