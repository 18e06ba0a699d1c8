"""Widgets of the pages that count from 1 or switch with the view (see also :mod:`app.state`).

Numbering, everywhere in the app: layers and heads are counted from 1 (layer 1 is nearest the pixels,
head 1 the first head); the functions return the 0-based index the library takes.
"""
from __future__ import annotations

from typing import Optional

import streamlit as st

#: diverging colormaps for signed maps (differences, signed attributions)
SIGNED_COLORMAPS = ["RdBu_r", "coolwarm", "PiYG", "seismic", "bwr"]
#: the one sentence the pages show about numbering
NUMBERING = "Layers and heads are counted from 1 (layer 1 is nearest the pixels)."


def head_control(key: str, num_heads: int, allow_all: bool = True) -> Optional[int] | str:
    """Head mean (None), one head (0-based int; shown 1..num_heads) or every head (``"all"``)."""
    options = ["mean", "one head"] + (["all heads"] if allow_all else [])
    if st.session_state.get(key) not in options:
        st.session_state[key] = "mean"
    mode = st.radio("Heads", options, key=key, horizontal=True)
    if mode == "one head":
        index_key = key + "-number"
        if not isinstance(st.session_state.get(index_key), int) or not 1 <= st.session_state[index_key] <= num_heads:
            st.session_state[index_key] = 1
        return int(st.number_input(f"Head (1–{num_heads})", 1, num_heads, key=index_key)) - 1
    return "all" if mode == "all heads" else None


def colormap_select(key: str, signed: bool, options: list[str], default: str = "inferno") -> str:
    """The colormap box: sequential maps for ordinary maps, diverging ones (``<key>-signed``) for
    signed maps, so the box always names the colormap that is drawn."""
    if signed:
        key, options, default, label = key + "-signed", SIGNED_COLORMAPS, SIGNED_COLORMAPS[0], "Colormap (signed)"
    else:
        label = "Colormap"
    if st.session_state.get(key) not in options:
        st.session_state[key] = default
    return st.selectbox(label, options, key=key,
                        help="Signed maps (differences) use a diverging colormap: blue below 0, red above."
                        if signed else None)
