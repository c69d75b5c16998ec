"""Genetic interactions as the field draws them (issue 15 item 6): the additive-expectation scatter of a
double, the GI map of a screen, the one-line words for each column, and their figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from lcd_core import pl
from lcd_core.data import read_screen
from lcd_core.tl import (INTERACTION_CLASSES, INTERACTION_COLUMNS, classify_interactions, double_interaction,
                         interaction_map, interaction_scores, interaction_shifts)
from lcd_core.tl._interactions import _PRIORITY

ROOT = Path(__file__).resolve().parents[1]
G = 40


def _cells(rng, shift, n=400):
    """log1p of CP10k-like values: a per-gene base level plus ``shift`` (CP10k), Gaussian noise."""
    base = np.linspace(2.0, 12.0, G)
    return np.log1p(np.maximum(rng.normal(base + shift, 0.5, (n, G)), 0.0))


@pytest.fixture(scope="module")
def additive_double():
    rng = np.random.default_rng(0)
    sa = rng.normal(0, 1.5, G)
    sb = rng.normal(0, 1.5, G)
    return {"ctrl": _cells(rng, 0), "A": _cells(rng, sa), "B": _cells(rng, sb), "A+B": _cells(rng, sa + sb),
            "synergy": _cells(rng, 2 * (sa + sb))}


def test_an_additive_double_lies_on_the_diagonal_and_a_doubled_one_reads_as_synergy(additive_double):
    c = additive_double
    genes = [f"g{i}" for i in range(G)]
    t = interaction_shifts(c["ctrl"], c["A"], c["B"], genes=genes, observed=c["A+B"], predicted=c["synergy"])
    assert list(t.columns) == ["gene", "delta_a", "delta_b", "additive", "observed", "observed_fit", "predicted",
                               "predicted_fit"]
    np.testing.assert_allclose(t["additive"], t["delta_a"] + t["delta_b"])
    assert np.corrcoef(t["additive"], t["observed"])[0, 1] > 0.98
    # the double is the sum of its singles' CP10k shifts, so its z-shift is too: slope 1 through the origin
    assert np.median(t["observed"] / t["additive"]) == pytest.approx(1.0, abs=0.1)
    obs, pred = t.attrs["scores"]["observed"], t.attrs["scores"]["predicted"]
    assert obs["c_a"] == pytest.approx(1.0, abs=0.15) and obs["c_b"] == pytest.approx(1.0, abs=0.15)
    assert obs["class"] == "additive" and pred["class"] == "synergy"
    assert pred["magnitude"] == pytest.approx(2 * np.sqrt(2), rel=0.1)
    np.testing.assert_allclose(t["predicted_fit"], pred["c_a"] * t["delta_a"] + pred["c_b"] * t["delta_b"])
    # the same numbers as the Perturb page's interaction box (one definition of the scores)
    box = double_interaction(c["ctrl"], c["A"], c["B"], c["A+B"])
    assert box["c_a"] == pytest.approx(obs["c_a"]) and box["class"] == obs["class"]
    with pytest.raises(Exception, match="observed or predicted"):
        interaction_shifts(c["ctrl"], c["A"], c["B"], genes=genes)


def test_the_map_scores_each_double_once_per_source_and_skips_those_without_singles(additive_double):
    c = dict(additive_double)
    cells = {"ctrl": c["ctrl"], "A": c["A"], "B": c["B"], "A+B": c["A+B"], "A+C": c["A+B"]}
    m = interaction_map(cells, predicted={"A+B": c["synergy"]})
    assert list(zip(m["double"], m["source"])) == [("A+B", "observed"), ("A+B", "predicted")]
    assert list(m["class"]) == ["additive", "synergy"]
    assert m.attrs["skipped"] == {"A+C": "single(s) C not measured"}
    assert set(m.attrs["thresholds"]) == {"observed", "predicted"}


def test_gi_map_of_the_demo_screen(tmp_path):
    screen = read_screen(ROOT / "assets" / "demo_screen.h5ad")
    cells = {c: screen.log1p(c) for c in screen.conditions}
    m = interaction_map(cells)
    testable = [c for c in screen.combos if all(t in cells for t in c.split("+"))]
    assert sorted(m["double"]) == sorted(testable) and len(m) == 48
    assert set(m["class"]) <= set(INTERACTION_CLASSES)
    again = classify_interactions(m[[k for k in m.columns if k in INTERACTION_COLUMNS or k in
                                     ("double", "gene_a", "gene_b", "source")]].drop(columns=["class", "classes"]))
    assert list(again["class"]) == list(m["class"])
    fig = pl.gi_map(m)
    assert isinstance(fig, go.Figure)
    xs = [x for tr in fig.data for x in tr.x]
    assert len(xs) == 2 * len(m)  # each double drawn at (a, b) and (b, a)
    assert {tr.name for tr in fig.data} == set(m["class"])


def test_every_column_and_class_has_one_line_of_words():
    rng = np.random.default_rng(1)
    s = interaction_scores(rng.normal(size=30), rng.normal(size=30), rng.normal(size=30))
    df = classify_interactions(__import__("pandas").DataFrame([s]))
    shown = [k for k in df.columns if k not in INTERACTION_CLASSES]
    assert set(shown) <= set(INTERACTION_COLUMNS), set(shown) - set(INTERACTION_COLUMNS)
    assert set(INTERACTION_CLASSES) == set(_PRIORITY)
    assert all("\n" not in v and 10 < len(v) < 160 for v in [*INTERACTION_COLUMNS.values(), *INTERACTION_CLASSES.values()])


def test_gi_scatter_draws_the_diagonal_and_both_sources(additive_double):
    c = additive_double
    t = interaction_shifts(c["ctrl"], c["A"], c["B"], genes=[f"g{i}" for i in range(G)], observed=c["A+B"],
                           predicted=c["synergy"])
    fig = pl.gi_scatter(t, title="A+B")
    names = [tr.name for tr in fig.data]
    assert names[0].startswith("additive") and names[1].startswith("observed: additive")
    assert names[2].startswith("predicted: synergy")
    assert fig.data[1].marker.color != fig.data[2].marker.color  # distinct, colour-blind-safe colours
    np.testing.assert_allclose(fig.data[2].y, t["predicted"])
