"""What the Causal graph and Benchmark pages show, computed in lcd_core: the edge threshold from a number
of edges, the gene to open on, missed true edges, and what each metric means."""

from __future__ import annotations

import io

import numpy as np
import pytest

from lcd_core.errors import ConfigError
from lcd_core.metrics import METRIC_LOWER_IS_BETTER, METRIC_MEANINGS, metric_legend
from lcd_core.pl import ego_graph, ego_network
from lcd_core.tl import edge_counts, readable_gene, top_k_threshold


def hub_matrix() -> tuple[np.ndarray, list[str]]:
    """40 genes: G00 a hub with 30 edges, G01 with 6, G02 with 3, the rest a few weak ones."""
    rng = np.random.default_rng(0)
    n = 40
    E = rng.normal(0, 0.01, (n, n))
    E[0, 1:31] = 2.0 + rng.uniform(0, 0.1, 30)  # distinct values: no ties at a top-k threshold
    E[1, 32:38] = 1.5 + rng.uniform(0, 0.1, 6)
    E[2, 38:40] = 1.0 + rng.uniform(0, 0.1, 2)
    E[39, 2] = -1.0
    return E, [f"G{i:02d}" for i in range(n)]


def test_top_k_threshold_keeps_the_k_strongest_edges():
    E, _ = hub_matrix()
    for k in (5, 30, 39):
        thr = top_k_threshold(E, k)
        keep = np.abs(E) > thr
        np.fill_diagonal(keep, False)
        assert keep.sum() == k
    assert top_k_threshold(E, 10**6) == 0.0
    with pytest.raises(ConfigError):
        top_k_threshold(np.zeros((2, 3)), 1)


def test_readable_gene_skips_the_hub():
    E, genes = hub_matrix()
    thr = 0.5
    counts = edge_counts(E, thr)
    assert counts[0] == 30 and counts[1] == 7 and counts[2] == 4  # G01 also has G00's edge into it
    assert readable_gene(E, genes, thr) == "G01"  # most edges among genes with ≤ 15
    assert readable_gene(E, genes, thr, max_edges=100) == "G00"
    assert readable_gene(E, genes, thr, max_edges=5) == "G02"
    assert readable_gene(E, genes, 100.0) == "G00"  # no edge: the strongest gene


def test_ego_graph_adds_the_true_edges_the_model_missed():
    E, genes = hub_matrix()
    truth = np.zeros_like(E)
    truth[1, 32:38] = 1.0  # found
    truth[5, 1] = -1.0  # missed: the estimate is ~0
    G = ego_graph(E, genes, "G01", threshold=0.5, truth=truth)
    assert G.edges["G05", "G01"]["missed"] and G.edges["G05", "G01"]["true_effect"] == -1.0
    assert not G.edges["G01", "G32"].get("missed")
    assert G.edges["G00", "G01"]["true_effect"] == 0  # estimated, absent from the truth
    fig = ego_network(G, "G01")
    dashes = {t.line.dash for t in fig.data if t.mode == "lines" and t.x[0] is not None}
    assert {"dash", "dot", "solid"} <= dashes
    names = [t.name for t in fig.data]
    assert "true edge missed by the model" in names and "estimated edge absent from the truth" in names
    assert "missed" not in str(ego_graph(E, genes, "G01", threshold=0.5).edges(data=True))


def test_every_metric_says_what_it_measures_and_which_direction_is_better():
    assert set(METRIC_MEANINGS) == set(METRIC_LOWER_IS_BETTER)
    legend = metric_legend(["mmd", "pearson_delta_top20", "n_obs"]).set_index("metric")
    assert list(legend.index) == ["mmd", "pearson_delta_top20"]  # not a metric: left out
    assert legend.loc["mmd", "better"] == "lower" and legend.loc["pearson_delta_top20", "better"] == "higher"
    assert "top-20 DE genes" in legend.loc["pearson_delta_top20", "measures"]


def test_ego_network_greys_out_edges_that_are_not_identified():
    from lcd_core.pl._network import NOT_IDENTIFIED_COLOUR

    E, genes = hub_matrix()
    labels = np.full(E.shape, "identified", dtype=object)
    labels[1, 32:35] = "not identified"  # three of G01's targets
    G = ego_graph(E, genes, "G01", threshold=0.5, labels=labels)
    assert G.edges["G01", "G32"]["identifiability"] == "not identified"
    assert G.edges["G01", "G36"]["identifiability"] == "identified"
    fig = ego_network(G, "G01")
    grey = [t for t in fig.data if t.mode == "lines" and t.x[0] is not None and t.line.color == NOT_IDENTIFIED_COLOUR]
    assert len(grey) == 1 and len(grey[0].x) == 3 * 3 and grey[0].line.width == 1.5  # 3 edges, thin
    assert "not identified (set by the regulariser)" in [t.name for t in fig.data]
    fig = ego_network(ego_graph(E, genes, "G01", threshold=0.5), "G01")  # without labels: no grey, no entry
    assert not [t for t in fig.data if getattr(t.line, "color", None) == NOT_IDENTIFIED_COLOUR]
