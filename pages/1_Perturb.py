"""Perturb: what happens to the cells if I perturb these genes?

LCD mode samples whole cell populations from the trained model (singles, doubles, any gene set of the
screen's kind, unseen combinations included). Linear what-if mode moves the model's control cells by
CLIPR's linear response to a knock-down or activation of any modelled gene.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app_ui import results, state, widgets
from app_ui.jobs import run_job
from lcd_core import KEYS, LCDError
from lcd_core.clipr import CLIPR, VARIANTS
from lcd_core.data._conventions import targets_of
from lcd_core.model import (FIT_FILE, IntervalSources, condition_fit, h5ad_bytes, no_change_check,
                            prediction_anndata, read_fit)
from lcd_core.pl import embedding_scatter, gene_violins, gi_map, gi_scatter, shift_bars, shift_scatter
from lcd_core.tl import (INTERACTION_CLASSES, INTERACTION_COLUMNS, baseline_predictions, compare_methods,
                         double_interaction, gene_response_table, gene_shift_table, interaction_map,
                         interaction_shifts, singular_response, whatif_cells)

SHOW_METRICS = ["mmd", "energy", "wasserstein", "rmse", "pearson_delta", "pearson_systema", "de_auroc"]
LCD_MODE, WHATIF_MODE = "LCD (distribution)", "Linear what-if (CLIPR)"
NOT_REPRODUCED = " ⚠ not reproduced"
#: cells per condition when every condition is predicted for the gene-response table (all conditions at
#: 100 cells take ~72 s on the demo's 2-core CPU)
RESPONSE_CELLS = [30, 50, 100]


def run_fit(run) -> dict | None:
    """The run's fit report (fit.json), read again only when the file changes (`lcd fit` rewrites it)."""
    path = Path(run) / FIT_FILE
    stamp = path.stat().st_mtime_ns if path.is_file() else None
    return results.memo(("fit", state.run_key(run), stamp), lambda: read_fit(run))


def not_reproduced(fit: dict | None) -> set[str]:
    """Training conditions the fit check says the model does not reproduce within replicate noise."""
    return {c for c, e in ((fit or {}).get("conditions") or {}).items() if e.get("status") == "outside"}


def to_whatif(genes: list[str]) -> None:
    """Button callback: switch to the what-if mode with ``genes`` chosen (before the widgets are drawn)."""
    st.session_state["pert_mode"] = WHATIF_MODE
    st.session_state["wi_genes"] = list(genes)


def choose_lcd(model, screen, fit: dict | None = None) -> str | None:
    """Widgets of LCD mode; returns the canonical label of the chosen perturbation. Conditions the run's
    fit check says it does not reproduce are marked in the pickers."""
    bad = not_reproduced(fit)
    heldout = set(model.info.get("heldout", []))
    trained = set(model.conditions)
    doubles = results.double_choices(model, screen)
    singles = sorted({c for c in model.conditions if len(targets_of(c)) == 1})

    def tag(c: str) -> str:
        if c in heldout:
            return f"{c}  (held out: unseen by the model, observed)"
        if c not in trained:
            return f"{c}  (not in training)"
        return f"{c}  (in training){NOT_REPRODUCED if c in bad else ''}"

    kind = st.radio("Perturbation", ["double", "single", "any gene set"], horizontal=True, key="pert_kind")
    if kind == "double":
        if not doubles:
            st.info("This screen has no double perturbations; pick 'any gene set' to compose one.")
            return None
        return st.selectbox("Double", doubles, format_func=tag, key="pert_double")
    if kind == "single":
        return st.selectbox("Single", singles, format_func=tag, key="pert_single")
    genes = st.multiselect("Genes (1–4; any gene the model has an embedding for)", model.pert_genes,
                           max_selections=4, key="pert_set",
                           help="Genes never perturbed in training use the mean of the trained embeddings.")
    return KEYS.COMBO_SEP.join(sorted(genes)) if genes else None


