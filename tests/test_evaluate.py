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
    # a count run is also scored with its anchored prediction (README, "Anchored prediction")
    assert set(df["method"]) == {"lcd", "lcd_anchored", "control", "pooled", "additive", "linear"}
    assert set(df["condition"]) == {"G00+G01"}
    for col in ("mmd", "mmd_top20", "energy", "wasserstein", "rmse", "pearson_delta", "pearson_systema"):
        assert col in df and df[col].notna().all(), col
    # 12 genes: DE recovery looks for the top 6 (at most half the genes; the top 100 would be all of them)
    assert df["de_auroc"].between(0, 1).all()
    # the control baseline predicts no change: its mean-shift correlation is undefined or poor, and its
    # error is the largest of all methods on this strongly perturbed double
    rmse = df.set_index("method")["rmse"]
    assert rmse["control"] == rmse.max()
    md = summary_markdown(df)
    assert "| mmd_top20 ↓ |" in md and "**" in md and "Win rate of lcd" in md
    out = write_report(df, tmp_path / "report", provenance={"run": "x"})
    assert pd.read_csv(out / "per_condition.csv").shape[0] == 6
    assert (out / "mmd_top20.png").stat().st_size > 1000 and (out / "metrics.html").exists()


def test_perturb_page_and_benchmark_score_alike(run):
    """The Perturb page's table (compare_methods) and the Benchmark's (evaluate_run) give the same scores,
    DE-AUROC included, for the same double and the same predicted cells."""
    from lcd_core._constants import KEYS
    from lcd_core.tl import compare_methods

    _, screen, model = run
    kept = {}
    bench = evaluate_run(model, screen, n_cells=100, seed=3, keep_predictions=kept).set_index("method")
    control = screen.log1p(KEYS.CONTROL)
    tpm = np.mean([screen.log1p(c).mean(0) for c in model.conditions if c != KEYS.CONTROL], axis=0)
    page = compare_methods("G00+G01", {m: cells["G00+G01"] for m, cells in kept.items()},
                           screen.log1p("G00+G01"), control, tpm, seed=3).set_index("method")
    assert page["de_auroc"].notna().all()
    metrics = [c for c in page.columns if c not in ("condition",)]
    pd.testing.assert_frame_equal(page[metrics], bench.loc[page.index, metrics], check_exact=False, rtol=1e-12)


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


def _cell_eval() -> str | None:
    """The cell-eval executable: $CELL_EVAL (e.g. one in its own venv), else on PATH."""
    import os
    import shutil
    from pathlib import Path

    exe = os.environ.get("CELL_EVAL") or shutil.which("cell-eval")
    return exe if exe and Path(exe).is_file() else None


@pytest.mark.slow
def test_readme_cell_eval_command_scores_the_evaluate_files(tmp_path):
    """The README's cell-eval command, verbatim, on what `lcd evaluate` writes for the shipped demo run
    (checked with cell-eval 0.8.2; ~2 min of CPU). Skipped unless cell-eval is installed (CELL_EVAL=path or
    on PATH): it is not a dependency."""
    import os
    import re
    import shlex
    from pathlib import Path

    exe = _cell_eval()
    if exe is None:
        pytest.skip("cell-eval not installed (pip install cell-eval in its own venv; CELL_EVAL=/path/to/cell-eval)")
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    cmd = re.search(r"```bash\n(cell-eval run [^\n]+)\n```", readme).group(1)
    report = tmp_path / "report"
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-m", "lcd_core.cli", "evaluate", str(root / "assets" / "demo_run"), "--data",
                    str(root / "assets" / "demo_screen.h5ad"), "--out", str(report)], check=True, env=env, timeout=900)
    args = [a.replace("report/", f"{report}/") for a in shlex.split(cmd)[1:]]
    proc = subprocess.run([exe, *args, "-o", str(tmp_path / "cell-eval")], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scored = pd.read_csv(tmp_path / "cell-eval" / "results.csv")
    heldout = set(pd.read_csv(report / "per_condition.csv")["condition"])
    assert set(scored["perturbation"]) == heldout and scored.drop(columns="perturbation").notna().any(axis=None)


def test_training_reference_is_what_the_scores_are_measured_against(run):
    """The training cells the baselines are fitted on and the perturbed mean of the Systema delta, one
    definition for evaluate_run and the app's Perturb page."""
    from lcd_core import KEYS
    from lcd_core.model import training_reference

    _, screen, model = run
    cells, perturbed_mean = training_reference(model, screen)
    assert set(cells) == set(model.conditions) and "G00+G01" not in cells and KEYS.CONTROL in cells
    np.testing.assert_array_equal(cells["G00"], screen.log1p("G00"))
    expected = np.mean([screen.log1p(c).mean(0) for c in model.conditions if c != KEYS.CONTROL], axis=0)
    np.testing.assert_allclose(perturbed_mean, expected)
    assert perturbed_mean.shape == (len(screen.genes),)
    assert not np.allclose(perturbed_mean, screen.log1p(KEYS.CONTROL).mean(0))


def test_the_benchmark_evaluation_is_saved_in_the_run_and_keyed_by_what_made_it(run, monkeypatch):
    """Computed once and saved in the run directory; a later call reads the file (a value changed in it comes
    back); another evaluation version, another cell count or a torn file computes and writes again."""
    import json

    import lcd_core.model._saved_evaluation as saved
    from lcd_core.model import evaluation_path, saved_evaluation

    _, screen, model = run
    path = evaluation_path(model, screen, n_cells=40)
    assert path is not None and path.parent.name == "cache" and not path.exists()
    per, half = saved_evaluation(model, screen, n_cells=40)
    assert path.is_file() and set(per["method"]) >= {"lcd", "additive"} and half
    again, half_again = saved_evaluation(model, screen, n_cells=40)
    pd.testing.assert_frame_equal(again, per)  # the same table, dtypes included
    assert half_again == json.loads(json.dumps(half))

    data = json.loads(path.read_text())
    data["per_condition"][0]["mmd"] = 123.0  # a marker only the file holds
    path.write_text(json.dumps(data))
    assert saved_evaluation(model, screen, n_cells=40)[0]["mmd"].iloc[0] == 123.0
    assert evaluation_path(model, screen, n_cells=60) != path

    monkeypatch.setattr(saved, "EVALUATION_VERSION", saved.EVALUATION_VERSION + 1)
    newer = evaluation_path(model, screen, n_cells=40)
    assert newer != path
    assert saved_evaluation(model, screen, n_cells=40)[0]["mmd"].iloc[0] != 123.0 and newer.is_file()

    for bad in ['{"per_condition": [', '[]', '{"per_condition": [{"a": 1}], "half_protocol": [3]}']:  # torn or foreign: computed and rewritten
        newer.write_text(bad)
        assert saved_evaluation(model, screen, n_cells=40)[0]["mmd"].iloc[0] != 123.0
        assert json.loads(newer.read_text())["per_condition"][0]["method"]
