"""A gene's regulators and targets as an ego network (networkx layout, plotly drawing)."""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np
import plotly.graph_objects as go


def ego_graph(effects: np.ndarray, genes: Sequence[str], gene: str, *, threshold: float,
              truth: np.ndarray | None = None) -> nx.DiGraph:
    """Directed graph of ``gene``, its regulators (edges into it) and its targets (edges out of it) with
    |effect| > ``threshold`` (rows of ``effects`` = sources). Edge attributes ``effect`` and, with
    ``truth``, ``true_effect``."""
    genes = [str(g) for g in genes]
    j = genes.index(gene)
    E = np.asarray(effects, dtype=float)
    G = nx.DiGraph()
    G.add_node(gene, role="centre")
    for i in np.flatnonzero(np.abs(E[:, j]) > threshold):
        if i != j:
            G.add_node(genes[i], role="regulator")
            G.add_edge(genes[i], gene, effect=float(E[i, j]),
                       **({"true_effect": float(truth[i, j])} if truth is not None else {}))
    for k in np.flatnonzero(np.abs(E[j, :]) > threshold):
        if k != j:
            if genes[k] not in G:
                G.add_node(genes[k], role="target")
            elif G.nodes[genes[k]]["role"] == "regulator":
                G.nodes[genes[k]]["role"] = "both"
            G.add_edge(gene, genes[k], effect=float(E[j, k]),
                       **({"true_effect": float(truth[j, k])} if truth is not None else {}))
    return G


def ego_network(G: nx.DiGraph, centre: str, *, seed: int = 0, title: str | None = None) -> go.Figure:
    """Draw :func:`ego_graph`'s output: red edges activate, blue repress, width ∝ |effect|; with a truth
    overlay, edges absent from the truth are dashed."""
    pos = nx.spring_layout(G, seed=seed, weight=None) if G.number_of_nodes() > 1 else {centre: np.zeros(2)}
    fig = go.Figure()
    emax = max((abs(d["effect"]) for *_, d in G.edges(data=True)), default=1.0) or 1.0
    for u, v, d in G.edges(data=True):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        color = "#d62728" if d["effect"] > 0 else "#1f77b4"
        dash = "dash" if "true_effect" in d and d["true_effect"] == 0 else "solid"
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="text", showlegend=False,
                                 text=f"{u} → {v}: {d['effect']:.3g}",
                                 line=dict(color=color, width=1 + 5 * abs(d["effect"]) / emax, dash=dash)))
        fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y", showarrow=True,
                           arrowhead=2, arrowsize=1.2, arrowcolor=color, standoff=12, text="")
    roles = {"centre": "#ff7f0e", "regulator": "#2ca02c", "target": "#9467bd", "both": "#8c564b"}
    for role, color in roles.items():
        nodes = [n for n, r in G.nodes(data="role") if r == role]
        if nodes:
            fig.add_trace(go.Scatter(x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes],
                                     mode="markers+text", text=nodes, textposition="top center", name=role,
                                     marker=dict(size=22 if role == "centre" else 14, color=color)))
    fig.update_layout(title=title, height=520, xaxis=dict(visible=False), yaxis=dict(visible=False),
                      margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    return fig