def umap_block(run, screen, model, predicted: dict[str, np.ndarray], observed: list[str]) -> None:
    """Predicted cells and the measured cells of the ``observed`` labels on the reference embedding,
    optionally with density contours or coloured by one gene's expression."""
    emb = results.embedding(run, screen)
    if emb is None:
        return
    c1, c2 = st.columns([1, 2])
    contours = c1.checkbox("Density contours", value=False, key="umap_contours",
                           help="Contour lines of the predicted and the observed cells' density, in their colours.")
    gene = c2.selectbox("Colour cells by gene", model.genes, index=None, key="umap_gene",
                        placeholder="by condition (predicted / observed)",
                        help="Colour control, observed and predicted cells by one gene's expression (log1p CP10k).")
    same = state.same_genes(model, screen)

    def xy_of(k: str):
        # measured cells: projected once per (run, screen, embedding, label), not at every rerun. Done here,
        # when the chart needs them: started beside the sampling, the projection slowed a new double →
        # updated UMAP (median 1.72 → 2.06 s on the 2-core benchmark; both compete for the cores)
        return results.memo(("observed_xy", state.run_key(run), screen.data_hash, emb.method, k),
                            lambda: emb.transform(screen.log1p(k)))

    try:
        pred_xy = {k: emb.transform(v) for k, v in predicted.items()}
        obs_xy = {k: xy_of(k) for k in observed}
        expression = None
        if gene is not None:
            j = list(model.genes).index(gene)
            expression = {"predicted": {k: v[:, j] for k, v in predicted.items()}}
            if same:  # the screen measures the model's genes: observed cells and control by the same gene
                expression["observed"] = {k: screen.log1p(k)[:, j] for k in observed}
                expression["control"] = screen.log1p(KEYS.CONTROL)[:, j]
    except LCDError as e:
        widgets.show_error(e, "Projection into the reference embedding failed")
        return
    method = "UMAP" if emb.method == "umap" else "PC"
    if expression is not None and "control" in expression:
        ctrl_xy = xy_of(KEYS.CONTROL)  # every control cell, in the order of its expression values
    else:
        ctrl_xy = emb.coords[emb.labels == KEYS.CONTROL]
    fig = embedding_scatter(emb.coords, obs_xy, pred_xy, control=ctrl_xy, method=method, contours=contours,
                            expression=expression, expression_name=gene or "expression")
    st.plotly_chart(fig, key="umap_chart")
    colour = (f"coloured by {gene} (viridis, log1p CP10k)" if gene else
              "predicted cells (×, vermillion) and observed cells (●, blue)")
    st.caption(f"Reference {method}: fitted once on {emb.params['n_cells']:,} control + training cells (grey); "
               f"cells projected into it, {colour}; control dark grey; arrows: control → predicted centroid.")


def unseen_block(model, unseen: list[str]) -> None:
    """Genes never perturbed in training: LCD has no data on them; offer the what-if with the same genes."""
    names = ", ".join(unseen)
    st.warning(f"LCD has no data on {names}: {'it was' if len(unseen) == 1 else 'they were'} never perturbed in "
               "training, so the model has no embedding learned for "
               f"{'it' if len(unseen) == 1 else 'them'} and its prediction uses the mean embedding of the trained "
               "perturbations: a generic answer, the same for any unseen gene, not a prediction about "
               f"{names}. CLIPR's linear what-if answers from the causal graph instead.")
    modelled = [g for g in unseen if g in set(model.genes)]
    if modelled:
        st.button(f"Ask the linear what-if about {', '.join(modelled)}", key="pert_to_whatif", type="primary",
                  on_click=to_whatif, args=(modelled,))
    else:
        st.caption("These genes are not measured by the model either, so the what-if cannot answer for them.")


def intervals_toggle(run, model) -> IntervalSources | None:
    """The switch of the prediction intervals, when the run has an ensemble or a calibrated fit check; says
    how to get them otherwise. The run's interval sources when switched on, else ``None``."""
    try:
        ens = results.ensemble(run)
    except LCDError as e:
        widgets.show_error(e, "The run's ensemble")
        ens = None
    src = IntervalSources.of(model, ens, run_fit(run))
    if not src.available:
        st.caption("No prediction intervals: this run has neither an ensemble (`lcd ensemble RUN`) nor a calibrated "
                   "fit check (`lcd fit RUN --data SCREEN`).")
        return None
    what = " + ".join(([f"{len(src.models)}-network ensemble"] if len(src.models) > 1 else []) +
                      (["cross-fitted"] if src.heldout is not None else []) +
                      (["calibrated on the training conditions"] if src.calibration is not None else []))
    on = st.toggle(f"Prediction intervals ({what})", value=False, key="pert_intervals",
                   help="Each gene's mean shift with an interval: the cells drawn, the spread between networks "
                        "trained with other seeds, and how far predictions fall from measured shifts: of combinations "
                        "the ensemble's networks were trained without, for a condition the run never saw; of the "
                        "run's own training conditions, for those. Samples the perturbation once per network (about 1 s "
                        "more on the demo's CPU), so it is off unless asked.")
    return src if on else None


