"""The ``lcd`` command line: help, errors as one line, train → predict and interruption (SIGINT, SIGKILL)
with resume as real subprocesses; the commands whose process boundary is not what is tested (CLIPR, modules,
refusals of bad settings and screens) in this process (conftest's ``lcd_here``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import pytest

LCD = [sys.executable, "-m", "lcd_core.cli"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
TINY = ["--set", "stage1.steps=30", "--set", "stage1.n_samples=64", "--set", "stage2.hidden=32",
        "--set", "stage2.emb_dim=8", "--set", "stage2.batch_size=128", "--set", "stage2.steps=60",
        "--set", "n_latent_samples=200", "--set", "min_cells=10", "--set", "embedding=pca", "--quiet"]


def run(*args, check=True, timeout=300):
    proc = subprocess.run([*LCD, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"lcd {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.mark.parametrize("cmd", ["simulate", "inspect", "train", "fit", "predict", "clipr", "modules", "evaluate"])
def test_every_command_has_help(cmd):
    out = run(cmd, "--help").stdout
    assert "usage: lcd " + cmd in out


def test_the_lcd_entry_point_is_installed():
    import shutil

    exe = shutil.which("lcd") or str(Path(sys.executable).parent / "lcd")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "lcd-explorer" in proc.stdout


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_input_is_one_line(tmp_path):
    bogus = tmp_path / "notes.h5ad"
    bogus.write_text("gene,count\nA,1\n")
    assert_one_line_error(run("inspect", bogus, check=False), "inspect")
    assert_one_line_error(run("inspect", tmp_path / "missing.h5ad", check=False), "missing.h5ad")
    assert_one_line_error(run("predict", tmp_path / "norun", "--perturb", "A", "--out", tmp_path / "p.h5ad",
                              check=False), "norun")


def test_inspect_tiny(tiny_h5ad):
    out = run("inspect", tiny_h5ad).stdout
    assert "360" in out and "12" in out  # cells, genes


def test_bad_overrides_are_refused(tiny_h5ad, tmp_path, lcd_here):
    assert_one_line_error(lcd_here("train", tiny_h5ad, "--out", tmp_path / "r", "--set", "stage2.nope=1", check=False),
                          "unknown configuration key")
    assert_one_line_error(lcd_here("train", tiny_h5ad, "--out", tmp_path / "r", "--set", "stage2.steps=many",
                                   check=False), "does not match the type")
    # well-typed values a section's own checks refuse: refused before any stage runs, not at stage 2
    for bad, message in (("stage2.scale=sideways", "scale must be one of all, within"),
                         ("stage2.preconditioning=edm2", "preconditioning must be one of"),
                         ("stage2.steps=0", "steps must be ≥ 1")):
        assert_one_line_error(lcd_here("train", tiny_h5ad, "--out", tmp_path / "r", "--set", bad, check=False),
                              message)
    assert not (tmp_path / "r").exists()


def test_train_then_predict(tiny_h5ad, tmp_path):
    trained = run("train", tiny_h5ad, "--out", tmp_path / "run", "--holdout-combos", "G00+G01", *TINY)
    # the fit summary comes last, in the words of fit.json
    fit = json.loads((tmp_path / "run" / "fit.json").read_text())
    last = trained.stdout.strip().splitlines()[-1]
    assert last.startswith(f"fit: {fit['summary']['sentence']}")
    run("predict", tmp_path / "run", "--perturb", "G01+G00", "--perturb", "G02", "--cells", 25,
        "--out", tmp_path / "pred.h5ad")
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert pred.shape == (50, 12)
    assert set(pred.obs["perturbation"]) == {"G00+G01", "G02"}
    bad = run("predict", tmp_path / "run", "--perturb", "NOPE", "--out", tmp_path / "x.h5ad", check=False)
    assert_one_line_error(bad, "unknown gene 'NOPE'")
    assert not (tmp_path / "x.h5ad").exists()


def _wait_for(path: Path, proc, timeout=120):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGKILL, marks=pytest.mark.slow)])  # each trains ~25 s
def test_interrupted_training_resumes_from_its_checkpoint(tiny_h5ad, tmp_path, sig):
    out = tmp_path / "run"
    # long enough to be interrupted in stage 2, checkpointing every second
    long = [*TINY, "--set", "stage2.steps=100000", "--set", "checkpoint_seconds=1"]
    proc = subprocess.Popen([*LCD, "train", str(tiny_h5ad), "--out", str(out), *long], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoints" / "stage2.pt", proc)
    time.sleep(1.5)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    from lcd_core import RunError
    from lcd_core.model import LCD as Model

    assert not (out / "COMPLETE").exists()
    with pytest.raises(RunError, match="incomplete"):
        Model.load(out)
    import torch

    step_before = torch.load(out / "checkpoints" / "stage2.pt", weights_only=True)["step"]
    assert step_before > 0
    # the same command, with a reachable step count, resumes: stage 1 is not redone, stage 2 continues
    log_len = len((out / "log.jsonl").read_text().splitlines())
    resumed = run("train", tiny_h5ad, "--out", out, *TINY, "--set", f"stage2.steps={step_before + 20}",
                  "--set", "checkpoint_seconds=1", check=False)
    # a different step count is a different configuration: refused, not silently mixed
    assert_one_line_error(resumed, "different config")
    resumed = run("train", tiny_h5ad, "--out", out, *long[:-4], "--set", "stage2.steps=100000",
                  "--set", "checkpoint_seconds=1", "--max-minutes", "0.05")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()[log_len:]]
    stage1 = [r for r in records if r.get("stage") == "stage1" and r.get("event") == "progress"]
    stage2 = [r for r in records if r.get("stage") == "stage2" and r.get("event") == "progress"]
    assert not stage1, "stage 1 was trained again instead of resumed"
    assert stage2 and stage2[0]["step"] > step_before
    assert (out / "COMPLETE").exists()


@pytest.mark.slow  # trains, then evaluates (~30 s)
def test_fit_recomputes_fit_json_and_evaluate_writes_calibrated_scores(tiny_h5ad, tmp_path):
    out = tmp_path / "run"
    run("train", tiny_h5ad, "--out", out, "--holdout-combos", "G00+G01", *TINY)
    before = json.loads((out / "fit.json").read_text())
    (out / "fit.json").unlink()
    fitted = run("fit", out, "--data", tiny_h5ad, "--quiet")
    after = json.loads((out / "fit.json").read_text())
    assert after["conditions"].keys() == before["conditions"].keys()
    assert after["conditions"]["G02"]["r"] == pytest.approx(before["conditions"]["G02"]["r"])
    assert fitted.stdout.strip().splitlines()[-1].startswith("fit: reproduces ")
    bad = run("fit", out, "--data", tmp_path / "missing.h5ad", check=False)
    assert_one_line_error(bad, "missing.h5ad")
    run("evaluate", out, "--data", tiny_h5ad, "--cells", 60, "--out", tmp_path / "report")
    cal = json.loads((tmp_path / "report" / "calibrated.json").read_text())["summary"]
    own = [r for r in cal if r["method"] == "additive" and r["baseline"] == "additive" and r["metric"] == "rmse"]
    assert own and own[0]["score"] == 0.0
    assert "Replicate-calibrated" in (tmp_path / "report" / "summary.md").read_text()
    import pandas as pd

    tables = sorted((tmp_path / "report").glob("*.csv"))
    assert {"per_condition.csv", "summary.csv"} <= {t.name for t in tables}
    for t in tables:  # every table of the report opens with no reader options (issue 14.9)
        assert not pd.read_csv(t).columns[0].startswith("#"), t.name
    assert json.loads((tmp_path / "report" / "provenance.json").read_text())["run"]


@pytest.mark.slow  # trains, then fits an embedding (~30 s)
def test_embed_saves_the_reference_embedding_once(tiny_h5ad, tmp_path):
    """`lcd embed RUN`: the run's screen from its config, the embedding saved in cache/, a second call
    reads it; a run without a recorded screen needs --data."""
    out = tmp_path / "run"
    run("train", tiny_h5ad, "--out", out, *TINY, "--set", "embedding=none")
    assert not list(out.glob("cache/embedding-*"))
    first = run("embed", out, "--method", "pca")
    saved = list((out / "cache").glob("embedding-pca-*.npz"))
    assert len(saved) == 1 and "fitted in" in first.stdout and saved[0].name in first.stdout
    assert "already saved" in run("embed", out, "--method", "pca", "--data", tiny_h5ad).stdout
    bad = run("train", tiny_h5ad, "--out", tmp_path / "r2", *TINY, "--set", "embedding=tsne", check=False)
    assert_one_line_error(bad, "embedding must be one of")


def test_inspect_demo_matches_the_file():
    root = Path(__file__).resolve().parents[1]
    demo = root / "assets" / "demo_screen.h5ad"
    out = run("inspect", demo).stdout
    a = ad.read_h5ad(demo)
    labels = a.obs["perturbation"].astype(str)
    n_combos = sum("+" in c for c in labels.unique())
    n_singles = labels.nunique() - 1 - n_combos
    assert f"cells:       {a.n_obs:,}" in out and f"genes: {a.n_vars}" in out
    assert f"{labels.nunique()} = 1 control + {n_singles} singles + {n_combos} combinations" in out
    assert f"control:     {(labels == 'ctrl').sum():,} cells" in out
    assert "simulated:   yes" in out and "truth: yes" in out and "split: yes" in out


def test_clipr_and_modules_on_the_shipped_demo_run(tmp_path, lcd_here):
    """`lcd clipr` and `lcd modules` as PRODUCT.md writes them, on a copy of assets/demo_run (its CLIPR cache
    travels with it); the default modules match the demo's 6 true modules (ARI ≥ 0.65)."""
    import shutil

    import numpy as np
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score

    from lcd_core.data import read_screen
    from lcd_core.simulation import demo_screen_path

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "assets" / "demo_run", tmp_path / "run")
    truth = read_screen(demo_screen_path()).truth
    lcd_here("clipr", tmp_path / "run", "--out", tmp_path / "effects.csv")
    eff = pd.read_csv(tmp_path / "effects.csv")  # plain: no reader options (issue 14.9)
    assert list(eff.columns) == ["source", "target", "effect", "identifiability"] and len(eff) > 0
    prov = json.loads((tmp_path / "effects.provenance.json").read_text())
    assert prov["variant"] == "directed" and prov["data_hash"] and prov["run"] == str(tmp_path / "run")
    # the paper variant on the default schedule: the flows ran it whole, nothing to warn about (the cached
    # result carries its warnings: only the rank note of 49 perturbed genes in 144)
    paper = lcd_here("clipr", tmp_path / "run", "--variant", "paper", "--out", tmp_path / "paper.csv")
    assert "converged" not in paper.stderr and "span only 49" in paper.stderr, paper.stderr
    assert "signs are not to be trusted" in paper.stderr  # 48 of 144 genes perturbed (docs/benchmarks.md)
    # Σ and limit responses from the drift's fixed points and generated control cells (METHOD §4)
    lcd_here("clipr", tmp_path / "run", "--source", "fixed_points", "--out", tmp_path / "fp.csv")
    fp = pd.read_csv(tmp_path / "fp.csv")
    assert json.loads((tmp_path / "fp.provenance.json").read_text())["source"] == "fixed_points"
    assert fp.shape == eff.shape and np.isfinite(fp["effect"]).all()
    for args, needle in ((("--source", "data", "--data", demo_screen_path()), "count model"),
                         (("--source", "data"), "--data"),
                         (("--variant", "paper", "--source", "fixed_points"), "--variant directed")):
        bad = lcd_here("clipr", tmp_path / "run", *args, "--out", tmp_path / "no.csv", check=False)
        assert_one_line_error(bad, needle)
        assert not (tmp_path / "no.csv").exists()

    def modules(*extra):
        out = tmp_path / f"modules{len(extra)}.tsv"
        proc = lcd_here("modules", tmp_path / "run", "--gmt", root / "assets" / "demo_modules.gmt", *extra,
                        "--out", out)
        tab = pd.read_table(out, keep_default_na=False).set_index("gene")  # plain TSV, header first
        header = json.loads(out.with_name(out.stem + ".provenance.json").read_text())
        return tab, header, proc.stdout

    tab, header, stdout = modules()
    assert header["modules"]["method"] == "louvain" and "louvain" in stdout
    labels = tab.loc[list(map(str, read_screen(demo_screen_path()).genes)), "module"]
    assert adjusted_rand_score(np.asarray(truth["modules"]), labels) >= 0.65  # 0.69 measured (test_modules.py)
    assert (tab["top_terms"] != "").any()  # the true-module GMT enriches some module
    tab, header, _ = modules("--cut", "0.3")  # PRODUCT.md's --cut: the dendrogram of METHOD §5
    assert header["modules"] == {**header["modules"], "method": "hierarchical", "cut": 0.3}
    bad = lcd_here("modules", tmp_path / "run", "--resolution", "0", "--out", tmp_path / "x.tsv", check=False)
    assert_one_line_error(bad, "resolution")
    assert not (tmp_path / "x.tsv").exists()


@pytest.mark.parametrize("case", ["all_zero", "zero_condition", "constant_genes"])
def test_screens_without_signal_are_refused(tmp_path, case, lcd_here):
    """`lcd inspect` lists the problem and exits non-zero; `lcd train` refuses with one line and starts
    nothing (the three no-signal screens of tests/test_data_bad_input.py, written with anndata)."""
    from test_data_bad_input import NO_SIGNAL, _no_signal

    path = tmp_path / f"{case}.h5ad"
    _no_signal(case).write_h5ad(path)
    proc = lcd_here("inspect", path, check=False)
    assert_one_line_error(proc, "lcd inspect", "no signal", NO_SIGNAL[case])
    assert "problems (1):" in proc.stdout and NO_SIGNAL[case] in proc.stdout
    proc = lcd_here("train", path, "--out", tmp_path / "run", *TINY, check=False)
    assert_one_line_error(proc, "lcd train", "no signal", NO_SIGNAL[case])
    assert not (tmp_path / "run").exists()
