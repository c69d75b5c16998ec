"""Widgets shared by the pages: the sidebar frame, the run picker, error boxes and exports."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import pandas as pd
import streamlit as st

from lcd_core import LCDError, __version__

from . import state


def show_error(e: BaseException, what: str = "") -> None:
    """An LCDError (bad input, missing run, ...) as a red box with its message; the page goes on."""
    prefix = f"{what}: " if what else ""
    if isinstance(e, LCDError):
        st.error(f"{prefix}{e}")
    else:  # a bug: say so, keep the traceback visible for the report
        st.error(f"{prefix}unexpected {type(e).__name__}: {e}")
        with st.expander("details"):
            st.code("".join(traceback.format_exception(e)))


def upload_limit_mb() -> int:
    return int(st.get_option("server.maxUploadSize"))


def page_setup(title: str, icon: str = "🧬", *, run_in_sidebar: bool = True) -> tuple[object | None, str | None]:
    """Page config, session state and the sidebar below the navigation (version, the session's screen,
    and the run picker unless the page shows it itself). Returns ``(screen, run path)``; an unreadable
    screen is reported and gives ``None``.

    Each page calls it first, not app.py around ``page.run()``: AppTest (and a fresh server's first
    request for a page URL) runs a page file of ``pages/`` without the entry script.
    """
    st.set_page_config(page_title=f"{title} · LCD Explorer", page_icon=icon, layout="wide")
    state.init_state()
    screen = None
    try:
        screen = state.current_screen()
    except LCDError as e:
        st.sidebar.error(f"Screen: {e}")
    with st.sidebar:
        st.caption(f"lcd-explorer {__version__}")
        if screen is not None:
            src = st.session_state.get("screen_source", "demo")
            st.markdown(f"**Screen** ({src}): `{Path(screen.path).name if screen.path else 'in memory'}`  \n"
                        f"{screen.adata.n_obs:,} cells · {screen.adata.n_vars} genes · {len(screen.conditions)} conditions")
        if run_in_sidebar:
            run_picker(screen, where="sidebar")
    return screen, state.current_run()


#: the run picker's entry for "no model": a screen that no run belongs to does not get another screen's model
NO_RUN = ""


def run_picker(screen, *, where: str = "main") -> str | None:
    """Select box over complete runs, those that belong to the screen first (trained on it, or on the
    same genes); others are marked "(other genes)". When none belongs to the screen, the first entry is
    "no model", so an uploaded screen never silently gets the demo's model. Stores ``run_path``."""
    box = st.sidebar if where == "sidebar" else st
    runs = [r for r in state.list_runs() if r.complete]
    fits = {str(r.path): state.run_fits(r, screen) for r in runs}
    order = {"same screen": 0, "same genes": 1, "other genes": 2}
    runs.sort(key=lambda r: order[fits[str(r.path)]])
    if not runs:
        box.warning("No trained model yet: train one on the **Train** page (the demo preset takes minutes on a CPU).")
        st.session_state["run_path"] = None
        return None
    paths = [str(r.path) for r in runs]
    names = {str(r.path): r.name + {"same screen": "", "same genes": " (same genes)",
                                    "other genes": " (other genes: not this screen's model)"}[fits[str(r.path)]]
             for r in runs}
    if screen is not None and fits[paths[0]] == "other genes":
        paths.insert(0, NO_RUN)
        names[NO_RUN] = "none: no model belongs to this screen yet (train one)"
    cur = st.session_state.get("run_path") or NO_RUN
    index = paths.index(cur) if cur in paths else 0
    # no widget key: the value lives in session_state["run_path"], so it survives page switches
    choice = box.selectbox("Model (run)", paths, index=index, format_func=lambda p: names[p],
                           help="Runs in the runs/ folder and the shipped runs; those trained on this screen "
                                "(or on its genes) first. Train new ones on the Train page.")
    st.session_state["run_path"] = choice or None
    return choice or None


def require_model(screen, run_path: str | None):
    """The loaded model of the session's run, or ``None`` after explaining what to do."""
    if run_path is None:
        st.warning("No model is selected. Pick a run in the sidebar, or train one on the **Train** page "
                   "(the demo preset takes a few minutes on a laptop CPU).")
        st.page_link("pages/4_Train.py", label="Go to Train", icon=":material/model_training:")
        return None
    try:
        return state.load_model(run_path)
    except LCDError as e:
        show_error(e, "The model could not be loaded")
        return None


def dashes(df: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """A table for display: numbers rounded to ``digits`` significant digits, missing values as "–"
    (Streamlit would print "None"); the downloads keep the numbers."""
    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = [("–" if pd.isna(v) else f"{v:.{digits}g}") for v in out[c]]
        elif out[c].dtype == object:
            out[c] = out[c].map(lambda v: "–" if v is None or (isinstance(v, float) and pd.isna(v)) else v)
    return out


# ------------------------------------------------------------------------------------------ exports
def provenance(screen, run_path: str | Path | None, **extra) -> dict:
    """What every export is stamped with: data set, run, seed, version (+ the call's parameters)."""
    prov = {"data_hash": getattr(screen, "data_hash", None), "data": str(getattr(screen, "path", "")),
            "run": str(run_path) if run_path else None, "version": __version__}
    if run_path:
        try:
            prov["seed"] = state.load_model(run_path).info.get("seed")
        except LCDError:
            pass
    prov.update(extra)
    return prov


def csv_bytes(df: pd.DataFrame, *, sep: str = ",") -> bytes:
    """A table as plain CSV/TSV, header first (as lcd_core writes them): Excel, R and pandas open it as it is."""
    return df.to_csv(index=False, sep=sep).encode()


def provenance_button(prov: dict, file_name: str, *, key: str, where=None) -> None:
    """A download of the provenance of the tables beside it, named as the CLI's sidecar of ``file_name``
    (``effects.csv`` → ``effects.provenance.json``): a second, optional file rather than a zip, so the
    table itself still opens with a double click."""
    from lcd_core.tl import provenance_json, provenance_path

    text = provenance_json(json.loads(json.dumps(prov, default=str)))
    (where or st).download_button("Provenance (JSON)", text.encode(), provenance_path(file_name).name,
                                  "application/json", key=key,
                                  help="Data set hash, run, seed, package version and the settings behind the tables")
