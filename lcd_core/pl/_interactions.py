"""Genetic-interaction figures: a double against its additive expectation, and the GI map of a screen."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..errors import ConfigError

#: Okabe–Ito colours (colour-blind safe): observed blue, predicted vermillion
GI_COLOURS = {"observed": "#0072B2", "predicted": "#D55E00"}
#: one symbol per interaction class on the GI map
_CLASS_SYMBOLS = {"additive": "circle", "synergy": "triangle-up", "suppression": "triangle-down",
                  "neomorphism": "star", "epistasis": "square", "redundancy": "diamond"}
_ADDITIVE_MAGNITUDE = float(np.sqrt(2.0))  # c_a = c_b = 1


def gi_scatter(table: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Each gene's double shift (y) against the additive expectation δ_a + δ_b (x): Norman et al.'s scatter.

    Points on the diagonal are additive; the dashed line of each source is its fit ĉ_a δ_a + ĉ_b δ_b
    drawn along the additive axis.

    Parameters
    ----------
    table
        :func:`lcd_core.tl.interaction_shifts` output (z-scored CP10k).
    """
    sources = [s for s in ("observed", "predicted") if s in table]
    if not sources:
        raise ConfigError("the table has no observed or predicted column; build it with tl.interaction_shifts")
    scores = table.attrs.get("scores", {})
    fig = go.Figure()
    x = table["additive"].to_numpy(dtype=float)
    lo, hi = (float(min(x.min(), *(table[s].min() for s in sources))), float(max(x.max(), *(table[s].max() for s in sources)))) if len(x) else (-1.0, 1.0)
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="additive (y = x)",
                             line=dict(color="grey", dash="dot"), hoverinfo="skip"))
    for s in sources:
        sc = scores.get(s, {})
        label = s + (f": {sc['class']}, c_a {sc['c_a']:.2f}, c_b {sc['c_b']:.2f}" if sc else "")
        fig.add_trace(go.Scatter(x=x, y=table[s], mode="markers", name=label, text=table["gene"],
                                 marker=dict(color=GI_COLOURS[s], size=6, opacity=0.75,
                                             symbol="circle" if s == "observed" else "x"),
                                 hovertemplate="%{text}<br>additive %{x:.2f}<br>" + s + " %{y:.2f}<extra></extra>"))
    fig.update_layout(title=title, height=440, xaxis_title="additive expectation δ_a + δ_b (control sd)",
                      yaxis_title="double's shift δ_ab (control sd)", legend=dict(orientation="h", y=-0.2),
                      margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    return fig


def gi_map(scores: pd.DataFrame, *, source: str = "observed", title: str | None = None) -> go.Figure:
    """GI map: every double of a screen at (gene a, gene b), coloured by magnitude, shaped by class.

    The colour scale is centred on the additive magnitude √2 (blue below: suppression side, red above:
    synergy side); hovering shows c_a, c_b, dcor, dominance and the class.

    Parameters
    ----------
    scores
        :func:`lcd_core.tl.interaction_map` output.
    source
        ``"observed"`` or ``"predicted"`` rows.
    """
    df = scores[scores["source"] == source] if "source" in scores else scores
    if df.empty:
        raise ConfigError(f"no {source} doubles to map; score them with tl.interaction_map")
    genes = sorted(set(df["gene_a"]) | set(df["gene_b"]))
    mag = df["magnitude"].to_numpy(dtype=float)
    span = float(max(np.abs(mag - _ADDITIVE_MAGNITUDE).max(), 0.5))
    fig = go.Figure()
    for i, (cls, rows) in enumerate(df.groupby("class", sort=False)):
        hover = [f"{r.double}<br>class {r['class']} ({r.classes})<br>magnitude {r.magnitude:.2f}"
                 f"<br>c_a {r.c_a:.2f}, c_b {r.c_b:.2f}<br>dcor {r.dcor:.2f}, fit_dcor {r.fit_dcor:.2f}"
                 f"<br>dominance {r.dominance:.2f}" for _, r in rows.iterrows()]
        # both triangle halves, so the map reads the same from either gene
        fig.add_trace(go.Scatter(
            x=list(rows["gene_a"]) + list(rows["gene_b"]), y=list(rows["gene_b"]) + list(rows["gene_a"]),
            mode="markers", name=str(cls), text=hover * 2, hovertemplate="%{text}<extra></extra>",
            marker=dict(size=14, symbol=_CLASS_SYMBOLS.get(str(cls), "circle"), line=dict(width=1, color="black"),
                        color=np.tile(rows["magnitude"].to_numpy(dtype=float), 2), colorscale="RdBu_r",
                        cmin=_ADDITIVE_MAGNITUDE - span, cmax=_ADDITIVE_MAGNITUDE + span,
                        colorbar=dict(title="magnitude", x=1.02), showscale=i == 0)))
    fig.update_xaxes(categoryorder="array", categoryarray=genes, title="gene a")
    fig.update_yaxes(categoryorder="array", categoryarray=genes, title="gene b")
    fig.update_layout(title=title, height=max(360, 24 * len(genes) + 120), legend=dict(orientation="h", y=-0.25),
                      margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    return fig
