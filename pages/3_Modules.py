"""Modules: the reordered effect matrix, functional modules with hubs and enrichment, and exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app_ui import results, state, widgets
from lcd_core import LCDError
from lcd_core.clipr import CLIPR, VARIANTS
from lcd_core.pl import effect_heatmap
from lcd_core.tl import (UNASSIGNED, enrich_modules, find_modules, module_agreement, module_names, module_table, read_gmt,
                         module_downloads, truth_gene_sets)

TRUE_SETS = "true modules of the simulated screen"


@st.cache_data(max_entries=32, show_spinner="Clustering…")
def modules_of(key: tuple, _effects: np.ndarray, genes: tuple[str, ...], method: str, cut: float, resolution: float,
               min_size: int):
    # cache_data: keyed by (run, variant) + the clustering settings; the result is small
    return find_modules(_effects, list(genes), method=method, cut=cut, resolution=resolution, min_size=min_size)


def gene_set_sources(screen, model) -> dict[str, object]:
    """name → path of a GMT file, or a dict of sets (the truth of a simulated screen)."""
    out: dict[str, object] = {}
    modelled = set(model.genes)
    for p in sorted((state.ROOT / "assets").glob("*.gmt")):
        try:  # list only gene-set files that share genes with this run
            if any(modelled.intersection(v) for v in read_gmt(p).values()):
                out[f"assets/{p.name}"] = p
        except LCDError:
            continue
    t = screen.truth if screen is not None else None
    if t and "modules" in t and state.same_genes(model, screen):
        out[TRUE_SETS] = truth_gene_sets(model.genes, t["modules"])
    return out


def enrichment_table(source, genes: list[str], labels) -> tuple[pd.DataFrame | None, str]:
    try:
        sets = read_gmt(source, genes=genes) if isinstance(source, Path) else dict(source)
        df = enrich_modules(labels, genes, sets)
    except LCDError as e:
        widgets.show_error(e, "Enrichment")
        return None, ""
    bg = f"background: the {len(genes)} modelled genes; {df.attrs.get('n_tests', 0)} module × set tests, BH-corrected"
    return df, bg


def main() -> None:
    screen, run = widgets.page_setup("Modules", "🧩")
    st.title("Functional modules")
    model = widgets.require_model(screen, run)
    if model is None:
        return
    c1, c2, c3, c4 = st.columns(4)
    variant = c1.radio("CLIPR variant", VARIANTS, index=VARIANTS.index(CLIPR.variant), horizontal=True,
                       key="mod_variant")
    method = c2.radio("Clustering", ["louvain", "hierarchical"], horizontal=True, key="mod_method",
                      help="louvain: consensus of 20 Louvain runs on the 15-nearest-neighbour closeness graph. "
                           "hierarchical: the paper's average-linkage tree of shortest-path distances, cut at a height.")
    cut, resolution = 0.175, 1.0
    if method == "hierarchical":
        cut = c3.slider("Cut height", 0.02, 0.6, 0.175, 0.005, format="%.3f", key="mod_cut",
                        help="Dendrogram cut on the normalised shortest-path distance (METHOD §5); lower = more, smaller modules.")
    else:
        resolution = c3.slider("Resolution", 0.1, 3.0, 1.0, 0.05, key="mod_resolution",
                               help="Modularity resolution; higher = more, smaller modules.")
    min_size = int(c4.number_input("Smallest module (genes)", 2, 50, 5, key="mod_min_size"))
    res = results.clipr(run, variant, CLIPR.lam if variant == "paper" else None)
    if res is None:
        return
    genes = list(model.genes)
    try:
        mods = modules_of((state.run_key(run), variant), np.asarray(res.effects), tuple(genes), method, float(cut),
                          float(resolution), min_size)
    except LCDError as e:
        widgets.show_error(e, "Modules")
        return
    labels = np.asarray(mods.labels)
    names = module_names(mods)
    m = st.columns(3)
    m[0].metric("modules", len(names))
    m[1].metric("genes in modules", int((labels != UNASSIGNED).sum()))
    m[2].metric("unassigned", int((labels == UNASSIGNED).sum()))
    if screen is not None and screen.truth and "modules" in screen.truth and state.same_genes(model, screen):
        st.caption(f"Agreement with the true modules (adjusted Rand index): "
                   f"{module_agreement(mods, screen.truth['modules']):.3f}")

    order = np.asarray(mods.order)
    st.plotly_chart(effect_heatmap(mods.reordered, [genes[i] for i in order], labels[order],
                                   title=f"Effect matrix (rows = sources), reordered; {len(names)} modules boxed"),
                    key="heatmap")

    st.subheader("Modules")
    sources = gene_set_sources(screen, model)
    src_names = list(sources) + ["upload a GMT file", "none"]
    src = st.selectbox("Gene sets for enrichment", src_names, key="mod_gmt")
    enr, background = None, ""
    if src == "upload a GMT file":
        up = st.file_uploader("Gene sets (.gmt)", key="gmt_upload")
        if up is not None:
            try:
                enr, background = enrichment_table(state.save_upload(up, ".gmt"), genes, labels)
            except LCDError as e:
                widgets.show_error(e, up.name)
    elif src != "none":
        enr, background = enrichment_table(sources[src], genes, labels)

    table = module_table(mods, enrichment=enr)
    st.dataframe(table, hide_index=True, key="module_table")
    if background:
        st.caption(f"Enrichment ({src}): hypergeometric over-representation, {background}.")
    if enr is not None and len(enr):
        with st.expander("All enriched terms"):
            st.dataframe(enr, hide_index=True)

    st.subheader("Downloads")
    prov = widgets.provenance(screen, run, variant=variant, lam=res.params.get("lam"), **mods.params,
                         gene_sets=None if src in ("none", "upload a GMT file") else src)
    files = module_downloads(mods, res.effects, genes, enrichment=enr, provenance=prov)
    d = st.columns(4)
    d[0].download_button("Modules (TSV)", files["modules.tsv"], "modules.tsv", "text/tab-separated-values",
                         key="dl_modules")
    d[1].download_button("Effects (CSV, long)", files["effects.csv"], "effects.csv", "text/csv", key="dl_effects")
    d[2].download_button("Graph (GraphML, top 10 % edges)", files["effects.graphml"], "effects.graphml",
                         "application/xml", key="dl_graphml")
    d[3].download_button("Provenance (JSON)", files["modules.provenance.json"], "modules.provenance.json",
                         "application/json", key="dl_modules_prov")
    st.caption("Tables are plain (header first). Their provenance — data set hash, run, CLIPR variant and λ, seed, "
               "clustering settings and package version — is the JSON file (the CLI writes it beside each table); "
               "GraphML carries it as graph attributes.")


try:
    main()
except LCDError as e:
    widgets.show_error(e)
