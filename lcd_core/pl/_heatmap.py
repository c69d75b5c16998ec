"""The reordered causal-effect matrix with module boundaries."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go


def effect_heatmap(
    reordered: np.ndarray,
    genes: Sequence[str],
    labels: Sequence[str] | None = None,
    *,
    clip_quantile: float = 0.99,
    title: str | None = None,
) -> go.Figure:
    """Heatmap of an effect matrix already in dendrogram order (rows = sources), diverging colours
    symmetric around 0 (clipped at the ``clip_quantile`` of |effect|), and a box around each module.

    Parameters
    ----------
    reordered
        ``(d, d)`` effects in leaf order.
    genes
        ``(d,)`` gene names in the same order.
    labels
        ``(d,)`` module label of each gene in the same order (``"unassigned"`` gets no box).
    """
    E = np.asarray(reordered, dtype=float)
    genes = [str(g) for g in genes]
    off = np.abs(E[~np.eye(len(E), dtype=bool)]) if len(E) > 1 else np.abs(E).ravel()
    vmax = float(np.quantile(off, clip_quantile)) if off.size and np.any(off > 0) else 1.0
    fig = go.Figure(go.Heatmap(z=E, x=genes, y=genes, zmin=-vmax, zmax=vmax, colorscale="RdBu_r",
                               colorbar=dict(title="effect"),
                               hovertemplate="source %{y} → target %{x}<br>effect %{z:.3g}<extra></extra>"))
    if labels is not None:
        labels = [str(m) for m in labels]
        start = 0
        for i in range(1, len(labels) + 1):
            if i == len(labels) or labels[i] != labels[start]:
                if labels[start] != "unassigned" and i - start > 1:
                    fig.add_shape(type="rect", x0=start - 0.5, x1=i - 0.5, y0=start - 0.5, y1=i - 0.5,
                                  line=dict(color="black", width=2), xref="x", yref="y")
                    fig.add_annotation(x=(start + i - 1) / 2, y=start - 0.5, text=labels[start], showarrow=False,
                                       yshift=8, font=dict(size=11))
                start = i
    fig.update_layout(title=title, height=640, xaxis=dict(title="target", showticklabels=len(genes) <= 120),
                      yaxis=dict(title="source", autorange="reversed", showticklabels=len(genes) <= 120),
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig
