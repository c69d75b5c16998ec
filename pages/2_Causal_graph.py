"""Causal graph: a gene's regulators and targets in the CLIPR effect matrix, with the truth beside the
estimate on simulated screens; which edges the data decide (identifiability, greyed out when not), and on
request each edge's bootstrap interval, sign stability and the shuffled-label null (issue 16)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app_ui import results, state, widgets
from lcd_core import LCDError
from lcd_core.clipr import CLIPR, VARIANTS, cached_confidence, clipr_confidence, identifiability
from lcd_core.pl import ego_graph, ego_network
from lcd_core.tl import (READABLE_EDGES, causal_recovery, edge_precision_recall, effects_long, readable_gene,
                         graphml_bytes, top_k_threshold)

#: choices of the edge control: the strongest k edges of the whole matrix
TOP_K = [10, 25, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000]
#: the edge confidence the page computes (bootstrap resamples, label shuffles of the null); `lcd clipr --confidence
#: --null 20` writes the same cache, which the page then reads
CONFIDENCE = {"n_boot": 100, "n_null": 20}


def edge_identifiability(run, variant: str, lam, res):
    """The shown result's :class:`~lcd_core.clipr.Identifiability` (cached), or the reason it has none."""
    def compute():
        try:
            return identifiability(res)
        except LCDError as e:  # e.g. too many genes for the directed computation: said under the graph
            return str(e)
    return results.memo(("cg_ident", state.run_key(run), variant, lam), compute)


def edge_confidence(run, model):
    """The run's cached edge confidence (directed variant), computed in a background job once asked for;
    ``None`` until then."""
    try:
        ens = results.ensemble(run)
    except LCDError as e:  # a corrupt or stale ensemble: said, and the confidence made without it
        widgets.show_error(e, "The run's ensemble")
        ens = None
    members = ens.models(model)[1:] if ens is not None else []
    key = ("clipr_confidence", state.run_key(run), tuple(sorted(CONFIDENCE.items())), len(members))
    conf = cached_confidence(model, variant="directed", ensemble=members, **CONFIDENCE)
    if conf is not None:
        return conf
    asked = st.session_state.setdefault("cg_conf_asked", set())
    nets = (f" of the {len(members) + 1} networks of the run's ensemble (the spread between networks included)"
            if members else " (the run has no ensemble: `lcd ensemble` adds the spread between networks)")
    if st.button("Compute confidence (bootstrap + null)", key="cg_conf_btn",
                 help=f"{CONFIDENCE['n_boot']} bootstrap resamples of the cells of each condition{nets} through "
                      f"directed CLIPR (an interval and a sign stability per edge) and {CONFIDENCE['n_null']} shuffles "
                      "of the condition labels (edge strengths without perturbation signal). Computed once, in the "
                      "background, and kept in the run directory."):
        asked.add(key)
    if key not in asked:
        return None
    return results.run_job(key, lambda: clipr_confidence(model, variant="directed", ensemble=members, **CONFIDENCE),
                           label="edge confidence", what="Computing edge confidence (bootstrap + shuffled-label null)",
                           store="resources")


def truth_matrix(screen, model) -> np.ndarray | None:
    """The simulated screen's true effect matrix (rows = sources) when it covers the run's genes."""
    t = screen.truth if screen is not None else None
    if not t or "causal_matrix" not in t or not state.same_genes(model, screen):
        return None
    M = np.asarray(t["causal_matrix"], dtype=float)
    return M if M.shape == (len(model.genes),) * 2 else None


