"""Perturb: what happens to the cells if I perturb these genes?

LCD mode samples whole cell populations from the trained model (singles, doubles, any gene set of the
screen's kind, unseen combinations included). Linear what-if mode moves the model's control cells by
CLIPR's linear response to a knock-down or activation of any modelled gene.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app_ui import results, state, widgets
from lcd_core import KEYS, LCDError
from lcd_core.clipr import CLIPR, VARIANTS
from lcd_core.data._conventions import targets_of
from lcd_core.pl import embedding_scatter
from lcd_core.tl import (baseline_predictions, compare_methods, double_interaction, gene_shift_table,
                         singular_response, whatif_cells)

SHOW_METRICS = ["mmd", "energy", "wasserstein", "rmse", "pearson_delta", "pearson_systema", "de_auroc"]


def choose_lcd(model, screen) -> str | None:
    """Widgets of LCD mode; returns the canonical label of the chosen perturbation."""
    observed = set(screen.conditions) if state.same_genes(model, screen) else set()
    heldout = set(model.info.get("heldout", []))
    trained = set(model.conditions)
    doubles = sorted({c for c in list(observed) + list(heldout) + list(trained) if len(targets_of(c)) == 2},
                     key=lambda c: (c not in heldout, c))
    singles = sorted({c for c in model.conditions if len(targets_of(c)) == 1})

    def tag(c: str) -> str:
        if c in heldout:
            return f"{c}  (held out: unseen by the model, observed)"
        if c not in trained:
            return f"{c}  (not in training)"
        return f"{c}  (in training)"

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
    """Predicted cells and the measured cells of the ``observed`` labels on the reference embedding."""
    emb = results.embedding(run, screen)
    if emb is None:
        return
    try:
        pred_xy = {k: emb.transform(v) for k, v in predicted.items()}
        # measured cells: projected once per (run, screen, embedding, label), not at every rerun. Done here,
        # when the chart needs them: started beside the sampling, the projection slowed a new double →
        # updated UMAP (median 1.72 → 2.06 s on the 2-core benchmark; both compete for the cores)
        obs_xy = {k: results.memo(("observed_xy", state.run_key(run), screen.data_hash, emb.method, k),
                             lambda k=k: emb.transform(screen.log1p(k))) for k in observed}
    except LCDError as e:
        widgets.show_error(e, "Projection into the reference embedding failed")
        return
    ctrl_xy = emb.coords[emb.labels == KEYS.CONTROL]
    method = "UMAP" if emb.method == "umap" else "PC"
    fig = embedding_scatter(emb.coords, obs_xy, pred_xy, control=ctrl_xy, method=method)
    st.plotly_chart(fig, key="umap_chart")
    st.caption(f"Reference {method}: fitted once on {emb.params['n_cells']:,} control + training cells; predicted "
               "cells (×) and observed cells (●) projected into it; arrows: control → predicted centroid.")


def lcd_mode(screen, run, model) -> None:
    label = choose_lcd(model, screen)
    c1, c2, c3 = st.columns(3)
    n_cells = c1.select_slider("Cells to generate", [100, 200, 300, 500, 1000], value=300, key="pert_cells")
    seed = int(c2.number_input("Seed", 0, 10_000, 0, key="pert_seed"))
    n_evals = None  # the run's own sampler and budget
    if model.info.get("sampler", "fast") == "fast":
        n_evals = int(c3.select_slider(
            "Sampler budget (network evaluations)", [16, 32, 64, 128], value=32, key="pert_evals",
            help="Fewer is faster; 32 matches the reference sampler's quality (docs/benchmarks.md), 16 does not."))
    anchored = model.anchors is not None and st.toggle(
        "Anchored", value=False, key="pert_anchored",
        help="[ours] Each gene's mean set by the measured singles, the distribution and the interaction LCD's "
             "(README, 'Anchored prediction'); off: LCD's own prediction.")
    if not label:
        st.info("Choose a perturbation.")
        return
    try:
        _, unseen = model.multihot(label)
    except LCDError as e:
        widgets.show_error(e)
        return
    targets = targets_of(label)
    rk = (state.run_key(run), screen.data_hash, label, int(n_cells), seed, n_evals, anchored)  # key of everything derived below
    extra = tuple(dict.fromkeys([KEYS.CONTROL, *targets])) if len(targets) == 2 else ()
    # control and singles for the interaction class, queued behind the chosen label's own cells
    results.prefetch_predictions(run, extra, n_cells, seed, n_evals=n_evals, after=label, anchored=anchored)
    pred = results.prediction(run, (label,), n_cells, seed, n_evals=n_evals, anchored=anchored)
    if pred is None:
        return
    st.session_state["last_prediction"] = label
    cells = pred[label]
    has_obs = state.same_genes(model, screen) and label in set(screen.conditions)
    obs = screen.log1p(label) if has_obs else None
    if state.same_genes(model, screen):
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
    if unseen:
        st.info(f"Never perturbed in training: {', '.join(unseen)} (they use the mean of the trained embeddings).")
    umap_block(run, screen, model, {label: cells}, [label] if has_obs else [])

    # genetic interaction of a double (METHOD §6): from predicted cells, and from observed ones if all exist
    if len(targets) == 2:
        a, b = targets
        st.subheader("Genetic interaction")
        more = results.prediction(run, extra, n_cells, seed, n_evals=n_evals, anchored=anchored)
        if more is None:
            return
        pred.update(more)
        rows = []
        try:
            gi = results.memo(("gi", rk), lambda: double_interaction(pred[KEYS.CONTROL], pred[a], pred[b], pred[label]))
            rows.append({"source": "LCD prediction", **gi})
        except LCDError as e:
            widgets.show_error(e, "Interaction scores (predicted)")
        if state.same_genes(model, screen) and all(c in set(screen.conditions) for c in (a, b, label)):
            try:
                gi_obs = results.memo(("gi_obs", rk[1], label), lambda: double_interaction(
                    screen.log1p(KEYS.CONTROL), screen.log1p(a), screen.log1p(b), obs))
                rows.append({"source": "observed cells", **gi_obs})
            except LCDError as e:
                widgets.show_error(e, "Interaction scores (observed)")
        if rows:
            st.metric("Interaction class (LCD)", rows[0]["class"] if rows[0]["source"] == "LCD prediction" else "–")
            gi_df = pd.DataFrame(rows)[["source", "class", "classes", "magnitude", "c_a", "c_b", "dcor", "fit_dcor",
                                        "dcor_ratio", "dominance"]]
            st.dataframe(gi_df, hide_index=True, key="gi_table")
            st.caption("Norman et al. (2019) scores on control-z-scored CP10k; absolute thresholds of "
                       "lcd_core.tl.classify_interactions.")

    # mean shifts per gene, LCD beside the baselines
    st.subheader("Mean shift per gene (log1p CP10k vs control)")
    table = gene_shift_table(cells, control, model.genes, observed=obs)
    base = {}
    if state.same_genes(model, screen):
        try:
            fitted = results.baselines(run, screen)
            base = results.memo(("baselines", rk), lambda: baseline_predictions(fitted, label, n_cells, seed=seed))
        except LCDError as e:
            widgets.show_error(e, "Baselines")
    cmean = np.asarray(control, dtype=float).mean(0)
    idx = {g: i for i, g in enumerate(model.genes)}
    for name, bc in base.items():
        table[f"{name}_shift"] = (bc.mean(0) - cmean)[[idx[g] for g in table["gene"]]]
    st.dataframe(table.head(50), hide_index=True, key="shift_table")
    st.download_button("Download the full table (CSV)", widgets.csv_bytes(table), file_name=f"shifts_{label}.csv",
                       mime="text/csv", key="dl_shifts")
    widgets.provenance_button(widgets.provenance(screen, run, perturbation=label, n_cells=n_cells, sampler_seed=seed),
                         f"shifts_{label}.csv", key="dl_shifts_prov")

    if has_obs:
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


def whatif_mode(screen, run, model) -> None:
    st.caption("Linear response through CLIPR's drift matrix: the model's control cells move by −A⁻¹c, where c "
               "shifts the chosen genes' own drift (a soft intervention), then pass through the count model.")
    genes = st.multiselect("Genes", model.genes, max_selections=5, key="wi_genes",
                           default=[model.genes[0]] if model.genes else None)
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
        widgets.show_error(e, "What-if")
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
    mode = st.radio("Mode", ["LCD (distribution)", "Linear what-if (CLIPR)"], horizontal=True, key="pert_mode",
                    help="LCD samples cells for perturbations of the screen's kind, unseen combinations included. "
                         "The what-if mode covers any modelled gene, knock-down or activation, with a strength.")
    if mode.startswith("LCD"):
        lcd_mode(screen, run, model)
    else:
        whatif_mode(screen, run, model)


main()
