"""The Perturb page (issue 15): distinct predicted / observed traces, the fit check and its marks, the
per-gene and interaction panels, colour by gene, the gene-response table, the .h5ad download, the dead
end of an unseen gene and the refused paper what-if. Helpers and the tiny run: tests/test_app.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from test_app import (AppTest, PAGES, app_env, assert_clean, capture_media, chart, download, find_df,  # noqa: F401
                      metric, n_values, open_page, settle)

PERTURB = PAGES[0]
NOT_REPRODUCED = " ⚠ not reproduced"


@pytest.fixture(scope="module")
def perturb_env(app_env):  # noqa: F811
    """The tiny run with its fit report rewritten: one training double 'outside' (as the fit check says of a
    double the model does not reproduce), every other condition 'within' (the tiny run reproduces few)."""
    from lcd_core.model import LCD

    run = Path(app_env["run"])
    model = LCD.load(run, device="cpu")
    trained_doubles = sorted(c for c in model.conditions if "+" in c)
    bad = trained_doubles[0]
    path = run / "fit.json"
    fit = json.loads(path.read_text())
    for c, entry in fit["conditions"].items():
        entry.update(status="within", why="r 0.99 vs ceiling 0.99, magnitude 1.00")
    fit["conditions"][bad].update(status="outside", why="r 0.10 vs ceiling 0.90")
    path.write_text(json.dumps(fit))
    return {**app_env, "model": model, "bad": bad, "good": trained_doubles[1]}


def test_condition_picker_marks_doubles_the_run_does_not_reproduce(perturb_env):
    at = open_page(PERTURB)
    assert_clean(at)
    box = at.selectbox(key="pert_double")
    marked = [o for o in box.options if o.endswith(NOT_REPRODUCED)]
    assert len(marked) == 1 and marked[0].startswith(perturb_env["bad"])
    # the flagged double: a fit-check warning, and no confident interaction class
    box.select(perturb_env["bad"]).run()
    settle(at)
    assert_clean(at)
    warn = [w.value for w in at.warning if "Fit check" in w.value]
    assert len(warn) == 1 and f"does not reproduce {perturb_env['bad']}" in warn[0]
    assert metric(at, "Interaction class (LCD)") == "not reliable"
    gi = find_df(at, "classes")
    assert "not reproduced" in gi.loc[gi["source"] == "LCD prediction", "class"].iloc[0]
    # a reproduced one: a fit-check line without a warning, and a class from the list
    at.selectbox(key="pert_double").select(perturb_env["good"]).run()
    settle(at)
    assert_clean(at)
    assert not [w.value for w in at.warning if "Fit check" in w.value]
    assert any("Fit check" in m.value for m in [*at.success, *at.caption, *at.warning])
    assert metric(at, "Interaction class (LCD)") in {"additive", "synergy", "suppression", "neomorphism",
                                                     "epistasis", "redundancy"}


def test_predicted_and_observed_are_distinct_traces_with_gene_panels(perturb_env):
    at = open_page(PERTURB)
    label = perturb_env["doubles"][0]  # held out, observed
    at.selectbox(key="pert_double").select(label).run()
    settle(at)
    assert_clean(at)
    traces = {t["name"]: t for t in chart(at, "umap_chart")["data"]}
    pred, obs = traces[f"{label} (predicted)"], traces[f"{label} (observed)"]
    assert pred["marker"]["color"] != obs["marker"]["color"]
    assert {pred["marker"]["color"], obs["marker"]["color"]} == {"#D55E00", "#0072B2"}
    assert not any(t.get("type") == "histogram2dcontour" for t in traces.values())
    at.checkbox(key="umap_contours").check().run()
    settle(at)
    assert sum(t.get("type") == "histogram2dcontour" for t in chart(at, "umap_chart")["data"]) == 2
    # the fit check says a held-out double is a generalisation, not judged
    assert any("not among the training conditions" in c.value for c in at.caption)
    # the two panels behind switches are neither computed nor drawn until switched on
    drawn = [c.proto.id for c in at.get("plotly_chart")]
    assert not [i for i in drawn if i.endswith(("-shift_scatter_chart", "-violin_chart", "-gi_scatter_chart"))]
    at.toggle(key="pert_gene_panel").set_value(True)
    at.toggle(key="pert_gi_panel").set_value(True)
    at.run()
    settle(at)
    assert_clean(at)
    # per-gene panel: predicted vs observed shifts with r, violins of the chosen gene's cell sets
    scatter = chart(at, "shift_scatter_chart")
    assert "Pearson r" in scatter["layout"]["title"]["text"]
    gene = at.selectbox(key="pert_violin_gene").options[1]
    at.selectbox(key="pert_violin_gene").select(gene).run()
    violins = chart(at, "violin_chart")
    assert [t["name"] for t in violins["data"]] == ["control", "observed", "predicted", "additive"]
    assert gene in violins["layout"]["title"]["text"]
    # the double against its additive expectation, both sources
    gi = chart(at, "gi_scatter_chart")
    names = [t["name"] for t in gi["data"]]
    assert any(n.startswith("observed") for n in names) and any(n.startswith("predicted") for n in names)
    assert any("c_a" in m.value and "dominance" in m.value for m in at.markdown)  # the columns explained


def test_umap_coloured_by_a_gene(perturb_env):
    at = open_page(PERTURB)
    label = perturb_env["doubles"][0]
    at.selectbox(key="pert_double").select(label).run()
    settle(at)
    gene = perturb_env["model"].genes[3]
    at.selectbox(key="umap_gene").select(gene).run()
    settle(at)
    assert_clean(at)
    fig = chart(at, "umap_chart")
    traces = {t["name"]: t for t in fig["data"]}
    for name in (f"{label} (predicted)", f"{label} (observed)", "control (observed)"):
        m = traces[name]["marker"]
        assert m["colorscale"][0][1].lower() == "#440154", name  # viridis
        assert n_values(m["color"]) == n_values(traces[name]["x"]) > 0
    assert sum(bool(t["marker"].get("showscale")) for t in fig["data"]) == 1


def test_gene_response_table_and_gi_map(perturb_env):
    from lcd_core import KEYS
    from lcd_core.data import read_screen

    model = perturb_env["model"]
    screen = read_screen(perturb_env["screen"])
    at = open_page(PERTURB)
    gene = model.genes[2]
    at.select_slider(key="resp_cells").set_value(30).run()
    at.selectbox(key="resp_gene").select(gene).run()
    settle(at, 180)
    assert_clean(at)
    resp = find_df(at, "n_observed")
    expected = set(model.conditions) | set(model.info.get("heldout", []))
    assert set(resp["condition"]) == expected - {KEYS.CONTROL}
    shifts = resp["predicted_shift"].abs().to_numpy()
    assert np.all(np.diff(shifts) <= 1e-12)  # ranked by |predicted shift|
    j = model.genes.index(gene)
    row = resp.iloc[0]
    want = screen.log1p(row["condition"])[:, j].mean() - screen.log1p(KEYS.CONTROL)[:, j].mean()
    assert row["observed_shift"] == pytest.approx(want, abs=1e-5)
    # the GI map of the screen's measured doubles, on demand
    assert not [c for c in at.get("plotly_chart") if c.proto.id.endswith("-gi_map_chart")]
    at.toggle(key="pert_gimap").set_value(True).run()
    settle(at, 120)
    assert_clean(at)
    fig = chart(at, "gi_map_chart")
    n_doubles = len([c for c in screen.conditions if "+" in c])
    assert sum(n_values(t["x"]) for t in fig["data"]) == 2 * n_doubles


def test_predicted_cells_download_as_h5ad(perturb_env, capture_media):
    import anndata as ad

    from lcd_core import KEYS

    at = open_page(PERTURB)
    label = perturb_env["good"]
    at.selectbox(key="pert_double").select(label).run()
    settle(at)
    assert_clean(at)
    data = download(at, "dl_h5ad", capture_media)
    a = ad.read_h5ad(io.BytesIO(data))
    counts = a.obs[KEYS.PERT].astype(str).value_counts()
    n = int(at.select_slider(key="pert_cells").value)
    assert counts.to_dict() == {KEYS.CONTROL: n, label: n}
    assert list(a.var_names) == list(perturb_env["model"].genes)
    assert np.isfinite(a.X).all() and a.X.min() >= 0


def test_unseen_gene_says_lcd_has_no_data_and_offers_the_whatif(perturb_env):
    model = perturb_env["model"]
    unseen = next(g for g in model.pert_genes if g in model.genes and model.multihot(g)[1])
    at = open_page(PERTURB)
    at.radio(key="pert_kind").set_value("any gene set").run()
    at.multiselect(key="pert_set").select(unseen).run()
    settle(at)
    assert_clean(at)
    assert any(f"LCD has no data on {unseen}" in w.value for w in at.warning)
    at.button(key="pert_to_whatif").click().run()
    settle(at, 120)
    assert_clean(at)
    assert at.radio(key="pert_mode").value == "Linear what-if (CLIPR)"
    assert at.multiselect(key="wi_genes").value == [unseen]
    assert unseen in find_df(at, "latent_shift_sd")["gene"].tolist()


def test_paper_whatif_refusal_is_a_sentence_with_the_directed_variant_one_click_away(perturb_env):
    at = open_page(PERTURB)
    at.radio(key="pert_mode").set_value("Linear what-if (CLIPR)").run()
    settle(at, 120)
    at.radio(key="wi_variant").set_value("paper").run()
    settle(at, 120)
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "What-if (paper variant)" in errors[0] and "singular" in errors[0], errors
    assert "Traceback" not in errors[0] and not at.expander  # a sentence, no traceback box
    at.button(key="wi_to_directed").click().run()
    settle(at, 120)
    assert_clean(at)
    assert at.radio(key="wi_variant").value == "directed"
    assert len(find_df(at, "latent_shift_sd")) > 0


def test_a_combination_beyond_training_or_an_unseen_gene_is_flagged_as_extrapolation(perturb_env):
    from lcd_core.data._conventions import targets_of

    model = perturb_env["model"]
    trained = sorted({g for c in model.conditions for g in targets_of(c)})
    unseen = [g for g in model.pert_genes if g not in trained]
    at = open_page(PERTURB)
    at.radio(key="pert_kind").set_value("any gene set").run()
    at.multiselect(key="pert_set").select(trained[0]).select(trained[1]).run()
    settle(at)
    assert_clean(at)
    assert not [w.value for w in at.warning if "Extrapolation" in w.value]  # a double of trained genes: within
    at.multiselect(key="pert_set").select(trained[2]).run()
    settle(at)
    assert_clean(at)
    warn = [w.value for w in at.warning if "Extrapolation" in w.value]
    assert len(warn) == 1 and "A combination of 3 genes" in warn[0] and "untested against data" in warn[0]
    assert unseen, "the tiny screen has genes never perturbed in training"
    at.multiselect(key="pert_set").unselect(trained[1]).unselect(trained[2]).select(unseen[0]).run()
    settle(at)
    assert_clean(at)
    warn = [w.value for w in at.warning if "Extrapolation" in w.value]
    assert len(warn) == 1 and f"{unseen[0]} was never perturbed in training" in warn[0]
    assert "A combination" not in warn[0]


def test_prediction_intervals_in_the_shift_table_and_bar_chart(perturb_env):
    """Issue 16.3: a switch adds each gene's interval to the shift table and the bar chart (calibrated on the
    training conditions by the run's fit check; with an ensemble, its networks' spread too); without either,
    a sentence says how to get them."""
    from lcd_core.data import read_screen
    from lcd_core.model import fit_ensemble

    run = Path(perturb_env["run"])
    label = perturb_env["doubles"][0]

    def page_with_intervals() -> tuple:
        at = open_page(PERTURB)
        at.selectbox(key="pert_double").select(label).run()
        settle(at)
        assert "shift_low" not in find_df(at, "predicted_shift").columns  # off unless asked
        at.toggle(key="pert_intervals").set_value(True).run()
        settle(at)
        assert_clean(at)
        table = find_df(at, "predicted_shift")
        assert {"shift_low", "shift_high", "sd_model"} <= set(table.columns)
        assert (table["shift_low"] <= table["predicted_shift"]).all()
        assert (table["predicted_shift"] <= table["shift_high"]).all()
        bars = chart(at, "shift_bars")["data"]
        assert bars[0]["type"] == "bar" and "error_x" in bars[0] and n_values(bars[0]["x"]) == 20
        assert any(t["name"] == "observed" for t in bars)  # a held-out double with observed cells
        return at, table

    # the fit check written by training calibrates them: no ensemble needed
    at, table = page_with_intervals()
    assert (table["sd_model"] == 0).all()
    assert any("split-conformal" in c.value for c in at.caption)

    fit_ensemble(run, read_screen(perturb_env["screen"]), members=2)
    fit = json.loads((run / "fit.json").read_text())
    try:
        at, table = page_with_intervals()
        assert (table["sd_model"] > 0).any()
        assert any("3 networks" in c.value for c in at.caption)
        # neither an ensemble nor a calibrated fit check: no switch, a sentence instead
        for name in ("ensemble.json", "ensemble.safetensors"):
            (run / name).unlink()
        bare = {**fit, "conditions": {c: {k: v for k, v in e.items() if k != "interval_pairs"}
                                      for c, e in fit["conditions"].items()}}
        (run / "fit.json").write_text(json.dumps(bare))
        at = open_page(PERTURB)
        at.selectbox(key="pert_double").select(label).run()
        settle(at)
        assert_clean(at)
        assert any("neither an ensemble" in c.value and "lcd fit" in c.value for c in at.caption)
        assert not [t for t in at.toggle if t.key == "pert_intervals"]
    finally:
        for name in ("ensemble.json", "ensemble.safetensors"):
            (run / name).unlink(missing_ok=True)
        (run / "fit.json").write_text(json.dumps(fit))
