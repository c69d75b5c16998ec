"""Train: start `lcd train` in a background process, follow it live, cancel it; finished runs appear in
the run picker. The process outlives page reloads and server restarts (a detached job of
lcd_core.backends; its progress is read from the run's log.jsonl)."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from app_ui import state, training, widgets
from lcd_core import LCDError
from lcd_core.model import DEFAULT_PRESET, PRESET_NAMES
from lcd_core.pl import loss_curve


def devices() -> list[str]:
    out = ["auto", "cpu"]
    try:
        import torch

        if torch.cuda.is_available():
            out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            out.append("mps")
    except ImportError:
        pass
    return out


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def new_training(screen) -> None:
    st.subheader("New training")
    src = st.radio("Data", ["the current screen", "upload an .h5ad", "a path on this machine"], horizontal=True,
                   key="tr_src")
    path = None
    if src == "the current screen":
        if screen is None or screen.path is None:
            st.warning("No screen is selected: choose one on Home.")
        else:
            path = screen.path
            st.caption(f"`{screen.path}` · {screen.adata.n_obs:,} cells · {screen.adata.n_vars} genes")
    elif src == "upload an .h5ad":
        up = st.file_uploader(f"Screen (.h5ad, at most {widgets.upload_limit_mb()} MB)", key="tr_upload")
        if up is not None:
            try:
                path = state.save_upload(up)
                state.load_screen(path)
            except LCDError as e:
                st.error(f"{up.name}: {e}")
                path = None
    else:
        typed = st.text_input("Path to an .h5ad file", key="tr_path")
        if typed:
            try:
                state.load_screen(Path(typed).expanduser())
                path = Path(typed).expanduser()
            except LCDError as e:
                st.error(f"{typed}: {e}")

    c1, c2, c3 = st.columns(3)
    preset = c1.selectbox("Preset", PRESET_NAMES, index=PRESET_NAMES.index(DEFAULT_PRESET), key="tr_preset",
                          help="auto: demo sized to the screen on a CPU, standard on a GPU; demo: minutes on a laptop "
                               "CPU; standard: one GPU, 1000 genes; paper: the authors' settings.")
    device = c2.selectbox("Device", devices(), key="tr_device")
    backend = c3.radio("Backend", ["local", "ray"], horizontal=True, key="tr_backend",
                       help="local: a process on this machine; ray: a Ray cluster (needs `pip install -e .[ray]`).")
    ray_address = None
    if backend == "ray":
        if not ray_available():
            st.warning("Ray is not installed here: `pip install -e .[ray]`, or train locally.")
        ray_address = st.text_input("Ray address (empty: a local Ray instance)", key="tr_ray") or None
    c1, c2 = st.columns(2)
    if "tr_name" not in st.session_state:  # a default once per session; the widget keeps what the user types
        st.session_state["tr_name"] = f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    name = c1.text_input("Run name", key="tr_name")
    seed = int(c2.number_input("Seed", 0, 1_000_000, 0, key="tr_seed"))
    with st.expander("Advanced"):
        holdout = st.text_input("Hold out combinations (A+B,C+D; empty: the screen's own split)", key="tr_holdout")
        overrides = st.text_area("Overrides, one key=value per line (e.g. stage2.steps=2000)", key="tr_overrides")
    if st.button("Start training", type="primary", disabled=path is None, key="tr_start"):
        try:
            job = training.start_training(path, name.strip(), preset=preset, device=device, backend=backend,
                                          ray_address=ray_address, holdout=holdout.strip() or None, seed=seed,
                                          overrides=[o.strip() for o in overrides.splitlines() if o.strip()],
                                          screen_options=st.session_state.get("screen_options")
                                          if src == "the current screen" else None)
            st.success(f"Started `{job.name}` (process {job.pid}).")
        except LCDError as e:
            widgets.show_error(e, "Training could not start")


@st.fragment(run_every=2.0)
def progress_panel() -> None:
    """Live progress of every training started from the app; reruns every 2 s by itself."""
    jobs = training.trainings()
    st.subheader("Trainings")
    if not jobs:
        st.caption("None yet.")
        return
    for job in jobs:
        prog = training.training_progress(job)
        state_ = job.state
        req = job.request
        with st.container(border=True):
            head = f"**{job.name}** · {req.preset} · {req.device} · {req.backend} · **{state_}**"
            st.markdown(head)
            if state_ == "running":
                total = max(prog["total"], 1)
                stage = prog["stage"] or "starting"
                loss = f"{prog['loss']:.4g}" if isinstance(prog["loss"], (int, float)) else "–"
                st.progress(min(prog["step"] / total, 1.0),
                            text=f"{stage}: step {prog['step']}/{prog['total']} · loss {loss} · "
                                 f"ETA {training.fmt_seconds(prog['eta'])} (this stage)")
                if st.button("Cancel", key=f"cancel_{job.name}"):
                    job.cancel()
                    st.rerun(scope="app")
            elif state_ in ("failed", "cancelled"):
                if state_ == "failed":
                    st.error("Training stopped with an error:")
                    st.code(prog["tail"].strip().splitlines()[-1] if prog["tail"].strip() else "(no output)",
                            language=None)
                if st.button("Resume from the last checkpoint", key=f"resume_{job.name}"):
                    try:
                        training.resume_training(job)
                        st.rerun(scope="app")
                    except LCDError as e:
                        widgets.show_error(e, "Resume")
            elif state_ == "complete":
                st.success(f"Finished: `{job.out}`; it is in the model picker.")
                if st.button("Use this run", key=f"use_{job.name}"):
                    st.session_state["run_path"] = str(job.out)
                    st.rerun(scope="app")
            if len(prog["history"]):
                st.plotly_chart(loss_curve(prog["history"]), key=f"loss_{job.name}")
    if any(job.state == "running" for job in jobs):
        st.session_state["_was_training"] = True
    elif st.session_state.pop("_was_training", False):
        st.rerun(scope="app")  # a training just ended: refresh the run picker


def main() -> None:
    screen, _ = widgets.page_setup("Train", "🏋️")
    st.title("Train a model")
    new_training(screen)
    progress_panel()


main()