def fit_block(run, label: str, cells, obs, control, rk) -> dict:
    """The run's fit check for ``label`` (and, with observed cells, the no-change check), as one line."""
    fit = run_fit(run)
    try:
        nc = results.memo(("no_change", rk), lambda: no_change_check(cells, obs, control)) if obs is not None else None
    except LCDError as e:
        widgets.show_error(e, "No-change check")
        nc = None
    res = condition_fit(fit, label, no_change=nc)
    text = f"Fit check: {res['sentence']}"
    if res["reproduced"] is False:
        st.warning(f"⚠ {text}", icon=None)
    elif res["reproduced"]:
        st.success(text)
    else:
        st.caption(text)
    return res


def lcd_mode(screen, run, model) -> None:
    fit = run_fit(run)
    label = choose_lcd(model, screen, fit)
    c1, c2, c3 = st.columns(3)
    default = results.PERTURB_DEFAULTS
    n_cells = c1.select_slider("Cells to generate", [100, 200, 300, 500, 1000], value=default["n_cells"],
                               key="pert_cells")
    seed = int(c2.number_input("Seed", 0, 10_000, default["seed"], key="pert_seed"))
    n_evals = None  # the run's own sampler and budget
    if model.info.get("sampler", "fast") == "fast":
        n_evals = int(c3.select_slider(
            "Sampler budget (network evaluations)", [16, 32, 64, 128], value=default["n_evals"], key="pert_evals",
            help="Fewer is faster; 32 matches the reference sampler's quality (docs/benchmarks.md), 16 does not."))
    anchored = model.anchors is not None and st.toggle(
        "Anchored", value=False, key="pert_anchored",
        help="[ours] Each gene's mean set by the measured singles, the distribution and the interaction LCD's "
             "(README, 'Anchored prediction'); off: LCD's own prediction.")
    if not label:
        st.info("Choose a perturbation.")
        screen_block(screen, run, model, fit)
        return
    try:
        _, unseen = model.multihot(label)
    except LCDError as e:
        widgets.show_error(e)
        return
    targets = targets_of(label)
    rk = (state.run_key(run), screen.data_hash, label, int(n_cells), seed, n_evals, anchored)  # key of everything derived below
    # control (the download's and the interaction's reference) and the singles of a double, queued behind
    # the chosen label's own cells
    extra = tuple(dict.fromkeys([KEYS.CONTROL, *(targets if len(targets) == 2 else ())]))
    results.prefetch_predictions(run, extra, n_cells, seed, n_evals=n_evals, after=label, anchored=anchored)
    pred = results.prediction(run, (label,), n_cells, seed, n_evals=n_evals, anchored=anchored)
    if pred is None:
        return
    st.session_state["last_prediction"] = label
    cells = pred[label]
    same = state.same_genes(model, screen)
    has_obs = same and label in set(screen.conditions)
    obs = screen.log1p(label) if has_obs else None
    if same:
        control = screen.log1p(KEYS.CONTROL)
    else:  # another screen than the run's: compare with the model's own control cells
        ctrl = results.prediction(run, (KEYS.CONTROL,), n_cells, seed, n_evals=n_evals, anchored=anchored)
        if ctrl is None:
            return
        control = ctrl[KEYS.CONTROL]

    st.subheader(f"Prediction: {label}")
    st.markdown(f"<div data-testid='prediction-label'>{len(cells)} generated cells of <b>{label}</b>"
                f"{' · observed: ' + str(len(obs)) + ' cells' if has_obs else ' · no observed cells'}</div>",
                unsafe_allow_html=True)
    for note in model.extrapolation([label]).values():  # an unseen gene, or more genes than training combined
        st.warning(f"**Extrapolation.** {note}", icon="⚠️")
    if unseen:
        unseen_block(model, list(unseen))
    umap_block(run, screen, model, {label: cells}, [label] if has_obs else [])
    fitc = fit_block(run, label, cells, obs, control, rk)

    # mean shifts per gene, LCD beside the baselines
    table = gene_shift_table(cells, control, model.genes, observed=obs)
    base = {}
    if same:
        try:
            fitted = results.baselines(run, screen)
            base = results.memo(("baselines", rk), lambda: baseline_predictions(fitted, label, n_cells, seed=seed))
        except LCDError as e:
            widgets.show_error(e, "Baselines")

    # genetic interaction of a double (METHOD §6): from predicted cells, and from observed ones if all exist
    if len(targets) == 2:
        interaction_block(screen, run, model, label, pred, obs, fitc, rk,
                          n_cells=n_cells, seed=seed, n_evals=n_evals, anchored=anchored)

    st.subheader("Mean shift per gene (log1p CP10k vs control)")
    cmean = np.asarray(control, dtype=float).mean(0)
    idx = {g: i for i, g in enumerate(model.genes)}
    for name, bc in base.items():
        table[f"{name}_shift"] = (bc.mean(0) - cmean)[[idx[g] for g in table["gene"]]]
    sources = intervals_toggle(run, model)
    show_intervals = sources is not None
    if show_intervals:
        iv = results.intervals(run, sources, label, control, cells, n_cells=n_cells, seed=seed, n_evals=n_evals,
                               anchored=anchored, reference=screen.data_hash if same else "generated control",
                               generated_control=not same)
        if iv is not None:
            table = table.merge(iv[["gene", "shift_low", "shift_high", "sd_model"]], on="gene", how="left", sort=False)
    st.dataframe(table.head(50), hide_index=True, key="shift_table")
    if show_intervals and "shift_low" in table:
        st.plotly_chart(shift_bars(table, top=20, title=f"{label}: the 20 largest predicted shifts"), key="shift_bars")
        nets = (f"the spread of {iv.attrs['networks']} networks trained with other seeds (sd_model), "
                if iv.attrs["networks"] > 1 else "")
        cal = (f"{iv.attrs['calibrated_on']} (column calibrated)" if iv.attrs["n_calibration"]
               else "no calibration (`lcd fit` adds it)")
        optimistic = (" Calibrated on conditions the model was trained on, they are optimistic for an unseen "
                      "combination (`lcd ensemble` cross-fits)." if label not in set(model.conditions)
                      and not iv.attrs["calibration_held_out"] else "")
        st.caption(f"{iv.attrs['level']:.0%} intervals (shift_low, shift_high; error bars): the cells drawn, {nets}"
                   f"and {cal}.{optimistic} Measured coverage on held-out doubles: docs/benchmarks.md "
                   "('Prediction intervals').")
    d1, d2 = st.columns(2)
    d1.download_button("Download the full table (CSV)", widgets.csv_bytes(table), file_name=f"shifts_{label}.csv",
                       mime="text/csv", key="dl_shifts")
    widgets.provenance_button(widgets.provenance(screen, run, perturbation=label, n_cells=n_cells, sampler_seed=seed),
                              f"shifts_{label}.csv", key="dl_shifts_prov", where=d1)
    control_cells = results.cells_later(run, KEYS.CONTROL, n_cells, seed, n_evals=n_evals, anchored=anchored)

    def h5ad_file() -> bytes:
        # written when clicked, in Streamlit's download thread: no rerun waits for LCD's control cells or
        # writes a file nobody asked for. The file records its run and seed in uns["lcd_prediction"]
        return h5ad_bytes(prediction_anndata(model, {label: cells}, control=control_cells(), seed=seed))

    d2.download_button("Download the predicted cells (.h5ad)", h5ad_file, file_name=f"predicted_{label}.h5ad",
                       mime="application/x-hdf5", key="dl_h5ad",
                       help="Generated control and perturbed cells, log1p CP10k, obs['perturbation']: the "
                            "cell-eval layout of `lcd evaluate`'s predicted.h5ad.")

    if has_obs:
        # behind a switch: two charts fewer for the browser at every new perturbation
        if st.toggle("Predicted vs observed, gene by gene", key="pert_gene_panel",
                     help="A scatter of the 30 most shifted genes' predicted against observed shifts, and one gene's "
                          "cells in control, observed, predicted and additive."):
            gene_panel(model, label, table, {"control": control, "observed": obs, "predicted": cells,
                                             **({"additive": base["additive"]} if "additive" in base else {})})

        st.subheader("Against the observed cells")
        try:
            tpm = results.train_perturbed_mean(run, screen)
            metrics = results.memo(("metrics", rk), lambda: compare_methods(
                label, {"lcd": cells, **base}, obs, screen.log1p(KEYS.CONTROL), tpm, seed=seed))
            show = metrics[["method"] + [m for m in SHOW_METRICS if m in metrics]]
            st.dataframe(show, hide_index=True, key="metrics_table")
            st.caption("Lower is better for mmd, energy, wasserstein and rmse; higher for the Pearson and DE columns. "
                       f"{'Held out: the model never saw these cells.' if label in model.info.get('heldout', []) else 'This condition was in training.'}")
        except LCDError as e:
            widgets.show_error(e, "Metrics")
    screen_block(screen, run, model, fit)


