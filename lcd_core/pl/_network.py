"""A gene's regulators and targets as an ego network (networkx layout, plotly drawing)."""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np
import plotly.graph_objects as go


def ego_graph(effects: np.ndarray, genes: Sequence[str], gene: str, *, threshold: float,
              truth: np.ndarray | None = None, labels: np.ndarray | None = None) -> nx.DiGraph:
    """Directed graph of ``gene``, its regulators (edges into it) and its targets (edges out of it) with
    |effect| > ``threshold`` (rows of ``effects`` = sources). Edge attributes ``effect`` and, with
    ``truth`` (same shape, rows = sources), ``true_effect``; true edges of the gene that the estimate
    misses (|effect| ≤ threshold, true effect ≠ 0) are added with ``missed=True``. ``labels``: ``(d, d)``
    identifiability labels (rows = sources, :func:`lcd_core.clipr.identifiability`), kept as the edge
    attribute ``identifiability``; :func:`ego_network` draws the *not identified* ones grey and thin."""
    genes = [str(g) for g in genes]
    j = genes.index(gene)
    E = np.asarray(effects, dtype=float)
    G = nx.DiGraph()
    G.add_node(gene, role="centre")
    lab = np.asarray(labels) if labels is not None else None
    for i in np.flatnonzero(np.abs(E[:, j]) > threshold):
        if i != j:
            G.add_node(genes[i], role="regulator")
            G.add_edge(genes[i], gene, effect=float(E[i, j]),
                       **({"true_effect": float(truth[i, j])} if truth is not None else {}),
                       **({"identifiability": str(lab[i, j])} if lab is not None else {}))
    for k in np.flatnonzero(np.abs(E[j, :]) > threshold):
        if k != j:
            if genes[k] not in G:
                G.add_node(genes[k], role="target")
            elif G.nodes[genes[k]]["role"] == "regulator":
                G.nodes[genes[k]]["role"] = "both"
            G.add_edge(gene, genes[k], effect=float(E[j, k]),
                       **({"true_effect": float(truth[j, k])} if truth is not None else {}),
                       **({"identifiability": str(lab[j, k])} if lab is not None else {}))
    if truth is not None:
        T = np.asarray(truth, dtype=float)
        for i in np.flatnonzero((T[:, j] != 0) & (np.abs(E[:, j]) <= threshold)):
            if i != j:
                if genes[i] not in G:
                    G.add_node(genes[i], role="regulator")
                G.add_edge(genes[i], gene, effect=float(E[i, j]), true_effect=float(T[i, j]), missed=True)
        for k in np.flatnonzero((T[j, :] != 0) & (np.abs(E[j, :]) <= threshold)):
            if k != j:
                if genes[k] not in G:
                    G.add_node(genes[k], role="target")
                elif G.nodes[genes[k]]["role"] == "regulator":
                    G.nodes[genes[k]]["role"] = "both"
                G.add_edge(gene, genes[k], effect=float(E[j, k]), true_effect=float(T[j, k]), missed=True)
    return G


#: Okabe–Ito colours (colour-blind safe): activation, repression, and the node roles
ACTIVATION, REPRESSION = "#D55E00", "#0072B2"
ROLE_COLOURS = {"centre": "#E69F00", "regulator": "#009E73", "target": "#CC79A7", "both": "#56B4E9"}
#: edges whose identifiability label is this are drawn in :data:`NOT_IDENTIFIED_COLOUR`, thin: the data do not decide them
NOT_IDENTIFIED, NOT_IDENTIFIED_COLOUR = "not identified", "#BBBBBB"


def ego_network(G: nx.DiGraph, centre: str, *, seed: int = 0, title: str | None = None) -> go.Figure:
    """Draw :func:`ego_graph`'s output: vermilion edges activate, blue repress, width ∝ |effect| (4
    classes); edges labelled *not identified* are light grey and thin whatever their sign (the regulariser
    set them, not the data); with a truth overlay, true edges the estimate misses are dashed (coloured by the true sign)
    and estimated edges absent from the truth dotted. Hover an edge's midpoint for its effect.

    Edges of one style share one trace and arrows go in as one annotation list: per-edge traces and
    ``add_annotation`` calls cost seconds for a hub gene with a hundred edges.
    """
    pos = nx.spring_layout(G, seed=seed, weight=None) if G.number_of_nodes() > 1 else {centre: np.zeros(2)}
    edges = list(G.edges(data=True))
    emax = max((abs(d["effect"]) for *_, d in edges if not d.get("missed")), default=1.0) or 1.0
    groups: dict[tuple, tuple[list, list]] = {}
    mid_x, mid_y, mid_text, arrows = [], [], [], []
    for u, v, d in edges:
        (x0, y0), (x1, y1) = pos[u], pos[v]
        missed = bool(d.get("missed"))
        grey = not missed and d.get("identifiability") == NOT_IDENTIFIED
        color = (NOT_IDENTIFIED_COLOUR if grey else
                 ACTIVATION if (d["true_effect"] if missed else d["effect"]) > 0 else REPRESSION)
        dash = "dash" if missed else "dot" if "true_effect" in d and d["true_effect"] == 0 else "solid"
        width = 1.5 if missed or grey else 1 + min(int(np.ceil(4 * abs(d["effect"]) / emax)), 4) * 1.25
        xs, ys = groups.setdefault((color, dash, width), ([], []))
        xs += [x0, x1, None]
        ys += [y0, y1, None]
        mid_x.append((x0 + x1) / 2)
        mid_y.append((y0 + y1) / 2)
        truth = f" (true {d['true_effect']:.3g})" if "true_effect" in d else ""
        mid_text.append(f"{u} → {v}: {d['effect']:.3g}{truth}" + (" — missed by the model" if missed else "")
                        + (f" — {d['identifiability']}" if "identifiability" in d else ""))
        arrows.append(dict(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y", showarrow=True,
                           arrowhead=2, arrowsize=1.2, arrowcolor=color, standoff=12, text=""))
    data = [go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                       line=dict(color=color, width=width, dash=dash))
            for (color, dash, width), (xs, ys) in groups.items()]
    data.append(go.Scatter(x=mid_x, y=mid_y, mode="markers", marker=dict(size=6, opacity=0), text=mid_text,
                           hoverinfo="text", showlegend=False))
    styles = {(c, d) for c, d, _ in groups}
    for name, color, dash in (("activation", ACTIVATION, "solid"), ("repression", REPRESSION, "solid"),
                              ("true edge missed by the model", "#555555", "dash"),
                              ("estimated edge absent from the truth", "#555555", "dot"),
                              ("not identified (set by the regulariser)", NOT_IDENTIFIED_COLOUR, "solid")):
        if any(d == dash and (dash != "solid" or c == color) for c, d in styles):  # a legend entry per style shown
            data.append(go.Scatter(x=[None], y=[None], mode="lines", name=name, line=dict(color=color, dash=dash)))
    for role, color in ROLE_COLOURS.items():
        nodes = [n for n, r in G.nodes(data="role") if r == role]
        if nodes:
            data.append(go.Scatter(x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes],
                                   mode="markers+text", text=nodes, textposition="top center", name=role,
                                   marker=dict(size=22 if role == "centre" else 14, color=color)))
    layout = go.Layout(title=title, height=560, xaxis=dict(visible=False), yaxis=dict(visible=False),
                       annotations=arrows, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                       legend=dict(orientation="h", yanchor="top", y=-0.02, xanchor="left", x=0))
    return go.Figure(data=data, layout=layout)
