"""Home with AppTest: a file typed in the path box, what a screen supports before training, a failed
file clearing the previous screen, the model picker on a screen no run belongs to, the context picker."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import make_tiny_counts
from test_app import PAGES, AppTest, APP, app_env, assert_clean, capture_media, metric  # noqa: F401  (fixtures)

from lcd_core import KEYS


def home() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    return at


def path_box(at: AppTest):
    return next(t for t in at.text_input if t.label == "Path to an .h5ad file")


def type_path(at: AppTest, path) -> AppTest:
    path_box(at).input(str(path)).run()
    return at


def open_path_mode(at: AppTest) -> AppTest:
    at.radio[0].set_value("path").run()
    return at


@pytest.fixture(scope="module")
def unmodelled_targets_h5ad(tmp_path_factory):
    """A count screen whose perturbed genes are not measured (CRISPRa-like): 4 singles, 1 double."""
    adata = make_tiny_counts(seed=3)
    rename = {"G00": "XA", "G01": "XB", "G02": "XC", "G03": "XD"}
    labels = ["+".join(rename[g] for g in c.split("+")) if c != "ctrl" else c
              for c in adata.obs[KEYS.PERT].astype(str)]
    adata.obs[KEYS.PERT] = pd.Categorical(labels)
    path = tmp_path_factory.mktemp("home") / "crispra.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def two_cell_types_h5ad(tmp_path_factory):
    """Two cell types (K562: 6×60 cells, RPE1: 6×40 cells), each a complete small screen."""
    import anndata as ad

    a, b = make_tiny_counts(seed=4), make_tiny_counts(seed=5, n_cells=40)
    a.obs["cell_type"], b.obs["cell_type"] = "K562", "RPE1"
    b.obs_names = [f"b{i}" for i in range(b.n_obs)]
    adata = ad.concat([a, b])
    adata.obs[KEYS.PERT] = pd.Categorical(adata.obs[KEYS.PERT].astype(str))
    path = tmp_path_factory.mktemp("ctx") / "two_types.h5ad"
    adata.write_h5ad(path)
    return path


def test_path_box_takes_each_new_entry(app_env, tmp_path, unmodelled_targets_h5ad):
    """Wrong path, Enter, right path, Enter, another right path: each entry is the one used."""
    at = open_path_mode(home())
    type_path(at, tmp_path / "nope.h5ad")
    assert any("no file at" in e.value for e in at.error)
    type_path(at, unmodelled_targets_h5ad)
    assert_clean(at)
    assert path_box(at).value == str(unmodelled_targets_h5ad)
    assert metric(at, "cells") == "360"
    type_path(at, app_env["screen"])
    assert_clean(at)
    assert path_box(at).value == str(app_env["screen"])
    assert metric(at, "cells") != "360"
    # the typed path survives a visit to another page
    at.switch_page(PAGES[1]).run()
    at.switch_page("app.py").run()
    assert path_box(at).value == str(app_env["screen"])


def test_home_says_which_pages_the_screen_supports(app_env, unmodelled_targets_h5ad):
    at = home()
    ok = [s.value for s in at.success if "What this screen supports" in s.value]
    assert ok and "✓ Causal graph" in ok[0], [s.value for s in at.success]
    type_path(open_path_mode(at), unmodelled_targets_h5ad)
    assert_clean(at)
    warn = next(w.value for w in at.warning if "Not every page will work" in w.value)
    assert "✗ Causal graph: CLIPR needs at least 2" in warn and "✓ Perturb" in warn
    assert "not measured in the file" in warn
    assert any("models every gene the file holds" in c.value for c in at.caption)


def test_a_failed_file_clears_the_previous_screen_and_its_model(app_env, tmp_path):
    at = home()
    assert metric(at, "cells")
    assert any("Model ready" in s.value for s in at.success)
    bad = tmp_path / "bad.h5ad"
    bad.write_text("not an h5ad")
    type_path(open_path_mode(at), bad)
    assert any(str(bad) in e.value for e in at.error)
    assert not at.metric, "the previous screen's numbers stay on the page"
    assert not any("Model ready" in s.value for s in at.success)
    assert not any("**Screen**" in m.value for m in at.sidebar.markdown), "the sidebar still shows the old screen"
    assert at.session_state["run_path"] is None


def test_a_new_screen_gets_no_model_of_another_screen(app_env, unmodelled_targets_h5ad):
    at = type_path(open_path_mode(home()), unmodelled_targets_h5ad)
    assert_clean(at)
    picker = at.selectbox[0]
    assert picker.label == "Model (run)"
    assert picker.value == "" and picker.options[0].startswith("none: no model belongs to this screen")
    assert any("not this screen's model" in o for o in picker.options)  # the demo run, marked
    assert at.session_state["run_path"] is None
    assert not any("Model ready" in s.value for s in at.success)
    assert any(b.label.startswith("Train a model on this screen") for b in at.button)
    # the other pages say that no model is selected instead of using the demo's
    at.switch_page(PAGES[0]).run()
    assert any("No model is selected" in w.value for w in at.warning)


def test_context_picker_selects_one_cell_type_for_the_screen_and_the_training(app_env, two_cell_types_h5ad):
    from lcd_core.backends import list_detached

    at = type_path(open_path_mode(home()), two_cell_types_h5ad)
    assert_clean(at)
    box = at.selectbox(key="ctx_cell_type")
    assert box.options == ["all 600 cells (pooled)", "K562 (360 cells)", "RPE1 (240 cells)"]
    assert box.value == "K562"  # a biological context: one at a time, the largest first
    assert metric(at, "cells") == "360"
    box.set_value("RPE1").run()
    assert_clean(at)
    assert metric(at, "cells") == "240"
    assert at.session_state["screen_options"]["subset"] == ("cell_type=RPE1",)
    # the training request carries the context (lcd train --subset cell_type=RPE1)
    at.button[[b.label for b in at.button].index(
        next(b.label for b in at.button if b.label.startswith("Train a model on this screen")))].click().run()
    jobs = list_detached(app_env["dir"] / "runs" / ".jobs")
    job = next(j for j in jobs if j.request.screen.endswith("two_types.h5ad"))
    try:
        assert job.request.subset == ("cell_type=RPE1",)
        argv = job.request.argv()
        assert argv[argv.index("--subset") + 1] == "cell_type=RPE1"
        assert job.request.holdout is None or "+" in job.request.holdout
    finally:
        job.cancel()


def test_train_request_round_trips_its_subset():
    from dataclasses import asdict

    from lcd_core.backends import TrainRequest

    req = TrainRequest(screen="s.h5ad", out="r", subset=("cell_type=A", "replicate=1"), holdout="A+B")
    back = TrainRequest.from_dict(json.loads(json.dumps(asdict(req))))
    assert back == req
    argv = back.argv()
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--subset"] == ["cell_type=A", "replicate=1"]
    assert argv[argv.index("--holdout-combos") + 1] == "A+B"


def test_train_page_proposes_a_held_out_set_and_passes_it_on(app_env, tmp_path):
    """A screen without a split: the Train page proposes the paper-protocol doubles, says why, and the
    user can clear, restore or edit them; the training request carries them."""
    from lcd_core.backends import list_detached

    no_split = tmp_path / "no_split.h5ad"
    make_tiny_counts(seed=7).write_h5ad(no_split)  # ctrl, 4 singles, 1 double G00+G01
    at = type_path(open_path_mode(home()), no_split)
    at.switch_page(PAGES[3]).run()
    assert_clean(at)
    box = at.text_area(key="tr_holdout")
    assert box.value == "G00+G01"
    assert any(c.value.startswith("Proposed: Held out 1 of 1 testable doubles") for c in at.caption)
    at.button(key="tr_holdout_clear").click().run()
    assert at.text_area(key="tr_holdout").value == ""
    assert any("nothing is held out" in c.value for c in at.caption)
    at.button(key="tr_holdout_propose").click().run()
    assert at.text_area(key="tr_holdout").value == "G00+G01"
    at.text_area(key="tr_holdout").input("G09+G10").run()  # not a condition of the screen
    assert any("not in the screen" in e.value for e in at.error)
    assert at.button(key="tr_start").disabled
    at.text_area(key="tr_holdout").input("G01+G00").run()  # any order of the genes
    assert not at.error and not at.button(key="tr_start").disabled
    at.text_input(key="tr_name").input("heldout-check").run()
    at.button(key="tr_start").click().run()
    job = next(j for j in list_detached(app_env["dir"] / "runs" / ".jobs") if j.name == "heldout-check")
    try:
        assert job.request.holdout == "G00+G01"
        assert "--holdout-combos" in job.request.argv()
    finally:
        job.cancel()


def test_no_page_hint_names_a_cli_flag():
    """Hints on pages name the page's own controls (a user of the app has no command line)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for f in [root / "app.py", *sorted((root / "pages").glob("*.py")), *sorted((root / "app_ui").glob("*.py"))]:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#")[0]
            strings = re.findall(r'"([^"]*)"', code)
            assert not [s for s in strings if re.search(r"--(holdout|fold|subset|set)\b|\blcd train\b", s)], \
                f"{f.name}:{i}: {line.strip()}"


def test_causal_graph_opens_on_a_readable_gene_and_downloads_graphml(app_env, capture_media):
    import io

    import networkx as nx
    from test_app import download, open_page

    at = open_page(PAGES[1])
    assert_clean(at)
    gene = at.selectbox(key="cg_gene").value
    n = int(metric(at, f"regulators of {gene}")) + int(metric(at, f"targets of {gene}"))
    assert 0 < n <= 15  # not the largest hub: a neighbourhood one can read
    at.run()  # media of the last run is what the buttons point to
    g = nx.read_graphml(io.BytesIO(download(at, "dl_cg_graphml", capture_media)))
    assert g.number_of_edges() == int(metric(at, "edges above threshold"))
    assert "data_hash" in g.graph and "top_k" in g.graph
    # the legend names the dashed style when the gene has true edges the model missed
    spec = at.get("plotly_chart")[0].proto.spec
    caption = next(c.value for c in at.caption if c.value.startswith("Threshold |effect|"))
    if "dashed: 0 true edge" not in caption:
        assert "true edge missed by the model" in spec