def gene_panel(model, label: str, table: pd.DataFrame, sets: dict[str, np.ndarray]) -> None:
    """Predicted against observed shift of the most shifted genes, and one chosen gene's cells per set."""
    g1, g2 = st.columns(2)
    g1.plotly_chart(shift_scatter(table, top=30, title=f"{label}, top 30 genes"), key="shift_scatter_chart")
    gene = g2.selectbox("Gene", list(table["gene"]), index=0, key="pert_violin_gene",
                        help="Genes ranked by |predicted shift|.")
    g2.plotly_chart(gene_violins(sets, gene, model.genes, title=f"{gene} in {label}"), key="violin_chart")
    st.caption("Left: each of the 30 most shifted genes' predicted against observed mean shift (the diagonal: "
               "a perfect prediction). Right: the chosen gene's cells: control (grey), observed (blue), "
               "predicted (vermillion), the additive baseline (green).")


def interaction_block(screen, run, model, label: str, pred: dict, obs, fitc: dict, rk, *, n_cells, seed, n_evals,
                      anchored) -> None:
    """Interaction scores and class of a double, the double against its additive expectation, and what
    the columns mean. The class is not shown as a verdict when the model does not reproduce the double."""
    a, b = targets_of(label)
    st.subheader("Genetic interaction")
    # not waited for: while this script runs, the browser draws the UMAP above later (it shares the cores), and
    # waiting here for the singles' cells held it back (new double → UMAP, median per double 2.27 → 1.97 s;
    # docs/benchmarks.md); the page reruns by itself when they arrive
    more = results.prediction(run, (KEYS.CONTROL, a, b), n_cells, seed, n_evals=n_evals, anchored=anchored, wait=0.0)
    if more is None:
        return
    pred = {**pred, **more}
    same = state.same_genes(model, screen)
    rows = []
    try:
        gi = results.memo(("gi", rk), lambda: double_interaction(pred[KEYS.CONTROL], pred[a], pred[b], pred[label]))
        rows.append({"source": "LCD prediction", **gi})
    except LCDError as e:
        widgets.show_error(e, "Interaction scores (predicted)")
    if same and obs is not None and all(c in set(screen.conditions) for c in (a, b)):
        try:
            gi_obs = results.memo(("gi_obs", rk[1], label), lambda: double_interaction(
                screen.log1p(KEYS.CONTROL), screen.log1p(a), screen.log1p(b), obs))
            rows.append({"source": "observed cells", **gi_obs})
        except LCDError as e:
            widgets.show_error(e, "Interaction scores (observed)")
    if rows:
        lcd_row = rows[0] if rows[0]["source"] == "LCD prediction" else None
        if lcd_row is not None and fitc.get("reproduced") is False:
            # a class read off cells the model does not reproduce would be a confident wrong answer
            st.metric("Interaction class (LCD)", "not reliable",
                      help=f"The model does not reproduce {label} (fit check above), so its interaction class "
                           f"('{lcd_row['class']}') is not shown as a verdict.")
            lcd_row["class"] = f"({lcd_row['class']}: not reproduced)"
        else:
            st.metric("Interaction class (LCD)", lcd_row["class"] if lcd_row is not None else "–",
                      help=INTERACTION_CLASSES.get(lcd_row["class"]) if lcd_row is not None else None)
        gi_df = pd.DataFrame(rows)[["source", "class", "classes", "magnitude", "c_a", "c_b", "dcor", "fit_dcor",
                                    "dcor_ratio", "dominance"]]
        st.dataframe(gi_df, hide_index=True, key="gi_table")
        st.caption("Norman et al. (2019) scores on control-z-scored CP10k; absolute thresholds of "
                   "lcd_core.tl.classify_interactions.")
        with st.expander("What the columns and classes mean"):
            st.markdown("\n".join([f"- **{k}**: {v}" for k, v in INTERACTION_COLUMNS.items()] +
                                   [f"- *{k}*: {v}" for k, v in INTERACTION_CLASSES.items()]))
    if same and all(c in set(screen.conditions) for c in (KEYS.CONTROL, a, b)):
        # computed and drawn only when asked for
        if not st.toggle(f"{label} against the additive expectation (Norman et al.'s scatter)", key="pert_gi_panel"):
            return
        try:
            shifts = results.memo(("gi_shifts", rk), lambda: interaction_shifts(
                screen.log1p(KEYS.CONTROL), screen.log1p(a), screen.log1p(b), genes=model.genes,
                observed=obs, predicted=pred[label]))
            st.plotly_chart(gi_scatter(shifts, title=label), key="gi_scatter_chart")
            st.caption("Each gene's shift in the double (y) against the sum of its shifts in the two measured "
                       "singles (x); on the diagonal: additive. Observed blue, predicted vermillion.")
        except LCDError as e:
            widgets.show_error(e, "Interaction scatter")


