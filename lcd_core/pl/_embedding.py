"""Observed and predicted cells on one reference embedding, with control → condition shift arrows."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go

#: above this many points a trace uses WebGL (Scattergl); SVG gets slow beyond ~10k points
WEBGL_MIN_POINTS = 10_000

#: Okabe–Ito colours (colour-blind safe), one (observed, predicted) pair per condition: the first pair is
#: the one :data:`lcd_core.pl.GI_COLOURS` uses (observed blue, predicted vermillion)
PAIRS = [("#0072B2", "#D55E00"), ("#56B4E9", "#E69F00"), ("#009E73", "#CC79A7"), ("#000000", "#F0E442")]
#: control cells: dark grey; reference cells: light grey
CONTROL_COLOUR, REFERENCE_COLOUR = "#666666", "#c8c8c8"


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
    contours: bool = False,
    expression: Mapping[str, Mapping[str, np.ndarray] | np.ndarray] | None = None,
    expression_name: str = "expression",
) -> go.Figure:
    """Reference cells in light grey, control in dark grey, observed cells (circles) and predicted cells
    (crosses) of each condition in two distinct Okabe–Ito colours (:data:`PAIRS`), and an arrow from the
    control centroid to each condition's predicted centroid. Traces are named ``"{label} (observed)"`` and
    ``"{label} (predicted)"``.

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
    contours
        Also draw density contours of each condition's observed and predicted cells (lines in their colour).
    expression
        Colour the control, observed and predicted cells by one gene's expression instead (viridis, one
        shared scale): ``{"control": (n0,), "observed": {label: (n_c,)}, "predicted": {label: (n_c,)}}``,
        values per cell in the order of the coordinates (log1p CP10k); missing entries keep their colour.
    expression_name
        Colour bar title (the gene).
    """
    observed, predicted = dict(observed or {}), dict(predicted or {})
    reference = np.asarray(reference)
    if max_reference_points is not None and len(reference) > max_reference_points:
        reference = reference[np.linspace(0, len(reference) - 1, max_reference_points).astype(int)]
    n_total = len(reference) + sum(map(len, observed.values())) + sum(map(len, predicted.values()))
    Scatter = go.Scattergl if n_total >= webgl_min_points else go.Scatter
    expression = dict(expression or {})
    values = [np.asarray(v, dtype=float) for v in [expression.get("control"), *dict(expression.get("observed") or {}).values(),
                                                   *dict(expression.get("predicted") or {}).values()] if v is not None]
    values = [v for v in values if v.size]
    scale = None
    if values:
        every = np.concatenate(values)
        scale = (float(np.nanmin(every)), float(np.nanmax(every)))
    shown_bar = []

    def marker(colour: str, values, **kw) -> dict:
        if scale is None or values is None:
            return dict(color=colour, **kw)
        bar = dict(title=expression_name, x=1.02) if not shown_bar else None
        shown_bar.append(True)
        return dict(color=np.asarray(values, dtype=float), colorscale="Viridis", cmin=scale[0], cmax=scale[1],
                    showscale=bar is not None, colorbar=bar, **kw)

    fig = go.Figure()
    fig.add_trace(Scatter(x=reference[:, 0], y=reference[:, 1], mode="markers", name="reference cells",
                          marker=dict(size=3, color=REFERENCE_COLOUR), hoverinfo="skip"))
    if control is not None and len(control):
        fig.add_trace(Scatter(x=control[:, 0], y=control[:, 1], mode="markers", name="control (observed)",
                              marker=marker(CONTROL_COLOUR, expression.get("control"), size=4, opacity=0.6)))
    labels = list(dict.fromkeys(list(predicted) + list(observed)))
    for k, label in enumerate(labels):
        obs_colour, pred_colour = PAIRS[k % len(PAIRS)]
        for source, coords, colour, kw in (
                ("observed", observed, obs_colour, dict(size=5, opacity=0.5, symbol="circle")),
                ("predicted", predicted, pred_colour, dict(size=6, opacity=0.8, symbol="x"))):
            if label not in coords or not len(coords[label]):
                continue
            xy = np.asarray(coords[label])
            vals = dict(expression.get(source) or {}).get(label)
            fig.add_trace(Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", name=f"{label} ({source})",
                                  legendgroup=f"{label} ({source})", marker=marker(colour, vals, **kw)))
            if contours and len(xy) >= 5:
                fig.add_trace(go.Histogram2dContour(
                    x=xy[:, 0], y=xy[:, 1], name=f"{label} ({source}) density", legendgroup=f"{label} ({source})",
                    showlegend=False, contours=dict(coloring="none"), ncontours=6, showscale=False,
                    line=dict(color=colour, width=1.5), hoverinfo="skip"))
        if label in predicted and len(predicted[label]) and control is not None and len(control):
            start, end = np.median(control, 0), np.median(predicted[label], 0)
            fig.add_annotation(x=end[0], y=end[1], ax=start[0], ay=start[1], xref="x", yref="y",
                               axref="x", ayref="y", showarrow=True, arrowhead=3, arrowwidth=2,
                               arrowcolor=pred_colour, text="")
    fig.update_layout(title=title, xaxis_title=f"{method} 1", yaxis_title=f"{method} 2", height=520,
                      legend=dict(itemsizing="constant"), margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    return fig
