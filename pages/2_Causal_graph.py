"""Causal graph: a gene's regulators and targets in the CLIPR effect matrix, with the truth beside the
estimate on simulated screens."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app_ui import results, state, widgets
from lcd_core import LCDError
from lcd_core.clipr import CLIPR, VARIANTS
from lcd_core.pl import ego_graph, ego_network
from lcd_core.tl import causal_recovery, edge_precision_recall, effects_long


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

    c1, c2 = st.columns([1, 2])
    default_gene = genes[int(np.argmax(np.abs(E).sum(0) + np.abs(E).sum(1)))]
    gene = c1.selectbox("Gene", genes, index=genes.index(default_gene), key="cg_gene",
                        help="Type to search.")
    # default: about five edges per gene on average, so an ego network stays readable
    default_thr = float(np.quantile(off, max(0.9, 1 - 5 / max(len(genes), 1)))) if off.size else 0.0
    threshold = c2.slider("Edge threshold |effect| >", 0.0, vmax, min(default_thr, vmax), vmax / 200 or 0.01,
                          format="%.4f", key="cg_threshold")
    truth = results.memo(("truth", state.run_key(run), getattr(screen, "data_hash", None)), lambda: truth_matrix(screen, model))
    overlay = st.checkbox("Overlay the true graph (simulated screen)", value=truth is not None,
                          disabled=truth is None, key="cg_truth",
                          help=None if truth is not None else "Only simulated screens carry their truth.")

    edges = effects_long(E, genes, threshold=threshold)
    n_edges = len(edges)
    G = ego_graph(E, genes, gene, threshold=threshold, truth=truth if overlay else None)
    regs = [u for u, _ in G.in_edges(gene)]
    tgts = [v for _, v in G.out_edges(gene)]
    m = st.columns(4)
    m[0].metric("edges above threshold", n_edges)
    m[1].metric(f"regulators of {gene}", len(regs))
    m[2].metric(f"targets of {gene}", len(tgts))
    m[3].metric("genes", len(genes))
    st.plotly_chart(ego_network(G, gene, title=f"{gene}: regulators → {gene} → targets"), key="ego_chart")
    st.caption("Red: activation, blue: repression; width ∝ |effect|"
               + ("; dashed: edge absent from the truth." if overlay and truth is not None else "."))

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
    prov = widgets.provenance(screen, run, variant=variant, lam=lam, threshold=threshold)
    st.download_button(f"Download {len(table)} edges (CSV)", widgets.csv_bytes(table),
                       file_name=f"effects_{variant}.csv", mime="text/csv", key="dl_edges")
    widgets.provenance_button(prov, f"effects_{variant}.csv", key="dl_edges_prov")


try:
    main()
except LCDError as e:  # anything lcd_core refuses: say why, keep the app usable
    widgets.show_error(e)