def main() -> None:
    screen, run = widgets.page_setup("Causal graph", "🕸️")
    st.title("Causal graph")
    model = widgets.require_model(screen, run)
    if model is None:
        return
    c1, c2 = st.columns([1, 2])
    variant = c1.radio("CLIPR variant", VARIANTS, index=VARIANTS.index(CLIPR.variant), horizontal=True, key="cg_variant",
                       help="paper: the authors' estimator (sign and strength; symmetric for gradient drifts). "
                            "directed [ours]: Lyapunov + on-target equations, which also identify direction.")
    lam = None
    if variant == "paper":
        lam = c2.select_slider("Ridge λ", [1e-5, 1e-4, 1e-3, 1e-2, 1e-1], value=CLIPR.lam, key="cg_lam")
    res = results.clipr(run, variant, lam)
    if res is None:
        return
    E = np.asarray(res.effects, dtype=float)
    genes = list(model.genes)
    off = np.abs(E[~np.eye(len(E), dtype=bool)])
    vmax = float(off.max()) if off.size else 1.0
    for w in res.warnings[:3]:
        st.caption(f"⚠ {w}")
    ident = edge_identifiability(run, variant, lam, res)
    labels = ident.labels if not isinstance(ident, str) else None

    n_off = off.size
    choices = [k for k in TOP_K if k < n_off] + [n_off]
    default_k = min(choices, key=lambda k: abs(k - 5 * len(genes)))  # about five edges per gene on average
    c1, c2 = st.columns([1, 2])
    top_k = c2.select_slider("Edges shown: the strongest k of the matrix", choices, value=default_k, key="cg_top_k",
                             format_func=lambda k: f"{k:,}" + (" (all)" if k == n_off else ""),
                             help="Sets the |effect| threshold so that the k strongest gene-to-gene effects are "
                                  "edges (rank-based: the raw |effect| scale depends on the run).")
    threshold = top_k_threshold(E, top_k)
    conf = edge_confidence(run, model) if variant == "directed" else None
    if variant != "directed":
        st.caption("Edge confidence is computed for the directed variant only: it resamples the cells that variant "
                   "reads, while the paper variant reads the drift's fixed points, which no cell bootstrap varies.")
    null_thr = conf.null_threshold if conf is not None else None
    only_null = st.checkbox("only edges stronger than the shuffled-label null (99th percentile)", value=False,
                            key="cg_null", disabled=null_thr is None,
                            help="Keeps the edges whose |effect| exceeds the 99th percentile of |edge| when the "
                                 "condition labels are shuffled." if null_thr is not None else
                                 "Compute the confidence (directed variant) first.")
    if only_null and null_thr is not None:
        threshold = max(threshold, null_thr)
    default_gene = results.memo(("cg_default_gene", state.run_key(run), variant, lam, top_k),
                                lambda: readable_gene(E, genes, threshold))
    if st.session_state.get("cg_gene") not in genes:  # first visit, or another run: a readable neighbourhood
        st.session_state["cg_gene"] = default_gene
    gene = c1.selectbox("Gene", genes, key="cg_gene",
                        help=f"Opens on the gene with the most edges among those with at most {READABLE_EDGES} "
                             f"(a readable neighbourhood: {default_gene} here). Type to search.")
    truth = results.memo(("truth", state.run_key(run), getattr(screen, "data_hash", None)), lambda: truth_matrix(screen, model))
    overlay = st.checkbox("Overlay the true graph (simulated screen)", value=truth is not None,
                          disabled=truth is None, key="cg_truth",
                          help=None if truth is not None else "Only simulated screens carry their truth.")

    columns = {"identifiability": labels} if labels is not None else {}
    if conf is not None:
        columns.update(conf.columns())
    edges = effects_long(E, genes, threshold=threshold, columns=columns)
    n_edges = len(edges)
    G = ego_graph(E, genes, gene, threshold=threshold, truth=truth if overlay else None, labels=labels)
    regs = [u for u, _, d in G.in_edges(gene, data=True) if not d.get("missed")]
    tgts = [v for _, v, d in G.out_edges(gene, data=True) if not d.get("missed")]
    missed = sum(1 for *_, d in G.edges(data=True) if d.get("missed"))
    m = st.columns(4)
    m[0].metric("edges above threshold", n_edges)
    m[1].metric(f"regulators of {gene}", len(regs))
    m[2].metric(f"targets of {gene}", len(tgts))
    m[3].metric("genes", len(genes))
    st.plotly_chart(ego_network(G, gene, title=f"{gene}: regulators → {gene} → targets"), key="ego_chart",
                    config={"displaylogo": False})
    st.caption(f"Threshold |effect| > {threshold:.3g}"
               + (" (the shuffled-label null's 99th percentile)" if only_null and threshold == null_thr else "")
               + ". Vermilion: activation, blue: repression; width ∝ |effect|"
               + ("; grey and thin: not identified" if labels is not None else "")
               + (f"; dashed: {missed} true edge(s) of {gene} the model missed (coloured by the true sign); "
                  "dotted: estimated edge absent from the truth." if overlay and truth is not None else "."))
    st.markdown(identifiability_sentence(ident, variant))
    if conf is not None:
        nets = len(conf.params.get("ensemble_seeds") or []) + 1
        covers = (f"the cells' sampling noise and the spread between the {nets} networks of the run's ensemble, not a "
                  "bias they share" if nets > 1 else "sampling noise of the read-out, not the model's own error: "
                  "`lcd ensemble` adds it")
        st.caption(f"Confidence: {int(round(100 * conf.level))} % bootstrap intervals and sign stability from "
                   f"{conf.n_boot} resamples of the cells of each condition ({covers}); "
                   f"{conf.n_exceeding():,} edges exceed the 99th percentile "
                   f"({null_thr:.3g}) of {conf.n_null} label shuffles.")

    if overlay and truth is not None:
        st.subheader("Recovery of the true graph")
        rec = results.memo(("recovery", state.run_key(run), screen.data_hash, variant, lam), lambda: causal_recovery(E, truth))
        pr = edge_precision_recall(E, truth, threshold=threshold)
        r = st.columns(5)
        r[0].metric("sign AUROC", f"{rec['sign_auroc']:.3f}")
        r[1].metric("sign macro-F1", f"{rec['sign_f1']:.3f}")
        r[2].metric("Pearson", f"{rec['pearson']:.3f}")
        r[3].metric("precision @ threshold", f"{pr['precision']:.3f}")
        r[4].metric("recall @ threshold", f"{pr['recall']:.3f}")
        st.caption("Off-diagonal entries of the estimate vs the true effect matrix (rows = sources); sign classes "
                   "at |true effect| ≥ 0.5 (METHOD §7).")
        ix = {g: i for i, g in enumerate(genes)}
        edges["true_effect"] = [truth[ix[s], ix[t]] for s, t in zip(edges["source"], edges["target"])]

    st.subheader("Edges")
    only_gene = st.checkbox(f"Only edges of {gene}", value=False, key="cg_only_gene")
    table = edges[(edges["source"] == gene) | (edges["target"] == gene)] if only_gene else edges
    st.dataframe(table.head(500), hide_index=True, key="edge_table")
    prov = widgets.provenance(screen, run, variant=variant, lam=lam, threshold=threshold, top_k=top_k,
                              null_filter=bool(only_null and null_thr is not None),
                              **({"confidence": {"n_boot": conf.n_boot, "n_null": conf.n_null, "level": conf.level,
                                                 "null_threshold": null_thr}} if conf is not None else {}))
    d1, d2, d3 = st.columns(3)
    d1.download_button(f"Download {len(table)} edges (CSV)", widgets.csv_bytes(table),
                       file_name=f"effects_{variant}.csv", mime="text/csv", key="dl_edges")
    widgets.provenance_button(prov, f"effects_{variant}.csv", key="dl_edges_prov", where=d2)
    d3.download_button(f"Graph of the {n_edges:,} edges (GraphML, for Cytoscape)",
                       results.memo(("cg_graphml", state.run_key(run), variant, lam, top_k, threshold, tuple(columns)),
                                    lambda: graphml_bytes(E, genes, threshold=threshold, provenance=prov,
                                                          columns=columns)),
                       file_name=f"effects_{variant}_top{top_k}.graphml", mime="application/xml", key="dl_cg_graphml")


def identifiability_sentence(ident, variant: str) -> str:
    """One line under the graph: rank, condition number and counts, and why grey edges are grey."""
    if isinstance(ident, str):
        return f"Identifiability not computed: {ident}"
    c = ident.counts()
    why = (f" Grey edges are not identified: {ident.sentence('not identified')}" if c["not identified"]
           else f" {ident.sentence('identified')}" if not c["partly identified"] else "")
    return f"**Identifiability** ({variant}): {ident.summary()}.{why}" + (f" {ident.caveat}" if ident.caveat else "")




try:
    main()
except LCDError as e:  # anything lcd_core refuses: say why, keep the app usable
    widgets.show_error(e)
