"""Train: start `lcd train` in a background process, follow it live, cancel it; finished runs appear in
the run picker. The process outlives page reloads and server restarts (a detached job of
lcd_core.backends; its progress is read from the run's log.jsonl)."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from app_ui import results, state, training, widgets
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


def _set_holdout(text: str) -> None:
    st.session_state["tr_holdout"] = st.session_state["_tr_holdout_saved"] = text


def holdout_box(data) -> str | None:
    """The held-out combinations: the proposal of lcd_core.pp.propose_heldout (the paper's split
    protocol) for this screen, which the user can accept, edit or clear. Returns the comma-separated
    labels, ``""`` for none, or ``None`` when the box holds labels the screen does not have."""
    from lcd_core.pp import explicit_split, propose_heldout

    proposal = results.memo(("heldout-proposal", data.data_hash), lambda: propose_heldout(data))
    proposed = ", ".join(proposal["heldout"])
    if st.session_state.get("_tr_holdout_for") != data.data_hash:  # a new screen: its own proposal
        st.session_state["_tr_holdout_for"] = data.data_hash
        st.session_state["_tr_holdout_saved"] = proposed
    if "tr_holdout" not in st.session_state:  # back on the page: what the user left here
        st.session_state["tr_holdout"] = st.session_state.get("_tr_holdout_saved", proposed)
    st.markdown("**Held out for the benchmark** (never seen in training; Benchmark scores the model on them)")
    st.caption(f"Proposed: {proposal['why']}")
    text = st.text_area("Held-out combinations (comma-separated, e.g. A+B, C+D)", key="tr_holdout", height=68)
    st.session_state["_tr_holdout_saved"] = text
    c1, c2, _ = st.columns([1, 1, 3])
    c1.button("Use the proposal", key="tr_holdout_propose", on_click=_set_holdout, args=(proposed,),
              disabled=text.strip() == proposed)
    c2.button("Hold out nothing", key="tr_holdout_clear", on_click=_set_holdout, args=("",), disabled=not text.strip())
    labels = [c.strip() for c in text.replace("\n", ",").split(",") if c.strip()]
    if not labels:
        shipped = (getattr(data, "split", None) or {}).get("heldout")
        st.caption("Empty: the screen's own split is used." if shipped is not None and len(shipped) else
                   "Empty: nothing is held out, so Benchmark will have nothing to score for this run.")
        return ""
    try:
        canon = explicit_split(data, labels)["test"]
    except LCDError as e:
        st.error(f"Held-out combinations: {e}")
        return None
    return ",".join(canon)


def new_training(screen) -> None:
    st.subheader("New training")
    src = st.radio("Data", ["the current screen", "upload an .h5ad", "a path on this machine"], horizontal=True,
                   key="tr_src")
    path, data = None, None
    if src == "the current screen":
        if screen is None or screen.path is None:
            st.warning("No screen is selected: choose one on Home.")
        else:
            path, data = screen.path, screen
            st.caption(f"`{screen.path}` · {screen.adata.n_obs:,} cells · {screen.adata.n_vars} genes")
    elif src == "upload an .h5ad":
        up = st.file_uploader(f"Screen (.h5ad, at most {widgets.upload_limit_mb()} MB)", key="tr_upload")
        if up is not None:
            try:
                path = state.save_upload(up)
                data = state.load_screen(path)
            except LCDError as e:
                st.error(f"{up.name}: {e}")
                path = None
    else:
        typed = st.text_input("Path to an .h5ad file", key="tr_path")
        if typed:
            try:
                data = state.load_screen(Path(typed).expanduser())
                path = Path(typed).expanduser()
            except LCDError as e:
                st.error(f"{typed}: {e}")
    holdout = holdout_box(data) if data is not None else ""

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
        overrides = st.text_area("Overrides, one key=value per line (e.g. stage2.steps=2000)", key="tr_overrides")
    if st.button("Start training", type="primary", disabled=path is None or holdout is None, key="tr_start"):
        try:
            job = training.start_training(path, name.strip(), preset=preset, device=device, backend=backend,
                                          ray_address=ray_address, holdout=holdout or None, seed=seed,
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
                                 f"{training.eta_text(prog)}")
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
                st.plotly_chart(loss_curve(prog["history"]), key=f"loss_{job.name}",
                                config={"displaylogo": False})
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
