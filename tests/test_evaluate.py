"""Held-out evaluation of a run: every method, every metric, the report files, and bad input."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from lcd_core import ConfigError
from lcd_core.data import screen_from_anndata
from lcd_core.model import evaluate_run, summary_markdown, train, write_report
from tests.conftest import make_tiny_counts, tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    make_tiny_counts().write_h5ad(tmp / "tiny.h5ad")
    screen = screen_from_anndata(make_tiny_counts())
    model = train(screen, tmp / "run", config=tiny_config(), device="cpu", heldout=["G00+G01"])
    return tmp, screen, model


def test_every_method_and_metric_per_held_out_condition(run, tmp_path):
    _, screen, model = run
    df = evaluate_run(model, screen, n_cells=100, seed=0)
    assert set(df["method"]) == {"lcd", "control", "pooled", "additive", "linear"}
    assert set(df["condition"]) == {"G00+G01"}
    for col in ("mmd", "mmd_top20", "energy", "wasserstein", "rmse", "pearson_delta", "pearson_systema"):
        assert col in df and df[col].notna().all(), col
    assert df["de_auroc"].isna().all()  # 12 genes: "the top 100 DE genes" is undefined, reported as NaN
    # the control baseline predicts no change: its mean-shift correlation is undefined or poor, and its
    # error is the largest of all methods on this strongly perturbed double
    rmse = df.set_index("method")["rmse"]
    assert rmse["control"] == rmse.max()
    md = summary_markdown(df)
    assert "| mmd_top20 ↓ |" in md and "**" in md and "Win rate of lcd" in md
    out = write_report(df, tmp_path / "report", provenance={"run": "x"})
    assert pd.read_csv(out / "per_condition.csv").shape[0] == 5
    assert (out / "mmd_top20.png").stat().st_size > 1000 and (out / "metrics.html").exists()


def test_no_held_out_conditions_is_a_clear_error(tmp_path):
    screen = screen_from_anndata(make_tiny_counts())
    model = train(screen, tmp_path / "run", config=tiny_config(), device="cpu", heldout=[])
    with pytest.raises(ConfigError, match="no held-out conditions"):
        evaluate_run(model, screen)


def test_mismatched_screen_is_a_clear_error(run):
    _, _, model = run
    other = screen_from_anndata(make_tiny_counts(n_genes=10))
    with pytest.raises(ConfigError, match="does not match the run"):
        evaluate_run(model, other)


def test_cli_writes_report_and_cell_eval_files(run, tmp_path):
    tmp, screen, model = run
    proc = subprocess.run([sys.executable, "-m", "lcd_core.cli", "evaluate", str(tmp / "run"), "--data",
                           str(tmp / "tiny.h5ad"), "--cells", "50", "--out", str(tmp_path / "rep")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    pred = ad.read_h5ad(tmp_path / "rep" / "predicted.h5ad")
    obs = ad.read_h5ad(tmp_path / "rep" / "observed.h5ad")
    assert list(pred.var_names) == list(obs.var_names) == screen.genes
    assert set(pred.obs["perturbation"]) == set(obs.obs["perturbation"]) == {"ctrl", "G00+G01"}
    assert np.isfinite(pred.X).all()
