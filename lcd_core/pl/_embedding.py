"""Observed and predicted cells on one reference embedding, with control → condition shift arrows."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go

#: above this many points a trace uses WebGL (Scattergl); SVG gets slow beyond ~10k points
WEBGL_MIN_POINTS = 10_000

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def embedding_scatter(
    reference: np.ndarray,
    observed: Mapping[str, np.ndarray] | None = None,
    predicted: Mapping[str, np.ndarray] | None = None,
    *,
    control: np.ndarray | None = None,
    method: str = "UMAP",
    title: str | None = None,
    webgl_min_points: int = WEBGL_MIN_POINTS,
    max_reference_points: int | None = 1500,
) -> go.Figure:
    """Reference cells in grey, observed cells (circles) and predicted cells (crosses) per condition in
    one colour each, and an arrow from the control centroid to each condition's predicted centroid.

    Parameters
    ----------
    reference
        ``(n, 2)`` coordinates of the reference (control + training) cells.
    observed, predicted
        Condition → ``(n_c, 2)`` coordinates.
    control
        ``(n0, 2)`` control coordinates (arrow start); default: no arrows.
    method
        Axis label prefix (``"UMAP"`` or ``"PC"``).
    webgl_min_points
        Use ``Scattergl`` for every trace when the figure holds at least this many points.
    max_reference_points
        Draw at most this many reference cells (an even stride through them): the grey backdrop only
        needs its shape, and the browser draws every point again for each new question (on the demo,
        1500 instead of 3000 took the slowest double → updated UMAP from 2.0 to 1.7 s on a 2-core
        laptop-class CPU, docs/benchmarks.md). ``None`` draws all.
    """
    observed, predicted = dict(observed or {}), dict(predicted or {})
    reference = np.asarray(reference)
    if max_reference_points is not None and len(reference) > max_reference_points:
        reference = reference[np.linspace(0, len(reference) - 1, max_reference_points).astype(int)]
    n_total = len(reference) + sum(map(len, observed.values())) + sum(map(len, predicted.values()))
    Scatter = go.Scattergl if n_total >= webgl_min_points else go.Scatter
    fig = go.Figure()
    fig.add_trace(Scatter(x=reference[:, 0], y=reference[:, 1], mode="markers", name="reference cells",
                          marker=dict(size=3, color="#c8c8c8"), hoverinfo="skip"))
    if control is not None and len(control):
        fig.add_trace(Scatter(x=control[:, 0], y=control[:, 1], mode="markers", name="control (observed)",
                              marker=dict(size=4, color="#555555", opacity=0.6)))
    labels = list(dict.fromkeys(list(predicted) + list(observed)))
    for k, label in enumerate(labels):
        color = _PALETTE[k % len(_PALETTE)]
        if label in observed and len(observed[label]):
            xy = observed[label]
            fig.add_trace(Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", name=f"{label} (observed)",
                                  marker=dict(size=5, color=color, opacity=0.45, symbol="circle")))
        if label in predicted and len(predicted[label]):
            xy = predicted[label]
            fig.add_trace(Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", name=f"{label} (predicted)",
                                  marker=dict(size=6, color=color, opacity=0.8, symbol="x")))
            if control is not None and len(control):
                start, end = np.median(control, 0), np.median(xy, 0)
                fig.add_annotation(x=end[0], y=end[1], ax=start[0], ay=start[1], xref="x", yref="y",
                                   axref="x", ayref="y", showarrow=True, arrowhead=3, arrowwidth=2,
                                   arrowcolor=color, text="")
    fig.update_layout(title=title, xaxis_title=f"{method} 1", yaxis_title=f"{method} 2", height=520,
                      legend=dict(itemsizing="constant"), margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    return fig
