"""LCD Explorer, entry page: which screen, which model, what the app does.

Run with ``streamlit run app.py``. Pages live in ``pages/``; all science lives in ``lcd_core``.
"""

from __future__ import annotations

import streamlit as st

from lcd_core import LCDError, __version__

st.set_page_config(page_title="LCD Explorer", page_icon="🧬", layout="wide")


@st.cache_resource(show_spinner="Loading the demo screen…")
def _demo_screen():
    # cache_resource: one shared, read-only Screen for every session
    from lcd_core.data import read_screen
    from lcd_core.simulation import demo_screen_path

    return read_screen(demo_screen_path())


def main() -> None:
    st.title("LCD Explorer")
    st.caption(f"lcd-explorer {__version__}")
    st.markdown(
        "Ask a Perturb-seq screen *what would happen if…?* **LCD** (latent causal diffusion) learns a "
        "generative model of single-cell expression: each cell is a draw from the stationary state of a "
        "stochastic dynamical system, seen through count noise, and a perturbation shifts that system. "
        "The model therefore predicts whole distributions of cells, also for combinations of perturbations "
        "never measured. **CLIPR** reads the learned dynamics out as a matrix of direct gene-to-gene causal "
        "effects, which the app groups into functional modules."
    )
    try:
        screen = _demo_screen()
    except LCDError as e:
        st.error(f"The embedded demo screen could not be read: {e}")
        return
    st.subheader("Screen: embedded demo (simulated)")
    st.text(screen.format_summary())


main()
