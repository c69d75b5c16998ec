"""The Causal graph page (issue 16): identifiability labels on the edges and in the exports, not-identified
edges greyed out, edge confidence computed on request in the background and kept in the run, and the
shuffled-label null as a filter. Helpers and the tiny run (d = 20 genes, 8 perturbed): tests/test_app.py."""

from __future__ import annotations

import io

import pandas as pd

from test_app import (PAGES, app_env, assert_clean, capture_media, chart, download, find_df,  # noqa: F401
                      metric, open_page, settle)

GRAPH = PAGES[1]
ALL = 20 * 19  #: every off-diagonal edge of the tiny run


def n_edges(at) -> int:
    return int(metric(at, "edges above threshold").replace(",", ""))


def test_edges_carry_identifiability_and_not_identified_ones_are_grey(app_env, capture_media):  # noqa: F811
    from lcd_core.pl._network import NOT_IDENTIFIED_COLOUR

    at = open_page(GRAPH)
    assert_clean(at)
    at.select_slider(key="cg_top_k").set_value(ALL).run()  # every edge
    edges = find_df(at, "identifiability")
    assert set(edges["identifiability"]) <= {"identified", "partly identified", "not identified"}
    # 8 of 20 genes perturbed: the edges among the 12 others are decided by the regulariser
    assert (edges["identifiability"] == "not identified").sum() > 0
    assert any("**Identifiability** (directed): response matrix rank 8 of 20" in m.value for m in at.markdown)
    assert any("Grey edges are not identified" in m.value for m in at.markdown)
    # the ego graph of a gene with a not-identified edge draws it grey
    gene = edges.loc[edges["identifiability"] == "not identified", "source"].iloc[0]
    at.selectbox(key="cg_gene").select(gene).run()
    assert_clean(at)
    colours = {t.get("line", {}).get("color") for t in chart(at, "ego_chart")["data"] if t.get("mode") == "lines"}
    assert NOT_IDENTIFIED_COLOUR in colours
    at.run()  # media of the last run is what the buttons point to
    table = pd.read_csv(io.BytesIO(download(at, "dl_edges", capture_media)))
    assert list(table.columns[:4]) == ["source", "target", "effect", "identifiability"]
    # no confidence yet: the null filter waits for it
    assert at.checkbox(key="cg_null").disabled and "lower90" not in edges.columns


def test_confidence_on_request_then_cached_and_the_null_filters_edges(app_env, capture_media):  # noqa: F811
    at = open_page(GRAPH)
    at.select_slider(key="cg_top_k").set_value(ALL).run()
    n_all = n_edges(at)
    at.button(key="cg_conf_btn").click().run()
    settle(at, 300)
    assert_clean(at)
    edges = find_df(at, "sign_stability")
    assert {"identifiability", "lower90", "upper90", "sign_stability", "exceeds_null99"} <= set(edges.columns)
    assert (edges["lower90"] <= edges["upper90"]).all() and edges["sign_stability"].between(0, 1).all()
    assert any("label shuffles" in c.value for c in at.caption)
    at.checkbox(key="cg_null").check().run()
    assert_clean(at)
    n_null = n_edges(at)
    assert n_null < n_all
    assert n_null == int(edges["exceeds_null99"].sum())  # the filter is the null's 99th percentile
    at.run()
    table = pd.read_csv(io.BytesIO(download(at, "dl_edges", capture_media)))
    assert len(table) == n_null and table["exceeds_null99"].all()
    # kept in the run: the next visit shows the columns at once, without the button
    at = open_page(GRAPH)
    assert_clean(at)
    assert "sign_stability" in find_df(at, "source").columns
    assert not [b for b in at.button if b.key == "cg_conf_btn"]


def test_paper_variant_says_why_no_confidence_and_that_its_signs_are_not_to_be_trusted(app_env):  # noqa: F811
    at = open_page(GRAPH)
    at.radio(key="cg_variant").set_value("paper").run()
    settle(at, 120)
    assert_clean(at)
    assert any("directed variant only" in c.value for c in at.caption)
    assert at.checkbox(key="cg_null").disabled
    assert any("**Identifiability** (paper)" in m.value and "signs are not to be trusted" in m.value
               for m in at.markdown)
    assert "identifiability" in find_df(at, "source").columns
