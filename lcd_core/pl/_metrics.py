"""Benchmark and training plots."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go


def metric_bars(summary: pd.DataFrame, metrics: Sequence[str], *, title: str | None = None) -> go.Figure:
    """Grouped bars of mean ± s.e.m. per method for each metric (a :func:`lcd_core.metrics.summarize` table)."""
    fig = go.Figure()
    sub = summary[summary["metric"].isin(list(metrics))]
    for method, rows in sub.groupby("method", sort=False):
        fig.add_trace(go.Bar(x=rows["metric"], y=rows["mean"], name=str(method),
                             error_y=dict(type="data", array=rows["sem"].fillna(0).to_numpy())))
    fig.update_layout(barmode="group", title=title, height=420, yaxis_title="mean over conditions",
                      legend=LEGEND_BELOW, margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    return fig


#: where plotly's legend goes on the app's plots: below the axes, so the toolbar (top right) never covers it
LEGEND_BELOW = dict(orientation="h", yanchor="top", y=-0.3, xanchor="left", x=0)


def loss_curve(log: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Training loss against step, one panel per stage, each with its own y axis (stage 1's loss is in
    the thousands, stage 2's near 1: one shared axis would flatten stage 2). Rows of a run's
    ``log.jsonl`` with ``stage, step, loss``; ``val_loss`` is drawn dashed when logged."""
    from plotly.subplots import make_subplots

    rows = log.dropna(subset=["loss"]) if len(log) and {"stage", "step", "loss"} <= set(log.columns) else log.iloc[:0]
    stages = list(dict.fromkeys(rows["stage"].astype(str))) if len(rows) else []
    fig = make_subplots(rows=1, cols=max(len(stages), 1), subplot_titles=[f"{s} loss" for s in stages] or None,
                        horizontal_spacing=0.08)
    for i, stage in enumerate(stages, start=1):
        part = rows[rows["stage"].astype(str) == stage]
        fig.add_trace(go.Scatter(x=part["step"], y=part["loss"], mode="lines", name=f"{stage} loss",
                                 line=dict(color="#0072B2")), row=1, col=i)
        if "val_loss" in part.columns and part["val_loss"].notna().any():
            v = part.dropna(subset=["val_loss"])
            fig.add_trace(go.Scatter(x=v["step"], y=v["val_loss"], mode="lines", name=f"{stage} validation",
                                     line=dict(color="#D55E00", dash="dash")), row=1, col=i)
        fig.update_xaxes(title_text="step", row=1, col=i)
        fig.update_yaxes(title_text="loss" if i == 1 else None, row=1, col=i)
    fig.update_layout(title=title, height=320, showlegend=any(t.name.endswith("validation") for t in fig.data),
                      legend=LEGEND_BELOW, margin=dict(l=10, r=10, t=60 if title else 40, b=50))
    return fig