def screen_block(screen, run, model, fit) -> None:
    """Questions about the whole screen, computed on demand in the background: the GI map of every double,
    and which perturbations move a chosen gene most."""
    doubles = [c for c in screen.conditions if len(targets_of(c)) == 2]
    st.subheader("Across the screen")
    if doubles and st.toggle(f"GI map of the screen's {len(doubles)} measured doubles", key="pert_gimap",
                             help="Scores every observed double against its observed singles (once per screen, "
                                  "in the background; about 8 s on the demo)."):
        cells_needed = [KEYS.CONTROL, *dict.fromkeys(t for d in doubles for t in targets_of(d)), *doubles]
        scores = run_job(("gi_map", screen.data_hash),
                         lambda: interaction_map({c: screen.log1p(c) for c in cells_needed if c in set(screen.conditions)},
                                                 doubles=doubles),
                         label="GI map", what="Scoring every double of the screen", wait=1.0, store="resources")
        if scores is not None:
            try:
                st.plotly_chart(gi_map(scores, source="observed", title="Observed genetic interactions"),
                                key="gi_map_chart")
                skipped = scores.attrs.get("skipped") or {}
                st.caption(f"{scores['double'].nunique()} doubles scored on their measured cells; colour: magnitude "
                           "(√2 = additive), symbol: class."
                           + (f" Not scored: {', '.join(f'{d} ({w})' for d, w in list(skipped.items())[:5])}"
                              f"{' …' if len(skipped) > 5 else ''}." if skipped else ""))
            except LCDError as e:
                widgets.show_error(e, "GI map")

    st.markdown("**Which perturbations move a gene most?**")
    c1, c2 = st.columns([2, 1])
    gene = c1.selectbox("Gene", model.genes, index=None, key="resp_gene", placeholder="choose a gene")
    n = int(c2.select_slider("Cells per condition", RESPONSE_CELLS, value=50, key="resp_cells",
                             help="Every condition is predicted once (in the background): 100 cells each take "
                                  "about a minute on the demo."))
    if gene is None:
        return
    same = state.same_genes(model, screen)
    conditions = list(dict.fromkeys([*model.conditions, *model.info.get("heldout", [])]))
    conditions = [c for c in conditions if c != KEYS.CONTROL]
    rk = state.run_key(run)
    cells = run_job(("predict_all", rk, n, 0),
                    lambda: model.predict([KEYS.CONTROL, *conditions], n_cells=n, seed=0).cells,
                    label="predicting every condition", what=f"Predicting all {len(conditions)} conditions "
                    f"({n} cells each)", wait=1.0, store="resources")
    if cells is None:
        return
    observed = {c: screen.log1p(c) for c in conditions if c in set(screen.conditions)} if same else None
    control = screen.log1p(KEYS.CONTROL) if same else cells[KEYS.CONTROL]
    try:
        resp = results.memo(("response", rk, screen.data_hash, n, gene), lambda: gene_response_table(
            gene, genes=model.genes, control=control, predicted={c: cells[c] for c in conditions}, observed=observed))
    except LCDError as e:
        widgets.show_error(e, "Gene response")
        return
    st.dataframe(resp, hide_index=True, key="response_table")
    st.caption(f"Conditions ranked by how far LCD moves {gene}'s mean from control "
               f"({resp.attrs.get('control_mean', float('nan')):.2f}, log1p CP10k); observed shifts where the screen "
               f"measured the condition. {n} generated cells per condition.")


