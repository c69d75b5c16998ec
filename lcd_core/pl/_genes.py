"""Per-gene views of one prediction: predicted against observed shifts, and one gene's cells as violins."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..errors import ConfigError
from ._embedding import CONTROL_COLOUR, PAIRS

#: Okabe–Ito colour of each cell set (colour-blind safe); control grey; the same observed / predicted
#: colours as the embedding scatter's first condition
SOURCE_COLOURS = {"control": CONTROL_COLOUR, "observed": PAIRS[0][0], "predicted": PAIRS[0][1], "additive": "#009E73"}


def shift_agreement(table: pd.DataFrame, *, top: int = 30) -> tuple[pd.DataFrame, float]:
    """The ``top`` genes of a shift table (by |predicted shift|, its order) and the Pearson r of their
    predicted and observed shifts.

    Parameters
    ----------
    table
        :func:`lcd_core.tl.gene_shift_table` output with ``observed_shift`` (ranked by |predicted shift|).
    top
        Genes kept.

    Returns
    -------
    ``(rows, r)``; ``r`` is NaN when fewer than 3 genes or either shift is constant.
    """
    if "observed_shift" not in table:
        raise ConfigError("the shift table has no observed_shift column: the condition has no observed cells")
    rows = table.head(int(top))
    x, y = rows["observed_shift"].to_numpy(dtype=float), rows["predicted_shift"].to_numpy(dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    r = float(np.corrcoef(x, y)[0, 1]) if len(x) >= 3 and x.std() > 0 and y.std() > 0 else float("nan")
    return rows, r


def shift_scatter(table: pd.DataFrame, *, top: int = 30, title: str | None = None) -> go.Figure:
    """Predicted (y) against observed (x) mean shift of the ``top`` genes, the diagonal, and Pearson r in
    the title (:func:`shift_agreement`); shifts in log1p CP10k against control."""
    rows, r = shift_agreement(table, top=top)
    x, y = rows["observed_shift"].to_numpy(dtype=float), rows["predicted_shift"].to_numpy(dtype=float)
    both = np.concatenate([x, y])
    lo, hi = (float(np.nanmin(both)), float(np.nanmax(both))) if both.size else (-1.0, 1.0)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="predicted = observed",
                             line=dict(color="grey", dash="dot"), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=x, y=y, mode="markers+text", name=f"top {len(rows)} genes", text=rows["gene"],
                             textposition="top center", textfont=dict(size=9),
                             marker=dict(color=SOURCE_COLOURS["predicted"], size=7, symbol="x"),
                             hovertemplate="%{text}<br>observed %{x:.3f}<br>predicted %{y:.3f}<extra></extra>"))
    head = f"Pearson r = {r:.2f}" if np.isfinite(r) else "Pearson r: n/a"
    fig.update_layout(title=f"{title}: {head}" if title else head, height=420, showlegend=False,
                      xaxis_title="observed shift (log1p CP10k)", yaxis_title="predicted shift (log1p CP10k)",
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig


def gene_violins(cells: Mapping[str, np.ndarray], gene: str, genes: Sequence[str], *,
                 title: str | None = None) -> go.Figure:
    """One gene's expression in each cell set as violins (one trace per set, in the order given).

    Parameters
    ----------
    cells
        Set name → ``(n, G)`` log1p CP10k cells; the names ``control``, ``observed``, ``predicted`` and
        ``additive`` get their :data:`SOURCE_COLOURS`, others a neutral colour. Empty sets are skipped.
    gene
        The gene drawn (one of ``genes``).
    genes
        The ``G`` gene names of every array.
    """
    genes = list(genes)
    if gene not in genes:
        raise ConfigError(f"{gene!r} is not a modelled gene")
    j = genes.index(gene)
    fig = go.Figure()
    for name, X in cells.items():
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or not len(X):
            continue
        colour = SOURCE_COLOURS.get(name, "#999999")
        fig.add_trace(go.Violin(y=X[:, j], name=name, line=dict(color=colour), fillcolor=colour, opacity=0.6,
                                box=dict(visible=True), meanline=dict(visible=True), points=False))
    fig.update_layout(title=title or gene, height=380, showlegend=False, yaxis_title=f"{gene} (log1p CP10k)",
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig


def shift_bars(table: pd.DataFrame, *, top: int = 20, title: str | None = None) -> go.Figure:
    """The ``top`` genes' predicted mean shift as bars, ranked by |shift|, with the prediction interval
    (columns ``shift_low``, ``shift_high``; :func:`lcd_core.model.shift_intervals`) as error bars where
    the table has them and the observed shift (``observed_shift``) as a marker where it has that.
    Shifts in log1p CP10k against control."""
    rows = table.reindex(table["predicted_shift"].abs().sort_values(ascending=False).index).head(top).iloc[::-1]
    y = rows["gene"].astype(str).tolist()
    pred = rows["predicted_shift"].to_numpy(dtype=float)
    error = None
    if {"shift_low", "shift_high"} <= set(rows):
        error = dict(type="data", symmetric=False, array=rows["shift_high"].to_numpy(dtype=float) - pred,
                     arrayminus=pred - rows["shift_low"].to_numpy(dtype=float), color="#444444", thickness=1.2)
    fig = go.Figure(go.Bar(x=pred, y=y, orientation="h", name="predicted", error_x=error,
                           marker_color=SOURCE_COLOURS["predicted"],
                           hovertemplate="%{y}: predicted %{x:.3f}<extra></extra>"))
    if "observed_shift" in rows:
        fig.add_trace(go.Scatter(x=rows["observed_shift"].to_numpy(dtype=float), y=y, mode="markers", name="observed",
                                 marker=dict(color=SOURCE_COLOURS["observed"], size=8, symbol="diamond"),
                                 hovertemplate="%{y}: observed %{x:.3f}<extra></extra>"))
    fig.update_layout(title=title, height=max(300, 22 * len(rows) + 80), xaxis_title="mean shift (log1p CP10k)",
                      margin=dict(l=10, r=10, t=40 if title else 10, b=10), legend=dict(orientation="h", y=-0.15))
    return fig
