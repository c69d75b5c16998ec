"""LCD Explorer: the router (navigation over :data:`PAGES`) and the Home page (which screen, which model,
what the app does).

Run with ``streamlit run app.py``. The other pages live in ``pages/``, listed in :data:`PAGES`
(``st.navigation``; the one navigation: no hand-drawn links). Each page draws the shared sidebar
frame itself (``app_ui.widgets.page_setup``). All science lives in ``lcd_core``, UI-only helpers in
``app_ui/``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app_ui import results, state, training, widgets
from lcd_core import LCDError

ABOUT = (
    "**LCD (latent causal diffusion)** learns how a cell's gene expression behaves as a noisy dynamical "
    "system: every cell is a snapshot of that system at rest, seen through sequencing noise, and a genetic "
    "perturbation (CRISPRi knock-down, CRISPRa activation) nudges the system's rules. Because the model "
    "learns the rules rather than memorising conditions, it predicts whole *populations* of cells for "
    "perturbations it has never seen, including combinations of genes that were only perturbed one at a "
    "time. **CLIPR** then reads the learned rules as a map of direct gene-to-gene effects (who activates "
    "or represses whom), which the app groups into functional modules. Start on **Perturb** to ask "
    "*what happens if…?*, or on **Causal graph** to browse regulators and targets."
)


REAL_SCREEN_NOTE = (
    "Real data: 3,375 K562 cells × 500 highly variable genes of Norman et al. 2019 (Science 365:786, GEO "
    "GSE133344; CRISPRa), control + 18 singles + 15 doubles, as subset by the PerturBench benchmark (Altos Labs, "
    "BSD-3-Clause, assets/LICENSE-norman2019_k562_subset.txt). The file holds log-normalised values; LCD recovers "
    "the integer counts from them. The shipped model holds out the 5 doubles whose two singles were measured.")


def reading_options() -> dict:
    """How to read a file whose conventions are not detected (the fix the error messages name)."""
    with st.expander("Reading options (when the perturbation column is not detected)"):
        c1, c2, c3 = st.columns(3)
        return {"perturbation_key": c1.text_input("Perturbation column", key="opt_pert_key").strip() or None,
                "control_label": c2.text_input("Control label", key="opt_control").strip() or None,
                "combo_sep": c3.text_input("Combination separator", key="opt_sep").strip() or None}


def screen_chooser() -> None:
    cfg = state.settings()
    options = ["demo", "real", "upload", "path"]
    labels = {"demo": "Embedded demo (simulated)", "real": "Real: Norman 2019 K562 CRISPRa subset",
              "upload": "Upload an .h5ad", "path": "A file on this machine"}
    src = st.session_state.get("screen_source", "demo")
    choice = st.radio("Screen", options, index=options.index(src) if src in options else 0,
                      format_func=labels.get, horizontal=True)
    options = reading_options() if choice not in ("demo", "real") else {}
    if choice == "real":
        if not cfg.real_screen.exists():
            st.error(f"The shipped real screen is missing ({cfg.real_screen}); reinstall, or upload a screen.")
            return
        st.caption(REAL_SCREEN_NOTE)
        _use_screen(cfg.real_screen, "real")
    elif choice == "demo":
        if cfg.demo_screen is None or not cfg.demo_screen.exists():
            st.error("The embedded demo screen is missing (assets/demo_screen.h5ad); reinstall, or upload a screen.")
            return
        _use_screen(cfg.demo_screen, "demo")
    elif choice == "upload":
        up = st.file_uploader(f"Perturb-seq screen (.h5ad, at most {widgets.upload_limit_mb()} MB)", key="upload",
                              help="Raw UMI counts in .X or layers['counts']; obs['perturbation'] with ctrl / A / A+B "
                                   "(GEARS and scPerturb conventions are detected).")
        if up is not None:
            try:
                path = state.save_upload(up)
            except LCDError as e:
                _refused(up.name, e, "upload")
                return
            _read_file(path, up.name, "upload", options)
    else:
        # a keyed widget keeps what the user typed last (an unkeyed one whose value= follows the session
        # would be re-created on each entry and fall back to an older value); its value is copied to
        # "typed_path", which survives page switches (Streamlit forgets keyed widgets of unshown pages)
        if "home_path" not in st.session_state:
            st.session_state["home_path"] = st.session_state.get("typed_path", "")
        typed = st.text_input("Path to an .h5ad file", key="home_path", placeholder="/data/norman2019.h5ad").strip()
        st.session_state["typed_path"] = typed
        if typed:
            _read_file(Path(typed).expanduser(), typed, "path", options)


def _refused(name: str, e: LCDError, source: str) -> None:
    """A file that could not be read: say why, and forget the previous screen so that no number, banner
    or model of it stays on the page (the sidebar included: hence the rerun)."""
    st.error(f"{name}: {e}")
    if st.session_state.get("screen_path") is not None:
        state.clear_screen()
        st.session_state["screen_source"] = source
        st.rerun()


def context_picker(path: Path) -> tuple[str, ...]:
    """One select box per obs column that splits the file's cells into contexts (cell types, cell
    lines, replicates…), with cell counts; returns the chosen ``"key=value"`` contexts. Biological
    contexts default to the largest one (training refuses to pool them), replicates to all cells."""
    contexts = state.file_contexts(path)
    if not contexts:
        return ()
    st.markdown("**Contexts in this file**: the screen shown and trained is the cells of the chosen context.")
    chosen = []
    cols = st.columns(min(len(contexts), 3))
    for i, ctx in enumerate(contexts):
        values = list(ctx.counts)
        pooled = f"all {sum(ctx.counts.values()):,} cells (pooled)"
        choices = [""] + values
        default = 1 if ctx.kind == "biological" else 0
        value = cols[i % len(cols)].selectbox(
            f"{ctx.key} ({len(values)} {ctx.noun})", choices, index=default, key=f"ctx_{ctx.key}",
            format_func=lambda v, ctx=ctx, pooled=pooled: pooled if v == "" else f"{v} ({ctx.counts[v]:,} cells)",
            help=("Different biology: the model is trained on one at a time (pooling them is refused)."
                  if ctx.kind == "biological" else "Usually pooled; choose one to check for batch effects."))
        if value:
            chosen.append(f"{ctx.key}={value}")
    return tuple(chosen)


def _read_file(path: Path, name: str, source: str, options: dict) -> None:
    subset = context_picker(path) if Path(path).is_file() else ()
    if subset:
        options = {**options, "subset": subset}
    try:
        state.load_screen(path, options)
    except LCDError as e:
        _refused(name, e, source)
        return
    _use_screen(path, source, options)


def _use_screen(path: Path, source: str, options: dict | None = None) -> None:
    path = str(Path(path).resolve())
    options = {k: v for k, v in (options or {}).items() if v}
    if st.session_state.get("screen_path") != path or st.session_state.get("screen_options", {}) != options:
        st.session_state["screen_path"] = path
        st.session_state["screen_options"] = options
        st.session_state["screen_source"] = source
        try:
            run = state.default_run(state.current_screen())
        except LCDError:
            run = None
        st.session_state["run_path"] = str(run) if run else None
        st.rerun()  # the sidebar (drawn before this) shows the new screen and model
    else:
        st.session_state["screen_source"] = source


@st.fragment(run_every=3.0)
def trainings_in_progress() -> None:
    """Trainings running in the background (started here or on the Train page); reruns the page when
    one finishes, so its run appears in the picker."""
    running = [job for job in training.trainings() if job.state == "running"]
    for job in running:
        prog = training.training_progress(job)
        st.progress(min(prog["step"] / max(prog["total"], 1), 1.0),
                    text=f"Training `{job.name}`: {prog['stage'] or 'starting'} step {prog['step']}/{prog['total']}"
                         f" · {training.eta_text(prog)}")
    if running:
        st.session_state["_home_training"] = True
    elif st.session_state.pop("_home_training", False):
        st.rerun(scope="app")


def fit_sentence(run: str) -> None:
    """How well the run reproduces its training conditions (its fit.json), in words; nothing for a run
    that has no fit report (older runs: ``lcd fit RUN --data SCREEN`` writes one)."""
    from lcd_core.model import read_fit

    fit = read_fit(run)
    if fit is None:
        return
    s = fit["summary"]
    text = f"**Fit check:** this model {s.get('sentence', '')}."
    if s.get("median_r") is not None:
        text += (f" Median over conditions: top-{fit.get('top', 20)} shift correlation {s['median_r']:.2f} "
                 f"(replicate ceiling {s['median_r_ceiling']:.2f}), magnitude {s['median_magnitude']:.2f} of observed.")
    (st.success if not s.get("outside") else st.info)(text)
    with st.expander("How the fit check works"):
        st.markdown(fit.get("rule", ""))


def support_panel(screen) -> None:
    """Which pages the screen supports and why, before any training (lcd_core.data.supported_pages)."""
    from lcd_core.data import supported_pages

    report = supported_pages(screen)
    text = "\n".join(f"- {line}" for line in report.lines())
    head = ("**What this screen supports** (before any training):" if not report.unsupported else
            f"**Not every page will work on this screen** ({len(report.unsupported)} of {len(report.pages)} "
            "features need something it lacks; read why before training):")
    (st.warning if report.unsupported else st.success)(f"{head}\n\n{text}")
    if report.unmeasured_targets and report.unsupported:
        st.caption("LCD Explorer models every gene the file holds, so a perturbed gene can reach the causal graph "
                   "only if the file measures it. To use CLIPR on this screen, export it from the raw data again "
                   "with the perturbed genes kept among the genes (lcd_core.pp.add_measured_targets adds every "
                   "measured target to a gene selection) and choose that file here.")
    if report.dropped_targets:  # a selection narrower than the file (not what `lcd train` does, said for scripts)
        st.caption(f"{len(report.dropped_targets)} perturbed genes are in the file but would not be modelled: "
                   "keep them in the gene selection (lcd_core.pp.add_measured_targets).")


def quick_train(screen) -> None:
    """One button: the demo preset on this screen, holding out the doubles the Train page proposes."""
    from lcd_core.pp import propose_heldout

    proposal = propose_heldout(screen)
    held = proposal["heldout"] if proposal["source"] != "shipped" else []
    if st.button("Train a model on this screen now (demo preset, a few minutes)", type="primary"):
        try:
            job = training.start_training(screen.path, f"demo-{len(training.trainings()) + 1}", preset="demo",
                                          holdout=",".join(held) or None,
                                          screen_options=st.session_state.get("screen_options"))
            st.success(f"Training started in the background: run `{job.name}`. Follow it on the Train page.")
        except LCDError as e:
            widgets.show_error(e, "Training could not start")
    st.caption(f"Held out for the benchmark: {proposal['why']} Change it on the Train page.")


def home() -> None:
    widgets.page_setup("Home", run_in_sidebar=False)
    st.title("LCD Explorer")
    st.markdown(ABOUT)

    st.subheader("1 · The screen")
    screen_chooser()
    try:
        screen = state.current_screen()
    except LCDError as e:
        widgets.show_error(e, "The screen could not be read")
        screen = None
    if screen is None:
        st.info("No screen is selected: choose the demo, the real screen, or a file above.")
    else:
        s = screen.summary()
        cols = st.columns(5)
        cols[0].metric("cells", f"{s['n_cells']:,}")
        cols[1].metric("genes", s["n_genes"])
        cols[2].metric("singles", s["n_singles"])
        cols[3].metric("combinations", s["n_combos"])
        cols[4].metric("control cells", f"{s['n_control_cells']:,}")
        if s["simulated"]:
            st.info("This screen is **simulated**: it ships its true causal graph and modules, so the pages show "
                    "truth beside the estimate.")
        support_panel(screen)
        with st.expander("What the screen contains", expanded=False):
            st.code(screen.format_summary(), language=None)

    st.subheader("2 · The model")
    if screen is None:
        st.markdown("Choose a screen first.")
        return
    run = widgets.run_picker(screen)
    if run is None:
        st.markdown("No model is ready for this screen yet.")
        trainings_in_progress()
        quick_train(screen)
        st.page_link("pages/4_Train.py", label="Train page", icon=":material/model_training:")
        return
    model = widgets.require_model(screen, run)
    if model is None:
        return
    info = model.info
    st.success(f"Model ready: `{Path(run).name}` · {len(model.genes)} genes · {len(model.conditions)} training "
               f"conditions · {len(info.get('heldout', []))} held out · preset {info.get('preset')} · seed {info.get('seed')}")
    if not state.same_genes(model, screen):
        st.warning("This run models other genes than the selected screen: predictions work, comparisons with "
                   "observed cells and the benchmark need the screen the run was trained on.")
    fit_sentence(run)
    results.warm_perturb(run, model, screen)
    c1, c2, c3 = st.columns(3)
    c1.page_link("pages/1_Perturb.py", label="Perturb: what happens if…?", icon=":material/science:")
    c2.page_link("pages/2_Causal_graph.py", label="Causal graph", icon=":material/hub:")
    c3.page_link("pages/3_Modules.py", label="Modules", icon=":material/grid_view:")


#: every page of the app, in the order of the navigation (the entry page reads "Home", not "app")
PAGES = [st.Page(home, title="Home", icon=":material/home:", default=True),
         st.Page("pages/1_Perturb.py", title="Perturb", icon=":material/science:"),
         st.Page("pages/2_Causal_graph.py", title="Causal graph", icon=":material/hub:"),
         st.Page("pages/3_Modules.py", title="Modules", icon=":material/grid_view:"),
         st.Page("pages/4_Train.py", title="Train", icon=":material/model_training:"),
         st.Page("pages/5_Benchmark.py", title="Benchmark", icon=":material/leaderboard:")]


try:
    state.share_cores(state.settings().threads)
except LCDError as e:
    st.error(str(e))
    st.stop()
st.navigation(PAGES).run()