def whatif_mode(screen, run, model) -> None:
    st.caption("Linear response through CLIPR's drift matrix: the model's control cells move by −A⁻¹c, where c "
               "shifts the chosen genes' own drift (a soft intervention), then pass through the count model.")
    if "wi_genes" not in st.session_state:  # set here, not as a default: the LCD mode's button may set it first
        st.session_state["wi_genes"] = list(model.genes[:1])
    genes = st.multiselect("Genes", model.genes, max_selections=5, key="wi_genes")
    c1, c2, c3 = st.columns(3)
    direction = c1.radio("Intervention", ["knock-down", "activation"], key="wi_dir")
    strength = c2.slider("Strength (latent standard deviations)", 0.25, 5.0, 2.0, 0.25, key="wi_strength")
    variant = c3.radio("CLIPR variant", VARIANTS, index=VARIANTS.index(CLIPR.variant), key="wi_variant",
                       help="directed [ours]: a stable, directed drift matrix; paper: the authors' estimator "
                            "(symmetric; can be near-singular when few genes were perturbed).")
    if not genes:
        st.info("Choose at least one gene.")
        return
    res = results.clipr(run, variant)
    if res is None:
        return
    sign = -1.0 if direction == "knock-down" else 1.0
    try:
        shift, cells = whatif_cells(model, res.A, {g: sign * strength for g in genes}, n_cells=300)
    except LCDError as e:
        widgets.show_error(e, f"What-if ({variant} variant)")
        if variant != "directed":
            st.info("The directed variant estimates a stable drift matrix, which always has an inverse: it answers "
                    "this what-if.")
            st.button("Use the directed variant", key="wi_to_directed", on_click=st.session_state.update,
                      kwargs={"wi_variant": "directed"})
        return
    z = singular_response(shift, model.sd)
    if z is not None:
        st.warning(f"The linearised dynamics of the {variant} variant are nearly singular: the response is "
                   f"{z:.3g} standard deviations, which no cell could follow; try the other variant.")
        return
    label = f"what-if: {direction} {'+'.join(genes)} ({strength:g} sd)"
    st.subheader(label)
    umap_block(run, screen, model, {label: cells}, [])
    control = screen.log1p(KEYS.CONTROL) if state.same_genes(model, screen) else cells
    table = gene_shift_table(cells, control, model.genes)
    table.insert(1, "latent_shift_sd", (shift / np.asarray(model.sd))[[model.genes.index(g) for g in table["gene"]]])
    st.dataframe(table.head(50), hide_index=True, key="whatif_table")
    st.download_button("Download (CSV)", widgets.csv_bytes(table), file_name="whatif.csv", mime="text/csv",
                       key="dl_whatif")
    widgets.provenance_button(widgets.provenance(screen, run, whatif=genes, direction=direction, strength=strength,
                                            variant=variant), "whatif.csv", key="dl_whatif_prov")


def main() -> None:
    screen, run = widgets.page_setup("Perturb", "🧪")
    st.title("Perturb: what happens if…?")
    model = widgets.require_model(screen, run)
    if model is None or screen is None:
        return
    mode = st.radio("Mode", [LCD_MODE, WHATIF_MODE], horizontal=True, key="pert_mode",
                    help="LCD samples cells for perturbations of the screen's kind, unseen combinations included. "
                         "The what-if mode covers any modelled gene, knock-down or activation, with a strength.")
    if mode == LCD_MODE:
        lcd_mode(screen, run, model)
    else:
        whatif_mode(screen, run, model)


main()
