"""``python tests/browser/digest_server.py run app/main.py [streamlit options]``: exactly ``python -m
streamlit run ...`` plus a watcher thread that, on request, hashes the models the server has cached.

The tests use it to check that serving many sessions leaves the shared models untouched: they write
``$TOAST_DIGEST_DIR/request`` and read ``$TOAST_DIGEST_DIR/digests.json``, which holds, for every base
model key of the app, ``{"digest": sha256 of every parameter and buffer, "object": id() of the cached
model}`` (the id shows the same cached object served every session). The models are fetched through
the app's own ``state.load_model`` (``st.cache_resource``), i.e. the very objects sessions use.
Test-only: the app itself never imports this.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _digests() -> dict:
    import logging

    # calling the cached loader from this thread is fine; silence "missing ScriptRunContext"
    logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").setLevel(logging.ERROR)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from app import state
    from toast_core.compare import parameter_digest

    keys, _ = state.base_model_keys()
    dev = state.device()
    out = {}
    for key in keys:
        entry = state.load_model(key, dev)
        out[key] = {"digest": parameter_digest(entry.model), "object": id(entry.model),
                    "requires_grad": any(p.requires_grad for p in entry.model.parameters()),
                    "training": bool(entry.model.training)}
    return out


def _watch(directory: Path) -> None:
    request, result = directory / "request", directory / "digests.json"
    while True:
        if request.exists():
            try:
                payload = {"ok": True, "models": _digests(), "time": time.time()}
            except Exception:  # noqa: BLE001 - report, never kill the server
                payload = {"ok": False, "error": traceback.format_exc()}
            tmp = result.with_suffix(".tmp")
            tmp.write_text(json.dumps(payload))
            os.replace(tmp, result)
            request.unlink(missing_ok=True)
        time.sleep(0.1)


def main() -> None:
    directory = Path(os.environ["TOAST_DIGEST_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    threading.Thread(target=_watch, args=(directory,), name="digest-watcher", daemon=True).start()
    from streamlit.web.cli import main as streamlit_main

    sys.argv = ["streamlit", *sys.argv[1:]]
    streamlit_main(prog_name="streamlit")


if __name__ == "__main__":
    main()
