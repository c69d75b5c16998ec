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
                      margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    return fig


def loss_curve(log: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Training loss per stage against step (rows of a run's ``log.jsonl`` with ``stage, step, loss``)."""
    fig = go.Figure()
    if len(log) and {"stage", "step", "loss"} <= set(log.columns):
        for stage, rows in log.dropna(subset=["loss"]).groupby("stage", sort=False):
            fig.add_trace(go.Scatter(x=rows["step"], y=rows["loss"], mode="lines", name=str(stage)))
    fig.update_layout(title=title, height=320, xaxis_title="step", yaxis_title="loss",
                      margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    return fig
