"""Engine behind the Perturb page's issue-15 points, on the shipped demo run: which perturbations move a
gene (item 7), the paper what-if's singular drift matrix (item 13), whether the run reproduces a
condition (item 14) and predicted cells as a cell-eval-ready .h5ad (item 11)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from lcd_core.data import read_screen
from lcd_core.errors import LCDError
from lcd_core.model import (LCD, cell_eval_anndata, condition_fit, get_clipr, h5ad_bytes, no_change_check,
                            prediction_anndata, read_fit)
from lcd_core.tl import clipr_paper, gene_response_table, whatif_cells, whatif_shift

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "assets" / "demo_run"


@pytest.fixture(scope="module")
def model():
    return LCD.load(RUN, device="cpu")


@pytest.fixture(scope="module")
def screen():
    return read_screen(ROOT / "assets" / "demo_screen.h5ad")


# -- item 7: which perturbations move gene X most? -------------------------------------------------------
def test_gene_response_table_ranks_conditions_by_predicted_shift(model, screen):
    conds = ["CCYL01", "CCYL01+CCYL05", "ERYD01", "IFNR01", "RIBO01", "CCYL02+RIBO01"]  # the last: never measured
    pred = model.predict(conds, 60, seed=0).cells
    observed = {c: screen.log1p(c) for c in conds if c in set(screen.conditions)}
    control = screen.log1p("ctrl")
    t = gene_response_table("CCYL01", genes=model.genes, control=control, predicted=pred, observed=observed)
    assert len(t) == len(conds)
    assert (np.diff(np.abs(t["predicted_shift"].to_numpy())) <= 0).all()
    # activating CCYL01 moves CCYL01 most; the double with it comes next; both observed the same way
    assert set(t["condition"][:2]) == {"CCYL01", "CCYL01+CCYL05"}
    j = model.genes.index("CCYL01")
    row = t.set_index("condition").loc["CCYL01"]
    assert row["observed_shift"] == pytest.approx(observed["CCYL01"][:, j].mean() - control[:, j].mean(), rel=1e-5)
    assert row["predicted_shift"] > 0.5 and row["observed_shift"] > 0.5
    unseen = t.set_index("condition").loc["CCYL02+RIBO01"]
    assert np.isnan(unseen["observed_shift"]) and unseen["n_observed"] == 0
    with pytest.raises(LCDError, match="not modelled"):
        gene_response_table("NOPE", genes=model.genes, control=control, predicted=pred)


# -- item 13: the paper variant's what-if ----------------------------------------------------------------
def test_paper_variant_whatif_on_the_demo_is_refused_with_the_reason(model):
    paper = get_clipr(model, variant="paper")  # cached in the run: no recomputation
    # 49 limit responses (control + 48 singles) for 144 genes: the ridge leaves A zero outside span(L)
    s = np.linalg.svd(paper.A, compute_uv=False)
    assert (s > 1e-6 * s[0]).sum() == 49
    with pytest.raises(LCDError, match="singular.*fewer genes were perturbed than modelled.*directed variant"):
        whatif_cells(model, paper.A, {"CCYL01": -2.0}, n_cells=20)
    directed = get_clipr(model, variant="directed")
    shift, cells = whatif_cells(model, directed.A, {"CCYL01": -2.0}, n_cells=20)
    assert np.all(np.isfinite(cells)) and (np.abs(shift) / np.asarray(model.sd)).max() < 10


def test_whatif_shift_refuses_the_paper_solve_with_fewer_perturbations_than_genes():
    rng = np.random.default_rng(0)
    d = 12
    A = -np.eye(d) + 0.1 * rng.normal(size=(d, d))
    for k, refused in ((5, True), (d, False)):
        L = rng.normal(size=(d, k + 1))
        A_hat = clipr_paper(-A @ L, L, lam=1e-4)[0]
        if refused:
            with pytest.raises(LCDError, match="singular"):
                whatif_shift(A_hat, np.eye(d)[0])
        else:
            np.testing.assert_allclose(whatif_shift(A_hat, np.eye(d)[0]), -np.linalg.solve(A, np.eye(d)[0]), atol=1e-3)


# -- item 14: does the run reproduce a condition? ---------------------------------------------------------
def test_condition_fit_reads_the_runs_fit_report():
    fit = read_fit(RUN)
    held = json.loads((RUN / "config.json").read_text())["heldout"][0]
    assert condition_fit(fit, "CCYL01") == {"status": "within", "reproduced": True,
                                            "sentence": "The model reproduces CCYL01 within replicate noise "
                                                        "(r 1.00 vs ceiling 1.00, magnitude 1.09)."}
    out = condition_fit(fit, "IFNR13")
    assert out["status"] == "outside" and out["reproduced"] is False and "magnitude 0.76 outside" in out["sentence"]
    assert condition_fit(fit, held)["status"] == "not_checked"
    assert condition_fit(None, "CCYL01")["status"] == "no_fit"
    if (ROOT / "assets" / "norman_run" / "fit.json").exists():  # the real run: 22 of 28 within replicate noise
        nfit = read_fit(ROOT / "assets" / "norman_run")
        assert condition_fit(nfit, "KMT2A")["reproduced"] is False and "magnitude 0.67" in condition_fit(nfit, "KMT2A")["sentence"]
        assert condition_fit(nfit, "CBL+CNN1")["reproduced"] is True


def test_a_prediction_worse_than_no_change_is_flagged(screen):
    fit = read_fit(RUN)
    obs, control = screen.log1p("CCYL01"), screen.log1p("ctrl")
    good = no_change_check(obs[:100], obs[100:], control)  # the condition's own other half
    assert not good["worse_than_no_change"] and good["mmd_predicted"] < good["mmd_control"]
    bad = no_change_check(screen.log1p("ERYD01"), obs, control)  # another condition's cells
    assert bad["worse_than_no_change"] and bad["mmd_predicted"] > bad["mmd_control"]
    flagged = condition_fit(fit, "CCYL01", no_change=bad)  # fit.json says within; the shown cells are worse
    assert flagged["status"] == "worse_than_no_change" and flagged["reproduced"] is False
    assert "'no change'" in flagged["sentence"] and "fit check: the model reproduces" in flagged["sentence"]
    assert condition_fit(fit, "CCYL01", no_change=good)["status"] == "within"


# -- item 11: predicted cells as .h5ad ----------------------------------------------------------------------
def test_prediction_h5ad_is_the_cell_eval_layout_lcd_evaluate_writes(model):
    pred = model.predict(["CCYL01+CCYL05"], 30, seed=3).cells
    a = prediction_anndata(model, pred, n_control=20, seed=3)
    back = ad.read_h5ad(io.BytesIO(h5ad_bytes(a)))
    assert list(back.var_names) == list(model.genes)
    assert list(back.obs["perturbation"].cat.categories) == ["CCYL01+CCYL05", "ctrl"]
    assert (back.obs["perturbation"] == "ctrl").sum() == 20 and (back.obs["perturbation"] == "CCYL01+CCYL05").sum() == 30
    np.testing.assert_allclose(back.X[20:], pred["CCYL01+CCYL05"], rtol=1e-6)
    assert back.X.dtype == np.float32 and back.uns["lcd_prediction"]["space"] == "log1p CP10k"
    ref = cell_eval_anndata({"ctrl": np.asarray(back.X[:20]), **pred}, list(model.genes))  # what `lcd evaluate` writes
    assert list(ref.obs_names) == list(back.obs_names) and list(ref.obs["perturbation"]) == list(back.obs["perturbation"])
