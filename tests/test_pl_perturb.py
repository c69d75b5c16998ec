"""The Perturb page's figures (lcd_core.pl): distinct predicted / observed traces, contours, colour by
gene, the predicted-vs-observed shift scatter and the violins of one gene."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lcd_core import pl
from lcd_core.errors import ConfigError
from lcd_core.pl._embedding import PAIRS
from lcd_core.pl._genes import SOURCE_COLOURS
from lcd_core.tl import gene_shift_table


def _xy(seed: int, n: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 2))


def test_embedding_scatter_draws_observed_and_predicted_in_distinct_colours():
    fig = pl.embedding_scatter(_xy(0, 200), {"A+B": _xy(1)}, {"A+B": _xy(2)}, control=_xy(3))
    traces = {t.name: t for t in fig.data}
    obs, pred = traces["A+B (observed)"], traces["A+B (predicted)"]
    assert obs.marker.color == PAIRS[0][0] == "#0072B2" and pred.marker.color == PAIRS[0][1] == "#D55E00"
    assert obs.marker.symbol == "circle" and pred.marker.symbol == "x"
    assert traces["control (observed)"].marker.color == "#666666"
    # two conditions: four different colours
    fig2 = pl.embedding_scatter(_xy(0, 200), {"A": _xy(1), "B": _xy(2)}, {"A": _xy(3), "B": _xy(4)})
    colours = [t.marker.color for t in fig2.data if t.name != "reference cells"]
    assert len(colours) == 4 == len(set(colours))
    # no contours unless asked; then one per drawn cloud, in its colour
    assert not [t for t in fig.data if t.type == "histogram2dcontour"]
    with_c = pl.embedding_scatter(_xy(0, 200), {"A+B": _xy(1)}, {"A+B": _xy(2)}, contours=True)
    cont = {t.name: t for t in with_c.data if t.type == "histogram2dcontour"}
    assert cont.keys() == {"A+B (observed) density", "A+B (predicted) density"}
    assert cont["A+B (predicted) density"].line.color == "#D55E00"


def test_embedding_scatter_colours_cells_by_a_gene_on_one_viridis_scale():
    obs_v, pred_v, ctrl_v = np.linspace(0, 1, 40), np.linspace(2, 5, 40), np.zeros(40)
    fig = pl.embedding_scatter(_xy(0, 200), {"A": _xy(1)}, {"A": _xy(2)}, control=_xy(3), expression_name="G7",
                               expression={"control": ctrl_v, "observed": {"A": obs_v}, "predicted": {"A": pred_v}})
    traces = {t.name: t for t in fig.data}
    for name, v in (("A (observed)", obs_v), ("A (predicted)", pred_v), ("control (observed)", ctrl_v)):
        m = traces[name].marker
        assert np.allclose(m.color, v) and (m.cmin, m.cmax) == (0.0, 5.0)
        assert m.colorscale[0][1].lower() == "#440154"  # viridis starts dark purple
    assert sum(bool(t.marker.showscale) for t in fig.data if t.type == "scatter") == 1
    assert traces["reference cells"].marker.color == "#c8c8c8"


def test_shift_scatter_reports_pearson_r_of_the_top_genes():
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(30)]
    ctrl = rng.normal(2, 0.1, (50, 30))
    obs = ctrl + np.linspace(-1, 1, 30)
    table = gene_shift_table(obs + rng.normal(0, 0.05, obs.shape), ctrl, genes, observed=obs)
    rows, r = pl.shift_agreement(table, top=10)
    assert len(rows) == 10 and r > 0.95
    fig = pl.shift_scatter(table, top=10, title="A+B")
    assert f"r = {r:.2f}" in fig.layout.title.text
    pts = next(t for t in fig.data if t.mode == "markers+text")
    assert list(pts.text) == list(rows["gene"]) and pts.marker.color == SOURCE_COLOURS["predicted"]
    # anti-correlated prediction: negative r
    flipped = table.assign(predicted_shift=-table["observed_shift"])
    assert pl.shift_agreement(flipped, top=10)[1] < -0.99
    with pytest.raises(ConfigError, match="no observed"):
        pl.shift_scatter(table.drop(columns=["observed_shift"]))


def test_gene_violins_one_trace_per_cell_set_in_its_colour():
    rng = np.random.default_rng(1)
    genes = ["X", "Y", "Z"]
    cells = {"control": rng.normal(0, 1, (20, 3)), "observed": rng.normal(1, 1, (20, 3)),
             "predicted": rng.normal(2, 1, (20, 3)), "additive": rng.normal(3, 1, (20, 3)),
             "empty": np.zeros((0, 3))}
    fig = pl.gene_violins(cells, "Y", genes)
    assert [t.name for t in fig.data] == ["control", "observed", "predicted", "additive"]
    for t in fig.data:
        assert t.type == "violin" and t.line.color == SOURCE_COLOURS[t.name]
        assert np.allclose(t.y, cells[t.name][:, 1])
    assert len({t.line.color for t in fig.data}) == 4
    with pytest.raises(ConfigError, match="not a modelled gene"):
        pl.gene_violins(cells, "W", genes)
