"""The app's entry script: page navigation only. Run from the repository root::

    streamlit run app/main.py --server.headless true --server.address 127.0.0.1 \
        --browser.gatherUsageStats false

(the same settings are in ``.streamlit/config.toml``). Each page is a module under ``app/views/``.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import state  # noqa: E402

# The page icon is a local PNG (a ``:material/...:`` page icon makes the browser fetch an SVG from
# fonts.gstatic.com on every load; the app sends no request anywhere but to its own server).
ICON = ROOT / "app" / "static" / "icon.png"
st.set_page_config(page_title="Where do transfer methods look?", page_icon=str(ICON), layout="wide")
st.html(ROOT / "app" / "static" / "app.css")  # a <style> only: no element on the page
state.keep_widget_state()
page = st.navigation([
    st.Page("views/compare.py", title="Compare", icon=":material/compare:", default=True),
    st.Page("views/layers.py", title="Layers", icon=":material/layers:"),
    st.Page("views/inspector.py", title="TOAST inspector", icon=":material/center_focus_strong:"),
    st.Page("views/analysis.py", title="Analysis", icon=":material/analytics:"),
    st.Page("views/data.py", title="Your data", icon=":material/dataset:"),
    st.Page("views/models.py", title="Models", icon=":material/inventory_2:"),
    st.Page("views/export.py", title="Export", icon=":material/picture_as_pdf:"),
])
page.run()
